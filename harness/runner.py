"""One run = one policy over one prompt set: resumable, results appended per sample, summary at the end."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.base import GenerationRequest
from harness.config import RunConfig
from harness.env import environment
from harness.metrics import NvmlSampler, cuda_memory, peak_rss_bytes, reset_cuda_peak, summarize_samples
from harness.prompts import PromptItem
from harness.results import RunDir, config_hash, default_run_id
from harness.scoring import is_correct
from zoo.base import Policy


@dataclass
class RunOutcome:
    run_dir: RunDir
    summary: dict[str, Any]
    resumed_samples: int  # samples found finished from an earlier, interrupted invocation
    reused: bool  # the run was already complete: nothing was generated


def request_seed(seed: int, item_id: str) -> int:
    """A per-sample seed derived from the run seed and the sample id (stable across batching and resumes)."""
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def execute(
    config: RunConfig,
    backend: Any,
    policy: Policy,
    items: list[PromptItem],
    out_root: Path,
    run_id: str | None = None,
    on_sample: Callable[[], None] | None = None,
) -> RunOutcome:
    """Run ``policy`` over ``items`` into ``out_root/<run-id>/``, skipping samples an earlier run finished."""
    config_dict, run_dir, finished = open_run(config, out_root, run_id)
    if finished is not None:
        return finished
    done = run_dir.done_ids()
    todo = [item for item in items if item.id not in done]
    by_id = {item.id: item for item in items}
    seed = config.sampling.seed
    requests = [
        GenerationRequest(item.id, backend.encode_prompt(item.prompt, chat=config.chat), request_seed(seed, item.id))
        for item in todo
    ]
    backend.prepare(policy)
    env = environment()
    reset_cuda_peak()
    thinking = getattr(getattr(backend, "parts", None), "think_end_id", None) is not None

    def record(results) -> None:
        for result in results:
            item = by_id[result.request_id]
            row = {"sample_id": item.id, "config_hash": run_dir.config_hash, "seed": request_seed(seed, item.id)}
            row.update(result.to_dict())
            row["git_sha"] = env["git_sha"]
            if item.answer is not None:
                row["answer"] = item.answer
                row["correct"] = is_correct(item.answer, result.text, thinking)
            run_dir.append_sample(row)
            if on_sample is not None:
                on_sample()

    started = time.perf_counter()
    with NvmlSampler() as nvml:
        backend.generate(requests, policy, config.schedule, config.sampling, on_batch=record)
    rows = run_dir.samples()
    scored = [r["correct"] for r in rows if "correct" in r]
    accuracy = {"accuracy": sum(scored) / len(scored) if scored else None}
    summary = finish_run(run_dir, config_dict, backend, env, rows, accuracy, time.perf_counter() - started, nvml, done)
    return RunOutcome(run_dir, summary, len(done), reused=False)


def open_run(config: RunConfig, out_root: Path, run_id: str | None) -> tuple[dict, RunDir, RunOutcome | None]:
    """The run's directory, and its outcome when it is already complete (complete runs are never redone)."""
    config_dict = config.to_dict()
    run_dir = RunDir.open(out_root, run_id or default_run_id(config_dict), config_dict)
    if not run_dir.is_complete:
        return config_dict, run_dir, None
    summary = json.loads((run_dir.path / "summary.json").read_text())["metrics"]
    return config_dict, run_dir, RunOutcome(run_dir, summary, summary.get("n_samples", 0), reused=True)


def finish_run(
    run_dir: RunDir,
    config_dict: dict[str, Any],
    backend: Any,
    env: dict[str, Any],
    rows: list[dict[str, Any]],
    quality: dict[str, Any],
    wall: float,
    nvml: NvmlSampler,
    done: set[str],
) -> dict[str, Any]:
    """Aggregate the samples and write ``summary.json`` atomically; returns the metrics."""
    summary = summarize_samples(rows)
    summary.update(quality)
    summary["wall_s_this_invocation"] = wall
    summary["peak_rss_bytes"] = peak_rss_bytes()
    summary.update(cuda_memory())
    summary["nvml"] = nvml.summary()
    summary["kv_batch_allocated_max_bytes"] = max(
        (r.get("extra", {}).get("kv_batch_allocated_bytes", 0) for r in rows), default=0
    )
    run_dir.write_summary(
        {
            "run_id": run_dir.path.name,
            "config": config_dict,
            "config_hash": config_hash(config_dict),
            "seed": config_dict["sampling"]["seed"],
            "model": backend.describe(),
            "environment": env,
            "resumed_samples": len(done),
            "metrics": summary,
        }
    )
    return summary


def deterministic_subset(n_docs: int, limit: int | None, seed: int) -> list[int] | None:
    """``limit`` document indices drawn with ``seed`` (sorted), or None for all documents."""
    if limit is None or limit >= n_docs:
        return None
    return sorted(random.Random(seed).sample(range(n_docs), limit))


def execute_task(
    config: RunConfig,
    backend: Any,
    policy: Policy,
    task: Any,
    samples: int,
    out_root: Path,
    run_id: str | None = None,
    on_sample: Callable[[], None] | None = None,
) -> RunOutcome:
    """Run an lm-eval ``task`` (built by ``harness.lmeval.build_task``) under ``policy``, resumably."""
    from lm_eval.evaluator import simple_evaluate

    from harness.lmeval import DyntsLM
    from harness.passk import summarize_problems

    config_dict, run_dir, finished = open_run(config, out_root, run_id)
    if finished is not None:
        return finished
    previous = {row["sample_id"]: row for row in run_dir.samples()}
    env = environment()
    backend.prepare(policy)
    reset_cuda_peak()
    seed = config.sampling.seed

    def saved(row: dict[str, Any]) -> None:
        run_dir.append_sample({**row, "config_hash": run_dir.config_hash, "git_sha": env["git_sha"]})
        if on_sample is not None:
            on_sample()

    lm = DyntsLM(
        backend, policy, config.schedule, config.sampling, {task.config.task: config.extra["task_kind"]},
        seed_of=lambda sample_id: request_seed(seed, sample_id), done=previous, on_sample=saved,
    )
    subset = deterministic_subset(len(list(task.test_docs())), config.limit, seed)
    gen_kwargs = {k: v for k, v in config.extra.get("gen_kwargs", {}).items() if v is not None}
    started = time.perf_counter()
    with NvmlSampler() as nvml:
        evaluated = simple_evaluate(
            model=lm, tasks=[task], samples={task.config.task: subset} if subset is not None else None,
            apply_chat_template=config.chat, gen_kwargs=gen_kwargs or None, log_samples=False,
            bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    rows = run_dir.samples()
    problems: dict[str, list[tuple[str | None, bool]]] = {}
    for row in rows:
        problems.setdefault(row["doc_id"], []).append((row["extracted"], bool(row["correct"])))
    quality: dict[str, Any] = summarize_problems(problems, samples)
    quality["truncated_samples"] = sum(bool(r.get("truncated")) for r in rows)
    quality["unclosed_thinking_samples"] = sum(not r.get("thinking_closed", True) for r in rows)
    quality["no_answer_samples"] = sum(r.get("extracted") is None for r in rows)
    quality["lm_eval"] = (evaluated or {}).get("results", {}).get(task.config.task, {})
    summary = finish_run(run_dir, config_dict, backend, env, rows, quality, time.perf_counter() - started, nvml,
                         set(previous))
    return RunOutcome(run_dir, summary, len(previous), reused=False)
