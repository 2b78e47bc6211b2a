"""``dynts-bench make-tiny-reasoner``: train the tiny reasoning model (or extend a trained one)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from harness.cli.app import console
from harness.cli.progress import progress_for
from harness.tinyreasoner import train as training


def make_tiny_reasoner(
    out: Path = typer.Option(..., help="Model directory to write (resumes from OUT/checkpoint.pt)."),
    seed: int = typer.Option(0),
    steps: int = typer.Option(8000, min=1, help="Optimiser steps (the shipped model: 8000)."),
    batch_size: int = typer.Option(16, min=1),
    lr: float = typer.Option(2e-3),
    warmup: int = typer.Option(300, min=0, help="Linear learning-rate warm-up steps."),
    hidden_size: int = typer.Option(128),
    layers: int = typer.Option(4),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    heldout: int = typer.Option(500, min=1, help="Held-out problems for the final exact-match check."),
    dropout_views: str = typer.Option("full:0.3,oracle:0.4,random:0.3", help="Context drop-out views and "
                                      "weights; the control model: full,random-any (no oracle-like view)."),
    init_from: Path = typer.Option(None, help="Curriculum extension: start from this trained model directory "
                                   "and train only the last stage (with --extra-vars)."),
    extra_vars: int = typer.Option(0, min=0, help="Variables beyond the training defaults in the last stage."),
) -> None:
    """Train the tiny reasoning model from scratch (about an hour on 2 CPU cores), or extend a trained one
    (--init-from, --extra-vars), and write its model card."""
    if init_from is not None and not (init_from / "config.json").is_file():
        raise typer.BadParameter(f"{init_from} is not a model directory (no config.json): pass the directory "
                                 "of a trained tiny reasoner, e.g. harness/tinyreasoner/model",
                                 param_hint="--init-from")
    cfg = training.TrainConfig(seed=seed, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                               hidden_size=hidden_size, layers=layers, threads=threads, dropout_views=dropout_views,
                               init_from=str(init_from or ""), extra_vars=extra_vars)
    with progress_for(console, "training") as progress:
        bar = progress.add_task("train", total=steps)
        report = training.make_tiny_reasoner(out, cfg, heldout, log=lambda *a: console.log(*a, markup=False),
                                             on_step=lambda done: progress.update(bar, completed=done))
    held = report["heldout"]
    console.print(Text(f"held-out exact match {held['exact_match']:.1%} on {held['problems']} problems, median "
                       f"thinking {held['median_thinking_tokens']:.0f} tokens; model card: {out / 'README.md'}"))
