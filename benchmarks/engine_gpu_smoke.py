"""Smoke test of a paged engine (vLLM or SGLang) on a machine with an NVIDIA GPU and the engine installed.

    python -m benchmarks.engine_gpu_smoke --backend vllm    # or sglang; --device cpu runs it on the CPU engines

Four checks, one verdict line each (``PASS`` / ``FAIL`` / ``INFO``), then a JSON summary (``--json FILE``):

a. ``full``: the engine's greedy tokens equal the transformers backend's on ``--problems`` (50) held-out tiny-reasoner
   problems;
b. DynTS at budget 86 (window 32, interval 16, the shipped predictor): accuracy within ``--points`` (3) of the
   transformers backend's on the same problems;
c. the KV pool: every request that compacted freed blocks (vLLM) / slots (SGLang), and the pool's free count is
   back at its start after the run (vLLM: read from the block pool; SGLang: its scheduler process enforces this
   itself -- its idle leak check, on by default, stops the scheduler on a leak -- so the engine must still serve);
d. ``--throughput-model`` (SmolLM2-135M) full vs window vs dynts under one fixed KV pool: generated tokens per
   second and preemptions (vLLM) / retractions (SGLang), side by side (``INFO``: a measurement, not a gate).

The exit status is 1 when a check fails. Its logic is tested on CPU with the CPU engines at small scale
(``tests/vllm/test_gpu_smoke.py``, ``tests/sglang/test_gpu_smoke.py``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backends import build_backend
from backends.base import Backend, GenerationRequest, SamplingParams, SequenceResult
from backends.hf.backend import TransformersBackend
from harness.runs.catalog import shipped_predictor
from harness.scoring.answers import is_correct
from zoo import build_policy
from zoo.base import Policy
from zoo.schedule import EvictionSchedule

HELDOUT = Path(__file__).resolve().parents[1] / "harness" / "data" / "tiny_reasoner_heldout.jsonl"


@dataclass
class Verdict:
    check: str
    passed: bool | None  # None: a measurement, no gate
    detail: str

    def line(self) -> str:
        word = "INFO" if self.passed is None else "PASS" if self.passed else "FAIL"
        return f"{word} {self.check}: {self.detail}"


@dataclass
class Settings:
    backend: str
    device: str = "cuda"
    problems: int = 50
    max_new_tokens: int = 600
    budget: int = 86
    window: int = 32
    interval: int = 16
    points: float = 3.0
    batch_size: int = 16
    throughput_model: str = "smollm2-135m"
    throughput_requests: int = 32
    throughput_tokens: int = 512
    throughput_budget: int = 128
    kv_cache_gib: int = 1  # vLLM's KV pool for check d
    kv_tokens: int = 8192  # SGLang's pool for check d


def heldout(n: int) -> list[dict[str, Any]]:
    lines = HELDOUT.read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def make_policy(name: str, model: str) -> Policy:
    if name == "dynts":
        predictor = shipped_predictor(model)
        if predictor is None:
            raise SystemExit(f"no DynTS predictor is shipped for {model}: choose another --throughput-model")
        return build_policy(name, predictor=str(predictor))
    return build_policy(name)


def build_engine(settings: Settings, model: str, batch_size: int, pool: bool = False) -> Backend:
    """The engine under test; ``pool``: with check d's fixed KV pool. On CUDA vLLM's pool is sized in bytes
    (``kv_cache_gib``) rather than as a share of the GPU: the transformers reference ran in this process first."""
    kwargs: dict[str, Any] = dict(model=model, device=settings.device, batch_size=batch_size)
    if settings.backend == "vllm" and (pool or settings.device != "cpu"):
        kwargs["kv_cache_gib"] = settings.kv_cache_gib
    if settings.backend == "vllm" and settings.device != "cpu":
        # vLLM refuses to start unless this share of the GPU is free; an engine closed earlier in this process
        # may not have handed all of its memory back
        kwargs["engine_args"] = {"gpu_memory_utilization": 0.4}
    if settings.backend == "sglang" and pool:
        kwargs["kv_tokens"] = settings.kv_tokens
    return build_backend(settings.backend, **kwargs)


def generate(backend: Backend, requests: list[GenerationRequest], policy_name: str, schedule: EvictionSchedule | None,
             sampling: SamplingParams, model: str) -> list[SequenceResult]:
    policy = make_policy(policy_name, model)
    backend.prepare(policy)
    return backend.generate(requests, policy, schedule if policy.evicts else None, sampling)


def accuracy(results: list[SequenceResult], answers: dict[str, str], thinking: bool) -> float:
    return 100.0 * sum(is_correct(answers[r.request_id], r.text, thinking) for r in results) / max(1, len(results))


def check_full_tokens(engine: list[SequenceResult], reference: list[SequenceResult]) -> Verdict:
    ref = {r.request_id: r.output_ids for r in reference}
    differ = [r.request_id for r in engine if r.output_ids != ref.get(r.request_id)]
    detail = f"{len(engine) - len(differ)}/{len(engine)} problems with the transformers backend's greedy tokens"
    return Verdict("a full tokens", not differ and len(engine) == len(reference),
                   detail + (f" (first differing: {differ[0]})" if differ else ""))


def check_dynts_accuracy(engine_acc: float, reference_acc: float, points: float, budget: int) -> Verdict:
    gap = engine_acc - reference_acc
    return Verdict(f"b dynts at budget {budget}", abs(gap) <= points,
                   f"engine {engine_acc:.1f}% vs transformers {reference_acc:.1f}% ({gap:+.1f} points, allowed "
                   f"{points:g})")


def freed_units(result: SequenceResult) -> int:
    return int(result.extra.get("kv_freed_blocks", result.extra.get("kv_freed_slots", 0)))


def check_pool(results: list[SequenceResult], free_before: int | None, free_after: int | None,
               serves_after: bool, events: list[tuple[int, int, int]] | None = None) -> Verdict:
    """Every compacting request freed pool units; at each compaction seen (``events``: free count before, after,
    units the compaction released) the free count rose by what it released; the pool is whole after the run."""
    compacting = [r for r in results if r.compressions > 0]
    silent = [r.request_id for r in compacting if freed_units(r) <= 0]
    parts = [f"{len(compacting)}/{len(results)} requests compacted, {sum(r.compressions for r in results)} "
             f"compactions, {sum(freed_units(r) for r in results)} units freed"]
    ok = bool(compacting) and not silent and serves_after
    if silent:
        parts.append(f"compacted without freeing: {silent[0]}")
    if events is not None:
        wrong = [e for e in events if e[1] != e[0] + e[2]]
        ok = ok and len(events) == sum(r.compressions for r in results) and not wrong
        parts.append(f"{len(events)} compactions seen at the pool, {len(wrong)} with a free count that did not rise "
                     "by what they released")
    if free_before is not None:
        parts.append(f"free before {free_before}, after {free_after}")
        ok = ok and free_before == free_after
    else:
        parts.append("free count enforced by the engine's idle leak check" + ("" if serves_after else ": it stopped"))
    return Verdict("c pool", ok, "; ".join(parts))


class PoolSpy:
    """Records (free before, free after, released) at every compaction where the engine's scheduler is in this
    process (vLLM: ``CompactingFullAttentionManager.release_tail``); ``events`` stays None elsewhere."""

    def __init__(self, backend: Backend) -> None:
        self.backend, self.events = backend, None
        scheduler = getattr(backend, "scheduler", None)
        self.manager = getattr(scheduler, "manager", None)

    def __enter__(self) -> PoolSpy:
        if self.manager is not None:
            self.events = []
            release = self.manager.release_tail

            def spy(request_id: str, kept_blocks: int, dropped: int) -> int:
                before = pool_free(self.backend)
                freed = release(request_id, kept_blocks, dropped)
                self.events.append((before, pool_free(self.backend), freed))
                return freed

            self.manager.release_tail = spy
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.manager is not None:
            del self.manager.release_tail


def pool_free(backend: Backend) -> int | None:
    """The engine's free KV units when readable in this process (vLLM's block pool), else None."""
    pool = getattr(backend, "block_pool", None)
    return None if pool is None else int(pool.get_num_free_blocks())


def throughput_row(results: list[SequenceResult], seconds: float) -> dict[str, Any]:
    tokens = sum(r.generated_tokens for r in results)
    preempted = sum(int(r.extra.get("preemptions", r.extra.get("kv_retractions", 0))) for r in results)
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / max(seconds, 1e-9), 2),
            "preemptions": preempted, "compactions": sum(r.compressions for r in results)}


def check_throughput(rows: dict[str, dict[str, Any]], model: str) -> Verdict:
    base = rows["full"]["tokens_per_s"]
    cells = [f"{name} {row['tokens_per_s']:.1f} tok/s ({row['tokens_per_s'] / base:.2f}x, "
             f"{row['preemptions']} preemptions)" for name, row in rows.items()]
    return Verdict(f"d throughput {model}", None, "; ".join(cells))


def tiny_checks(settings: Settings) -> tuple[list[Verdict], dict[str, Any]]:
    """Checks a-c on the tiny reasoner: the engine against the transformers backend."""
    problems = heldout(settings.problems)
    answers = {p["id"]: p["answer"] for p in problems}
    sampling = SamplingParams(max_new_tokens=settings.max_new_tokens)
    schedule = EvictionSchedule(budget=settings.budget, window=settings.window, interval=settings.interval)
    reference = TransformersBackend("tiny-reasoner", device=settings.device, batch_size=settings.batch_size)
    thinking = reference.model_info().think_end_id is not None
    requests = [GenerationRequest(p["id"], reference.encode_prompt(p["prompt"])) for p in problems]
    ref_full = generate(reference, requests, "full", None, sampling, "tiny-reasoner")
    ref_dynts = generate(reference, requests, "dynts", schedule, sampling, "tiny-reasoner")
    reference.close()
    if settings.device != "cpu":
        import torch

        torch.cuda.empty_cache()
    engine = build_engine(settings, "tiny-reasoner", settings.batch_size)
    try:
        got_full = generate(engine, requests, "full", None, sampling, "tiny-reasoner")
        before = pool_free(engine)
        with PoolSpy(engine) as spy:
            got_dynts = generate(engine, requests, "dynts", schedule, sampling, "tiny-reasoner")
        after = pool_free(engine)
        again = generate(engine, requests[:1], "full", None, sampling, "tiny-reasoner")
        serves = len(again) == 1 and again[0].output_ids == got_full[0].output_ids
    finally:
        engine.close()
    engine_acc, ref_acc = accuracy(got_dynts, answers, thinking), accuracy(ref_dynts, answers, thinking)
    verdicts = [check_full_tokens(got_full, ref_full),
                check_dynts_accuracy(engine_acc, ref_acc, settings.points, settings.budget),
                check_pool(got_dynts, before, after, serves, spy.events)]
    return verdicts, {"dynts_accuracy": {"engine": engine_acc, "transformers": ref_acc}}


def throughput_check(settings: Settings) -> tuple[Verdict, dict[str, Any]]:
    """Check d: full vs window vs dynts, one engine with a fixed KV pool, every request up to the token limit."""
    model = settings.throughput_model
    engine = build_engine(settings, model, settings.throughput_requests, pool=True)
    try:
        prompt = engine.encode_prompt("Count from one to ten thousand, one number per line.") \
            if model != "tiny-reasoner" else engine.encode_prompt(heldout(1)[0]["prompt"])
        requests = [GenerationRequest(f"t{i}", prompt) for i in range(settings.throughput_requests)]
        sampling = SamplingParams(max_new_tokens=settings.throughput_tokens)
        schedule = EvictionSchedule(budget=settings.throughput_budget, window=settings.window,
                                    interval=settings.interval)
        rows = {}
        for name in ("full", "window", "dynts"):
            t0 = time.perf_counter()
            results = generate(engine, requests, name, schedule, sampling, model)
            rows[name] = throughput_row(results, time.perf_counter() - t0)
    finally:
        engine.close()
    return check_throughput(rows, model), {"throughput": rows}


def run(settings: Settings) -> tuple[list[Verdict], dict[str, Any]]:
    verdicts, numbers = tiny_checks(settings)
    verdict, more = throughput_check(settings)
    return [*verdicts, verdict], {**numbers, **more}


def parse(argv: list[str] | None = None) -> tuple[Settings, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("vllm", "sglang"), required=True)
    for name, value in asdict(Settings(backend="vllm")).items():
        if name != "backend":
            parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--json", type=Path, default=None, help="write the verdicts and numbers here")
    args = vars(parser.parse_args(argv))
    out = args.pop("json")
    return Settings(**args), out


def main(argv: list[str] | None = None) -> int:
    settings, out = parse(argv)
    verdicts, numbers = run(settings)
    for verdict in verdicts:
        print(verdict.line(), flush=True)
    if out is not None:
        out.write_text(json.dumps({"settings": asdict(settings), "verdicts": [asdict(v) for v in verdicts],
                                   **numbers}, indent=2) + "\n")
    return 1 if any(v.passed is False for v in verdicts) else 0


if __name__ == "__main__":
    raise SystemExit(main())
