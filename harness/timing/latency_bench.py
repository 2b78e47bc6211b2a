"""``dynts-bench bench``: per-step decode latency and KV bytes vs context length, all policies in one run.

At each context length a seeded synthetic prompt of that many tokens is prefilled once (the prefill is shared
by every policy and repeat), then ``steps`` decode steps are timed per policy, ``repeats`` times in rotating
order. Evicting policies run with prompt eviction allowed (the context *is* the prompt here), so the first
compression takes the cache from the context length down to the budget; the timed steps are the steady state
that follows. Ratios are against the full cache measured in the same run.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from backends.base import GenerationRequest, SamplingParams, SequenceResult
from backends.hf.backend import TransformersBackend
from backends.hf.decode import ModelParts, generate_batch, prefill_batch
from harness.results.rundir import atomic_write_json
from harness.results.tables import human_bytes
from harness.runs.catalog import baselines
from harness.runs.environment import environment
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
    repeats: int,
    dtype: str,
    device: str,
    predictor: Path | None,
    out: Path | None,
    backend: TransformersBackend | None = None,
    compile: bool = False,
) -> list[dict]:
    """``backend``: a model already loaded with ``batch_size=1`` (else ``model`` is loaded here, compiled for
    CUDA-graph replay with ``compile``)."""
    built = _policies(policies, predictor)
    schedule = EvictionSchedule(budget=budget, interval=interval, window=window, protect_prompt=False)
    if backend is None:
        with console.status(f"loading {model} ..."):
            backend = TransformersBackend(model, dtype=dtype, device=device, batch_size=1, compile=compile)
    for policy in built.values():
        backend.prepare(policy)
    parts = dataclasses.replace(backend.parts, eos_ids=frozenset())  # time exactly `steps` steps
    timing = _Timing(backend, parts, built, schedule, SamplingParams(max_new_tokens=steps + 1), repeats)
    rows: list[dict] = []
    with Progress(console=console) as progress:
        task = progress.add_task("benchmark", total=len(contexts) * (1 + repeats * len(built)))
        for context in contexts:
            rows.extend(timing.at_context(context, progress, task))
    _add_ratios(rows)
    console.print(_table(rows, model, budget, interval, steps, repeats))
    if out is not None:
        atomic_write_json(out, {
            "model": backend.describe(),
            "budget": budget, "interval": interval, "window": window, "steps": steps, "repeats": repeats,
            "compile": compile, "environment": environment(), "rows": rows,
        })
        console.print(f"[dim]written {out}[/]")
    return rows


def _policies(policies: list[str], predictor: Path | None) -> dict:
    """``full`` first, then the asked policies (default: every baseline), ``dynts`` too when a predictor is given."""
    names = ["full"] + [p for p in dict.fromkeys(policies or baselines()) if p != "full"]
    if predictor is not None and "dynts" not in names:
        names.append("dynts")
    return {n: build_policy(n, **({"predictor": str(predictor)} if n == "dynts" else {})) for n in names}


@dataclasses.dataclass
class _Timing:
    """Times every policy at one context length after one shared prefill."""

    backend: TransformersBackend
    parts: ModelParts
    policies: dict
    schedule: EvictionSchedule
    sampling: SamplingParams
    repeats: int

    def prompt(self, context: int) -> list[GenerationRequest]:
        """A seeded synthetic prompt of ``context`` tokens."""
        vocab = len(self.backend.tokenizer)
        low = min(100, vocab // 2)  # skip the special tokens of large vocabularies; tiny ones have few
        ids = torch.randint(low, vocab, (context,), generator=torch.Generator().manual_seed(context)).tolist()
        return [GenerationRequest("bench", ids)]

    def at_context(self, context: int, progress: Progress, task) -> list[dict]:
        names = list(self.policies)
        requests = self.prompt(context)
        progress.update(task, description=f"prefill @ {context}")
        max_queries = max([p.query_window for p in self.policies.values()] + [1])
        shared = prefill_batch(self.parts, requests, self.backend.device, query_window=max_queries)
        progress.advance(task)
        runs: dict[str, list[SequenceResult]] = {name: [] for name in names}
        for repeat in range(self.repeats):
            # rotate the order so that no policy always runs first (or right after the prefill)
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
                progress.update(task, description=f"{name} @ {context} ({repeat + 1}/{self.repeats})")
                runs[name].extend(generate_batch(
                    self.parts, requests, self.policies[name], self.schedule, self.sampling, self.backend.device,
                    record_steps=True, prefill=shared,
                ))
                progress.advance(task)
        return [_row(context, name, runs[name], self.parts.kv_bytes_per_token, shared.seconds) for name in names]


def _add_ratios(rows: list[dict]) -> None:
    """Speed and KV bytes of every row against the full cache at the same context."""
    full = {r["context"]: r for r in rows if r["policy"] == "full"}
    for r in rows:
        ref = full[r["context"]]
        r["speedup_vs_full"] = ref["step_ms_median"] / r["step_ms_median"]
        r["kv_ratio_vs_full"] = r["kv_bytes_steady"] / ref["kv_bytes_steady"]  # below 1: less memory


def _row(context: int, name: str, runs: list[SequenceResult], bytes_per_token: int, prefill_s: float) -> dict:
    """One benchmark point. Step time: the lowest per-run median over the repeats (robust to a noisy run)."""
    medians = [statistics.median(r.extra["step_s"]) for r in runs]
    policy_pct = [100 * sum(r.extra["step_policy_s"]) / sum(r.extra["step_s"]) for r in runs]
    return {
        "context": context,
        "policy": name,
        "step_ms_median": 1000 * min(medians),
        "step_ms_medians_per_repeat": [1000 * m for m in medians],
        "policy_pct": statistics.median(policy_pct),
        "kv_bytes_steady": int(max(runs[0].extra["step_cache_tokens"])) * bytes_per_token,
        "kv_bytes_peak": runs[0].kv_peak_bytes,
        "prefill_s": prefill_s,
        "compressions": runs[0].compressions,
    }


def _table(rows: list[dict], model: str, budget: int, interval: int, steps: int, repeats: int) -> Table:
    table = Table(
        title=f"decode benchmark: {model}, budget {budget}+{interval}, {steps} timed steps x {repeats} repeats"
    )
    for col in ("context", "policy", "ms/step (median)", "speedup vs full", "policy time", "KV bytes", "KV vs full"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        table.add_row(
            str(r["context"]), r["policy"], f"{r['step_ms_median']:.1f}", f"{r['speedup_vs_full']:.2f}x",
            f"{r['policy_pct']:.1f}%", human_bytes(r["kv_bytes_steady"]), f"{r['kv_ratio_vs_full']:.2f}x",
        )
    table.caption = (
        "ms/step: median wall time of a decode step (forward + policy) after the first compression, lowest "
        "over the repeats. "
        "policy time: observe + score + select + evict as % of those steps. KV bytes: exact, largest cache held."
    )
    return table
