"""``dynts-bench bench``: per-step decode latency and KV bytes against context length."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from harness.cli.app import console
from harness.timing.latency_bench import run_bench

BENCH_MODEL = "smollm2-135m"  # long contexts: the tiny reasoner's positions end at 1024


def bench(
    model: str = typer.Option(BENCH_MODEL, help="Model to time (alias, directory, .gguf or hub id)."),
    policy: list[str] = typer.Option([], "--policy", "-p", help="Policies to compare with full (default: all "
                                     "baselines)."),
    context: list[int] = typer.Option([1024, 2048, 4096, 8192], help="Context lengths to time at; repeatable."),
    budget: int = typer.Option(1024, help="KV budget of the evicting policies."),
    interval: int = typer.Option(64, help="Compression interval."),
    window: int = typer.Option(128, help="Recent window."),
    steps: int = typer.Option(128, help="Decode steps timed per point (covers two compressions at the default)."),
    repeats: int = typer.Option(3, min=1, help="Timed runs per point, in rotating policy order; the best counts."),
    dtype: str = typer.Option("float32"),
    device: str = typer.Option("cpu"),
    predictor: Optional[Path] = typer.Option(None, help="Predictor directory, to include dynts."),
    out: Optional[Path] = typer.Option(None, help="Also write the measurements to this JSON file."),
    compile: bool = typer.Option(False, "--compile", help="Replay the decode step as CUDA graphs (torch.compile "
                                 "reduce-overhead; CUDA only)."),
) -> None:
    """Per-step decode latency and KV bytes vs context length: full cache against each policy, one run."""
    run_bench(console, model, policy, context, budget, interval, window, steps, repeats, dtype, device, predictor,
              out, compile=compile)
