"""``dynts-bench label``: how much the answer uses each thinking token of a trace store (the training target)."""

from __future__ import annotations

from pathlib import Path

import typer

from harness.cli.app import console
from harness.cli.predictor_inputs import transformers_engine
from harness.cli.progress import progress_for
from harness.predictor_pipeline.labels import label_store, methods_help
from harness.predictor_pipeline.traces import TraceStore


def label(
    store_dir: Path = typer.Argument(..., help="Trace store (from collect-traces)."),
    method: list[str] = typer.Option(["attention", "gradient"], "--method",
                                     help=f"Repeatable. {methods_help()}."),
    device: str = typer.Option("cpu"),
) -> None:
    """Label each thinking token by how much the answer uses it; with both methods, report their agreement."""
    store = TraceStore(store_dir)
    engine = transformers_engine(store.meta["model"], device=device)
    with progress_for(console, "labels") as progress:
        bar = progress.add_task("labels", total=len(store.records()))
        report = label_store(engine, store, method, on_trace=lambda: progress.advance(bar))
    agree = "; ".join(f"Spearman {pair} {rho:.3f}" for pair, rho in report["spearman_between_methods"].items()
                      if rho is not None)
    console.print(f"labelled {report['labelled']} traces with {', '.join(method)}" + (f"; {agree}" if agree
                                                                                       else ""))
