"""``dynts-bench eval-predictor``: how well the predictor and the baseline rankers order held-out tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from harness.cli.app import console
from harness.cli.predictor_inputs import load_checked_predictor, transformers_engine, write_json_if_asked
from harness.cli.progress import progress_for
from harness.predictor_pipeline.evaluate import evaluate
from harness.predictor_pipeline.labels import methods_help
from harness.predictor_pipeline.traces import TraceStore


def eval_predictor(
    store_dir: Path = typer.Argument(..., help="Held-out labelled trace store."),
    predictor: Optional[Path] = typer.Option(None, help="Predictor directory (default: the model's shipped one)."),
    label_method: str = typer.Option("attention", help=f"Labels to rank against: {methods_help()}."),
    limit: Optional[int] = typer.Option(None, min=1),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON."),
    include_incorrect: bool = typer.Option(False, help="Evaluate on incorrect traces too."),
) -> None:
    """Kendall tau, Spearman and top-20% recall of the predictor and of every baseline ranker."""
    store = TraceStore(store_dir)
    engine = transformers_engine(store.meta["model"])
    model = load_checked_predictor(predictor, engine)
    with progress_for(console, "traces") as progress:
        bar = progress.add_task("traces", total=None)
        result = evaluate(engine, store, model, label_method, limit, lambda: progress.advance(bar),
                          correct_only=not include_incorrect)
    table = Table(title=f"Ranking the thinking tokens of {store_dir} ({label_method} labels)")
    columns = list(next(iter(result.values())))
    table.add_column("ranker")
    for column in columns:
        table.add_column(column, justify="right")
    for name, metrics in sorted(result.items(), key=lambda kv: -kv[1]["kendall_tau"]):
        table.add_row(name, *(f"{metrics.get(c, float('nan')):.3f}" for c in columns))
    console.print(table)
    write_json_if_asked(json_out, {"store": str(store_dir), "label_method": label_method,
                           "predictor": str(predictor) if predictor else "shipped", "rankers": result})
