"""``dynts-bench bench``: per-step decode latency and KV bytes vs context length, all policies in one run.

At each context length a seeded synthetic prompt of that many tokens is prefilled, then ``steps`` decode steps
are timed. Evicting policies run with prompt eviction allowed (the context *is* the prompt here), so the first
compression takes the cache from the context length down to the budget; it is reported separately and the
timed steps are the steady state that follows. Ratios are against the full cache measured in the same run.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from backends.base import GenerationRequest, SamplingParams
from backends.hf.backend import TransformersBackend
from backends.hf.decode import generate_batch
from harness.env import environment
from harness.report import human_bytes
from harness.results import atomic_write_json
from zoo import build_policy
from zoo.schedule import EvictionSchedule


def run_bench(
    console: Console,
    model: str,
    policies: list[str],
    contexts: list[int],
    budget: int,
    interval: int,
    window: int,
    steps: int,
    dtype: str,
    device: str,
    predictor: Path | None,
    out: Path | None,
) -> list[dict]:
    names = ["full"] + [p for p in dict.fromkeys(policies) if p != "full"]
    if predictor is not None and "dynts" not in names:
        names.append("dynts")
    built = {n: build_policy(n, **({"predictor": str(predictor)} if n == "dynts" else {})) for n in names}
    schedule = EvictionSchedule(budget=budget, interval=interval, window=window, protect_prompt=False)
    with console.status(f"loading {model} ..."):
        backend = TransformersBackend(model, dtype=dtype, device=device, batch_size=1)
    for policy in built.values():
        backend.prepare(policy)
    parts = dataclasses.replace(backend.parts, eos_ids=frozenset())  # time exactly `steps` steps
    sampling = SamplingParams(max_new_tokens=steps + 1)
    vocab = len(backend.tokenizer)
    rows: list[dict] = []
    with Progress(console=console) as progress:
        task = progress.add_task("benchmark", total=len(contexts) * len(names))
        for context in contexts:
            prompt = torch.randint(100, vocab, (context,), generator=torch.Generator().manual_seed(context)).tolist()
            for name in names:
                progress.update(task, description=f"{name} @ {context}")
                result = generate_batch(
                    parts, [GenerationRequest("bench", prompt)], built[name], schedule, sampling,
                    backend.device, record_steps=True,
                )[0]
                step_s = result.extra["step_s"]
                rows.append({
                    "context": context,
                    "policy": name,
                    "step_ms_median": 1000 * statistics.median(step_s),
                    "step_ms_mean": 1000 * statistics.fmean(step_s),
                    "policy_pct": 100 * sum(result.extra["step_policy_s"]) / sum(step_s),
                    "kv_bytes_steady": int(max(result.extra["step_cache_tokens"])) * parts.kv_bytes_per_token,
                    "kv_bytes_peak": result.kv_peak_bytes,
                    "prefill_s": result.ttft_s,
                    "compressions": result.compressions,
                })
                progress.advance(task)
    full = {r["context"]: r for r in rows if r["policy"] == "full"}
    for r in rows:
        ref = full[r["context"]]
        r["speedup_vs_full"] = ref["step_ms_median"] / r["step_ms_median"]
        r["kv_ratio_vs_full"] = ref["kv_bytes_steady"] / r["kv_bytes_steady"]
    console.print(_table(rows, model, budget, interval, steps))
    if out is not None:
        atomic_write_json(out, {
            "model": backend.describe(),
            "budget": budget, "interval": interval, "window": window, "steps": steps,
            "environment": environment(),
            "rows": rows,
        })
        console.print(f"[dim]written {out}[/]")
    return rows


def _table(rows: list[dict], model: str, budget: int, interval: int, steps: int) -> Table:
    table = Table(title=f"decode benchmark: {model}, budget {budget}+{interval}, {steps} timed steps per point")
    for col in ("context", "policy", "ms/step (median)", "speedup vs full", "policy time", "KV bytes", "KV vs full"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        table.add_row(
            str(r["context"]), r["policy"], f"{r['step_ms_median']:.1f}", f"{r['speedup_vs_full']:.2f}x",
            f"{r['policy_pct']:.1f}%", human_bytes(r["kv_bytes_steady"]), f"{r['kv_ratio_vs_full']:.2f}x",
        )
    table.caption = (
        "ms/step: median wall time of a decode step (forward + policy) after the first compression. "
        "policy time: observe + score + select + evict as % of those steps. KV bytes: exact, largest cache held."
    )
    return table
