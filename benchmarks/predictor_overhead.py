"""DynTS predictor overhead per decode step, measured side by side in one run.

Two measurements per model and predictor head:

1. the predictor head alone on one token's hidden state (what DynTS adds to each decode step), median of
   many calls, as ms and as % of the full-cache decode step of the same model at each context length;
2. whole decode steps of ``dynts`` vs ``window`` under the same eviction schedule (``dynts-bench bench``),
   whose difference is the predictor plus its score bookkeeping.

Usage:  python -m benchmarks.predictor_overhead [--model tiny-reasoner] [--head default|paper] [--context N ...]
With no predictor for the model (anything but the tiny reasoner), a predictor of the requested shape with
random weights is written to a temporary directory: timing does not depend on the weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from backends.hf.backend import TransformersBackend
from harness.predictor_pipeline.fit import PRESETS
from harness.runs.catalog import shipped_predictor
from harness.timing.latency_bench import run_bench
from zoo.predictor import ImportancePredictor, PredictorConfig


def head_ms(predictor: ImportancePredictor, hidden_size: int, calls: int = 300) -> float:
    hidden = torch.randn(1, 1, hidden_size)
    with torch.no_grad():
        for _ in range(20):
            predictor(hidden)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            predictor(hidden)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-reasoner")
    parser.add_argument("--head", choices=("default", "paper"), default="default")
    parser.add_argument("--context", type=int, action="append")
    parser.add_argument("--budget", type=int, default=96)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--interval", type=int, default=16)
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    console = Console()
    contexts = args.context or [256, 512]
    backend = TransformersBackend(args.model, dtype="float32", device="cpu", batch_size=1)
    hidden_size = backend.model_info().hidden_size
    shipped = shipped_predictor(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        if shipped is not None and args.head == "default":
            directory = shipped
        else:
            sizes = PRESETS["paper"] if args.head == "paper" else PredictorConfig.default_sizes(hidden_size)
            directory = Path(tmp) / "predictor"
            ImportancePredictor(PredictorConfig(args.model, hidden_size, list(sizes))).save(directory)
        predictor = ImportancePredictor.load(directory)
        params = sum(p.numel() for p in predictor.parameters())
        alone = head_ms(predictor, hidden_size)
        rows = run_bench(console, args.model, ["window", "dynts"], contexts, args.budget, args.interval,
                         args.window, args.steps, 3, "float32", "cpu", directory, None, backend=backend)
    shape = "->".join(map(str, [hidden_size, *predictor.config.layer_sizes, 1]))
    table = Table(title=f"DynTS predictor overhead: {args.model}, head {shape} ({params:,} parameters), 2 CPU threads")
    for column in ("context", "full step ms", "window step ms", "dynts step ms", "head ms", "head % of full step",
                   "dynts - window ms"):
        table.add_column(column, justify="right")
    for context in contexts:
        by = {r["policy"]: r["step_ms_median"] for r in rows if r["context"] == context}
        table.add_row(str(context), f"{by['full']:.2f}", f"{by['window']:.2f}", f"{by['dynts']:.2f}",
                      f"{alone:.3f}", f"{100 * alone / by['full']:.1f}%", f"{by['dynts'] - by['window']:+.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
