"""A benchmark task (``--task``) run through lm-eval: lm-eval builds the requests from the task YAML, our
model ``PolicyLM`` generates them under the policy and saves each sample as it finishes; the
summary has Pass@1 with its CI, Pass@k, Maj@k and lm-eval's own aggregate."""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backends.base import Backend
from harness.runs.config import file_sha256
from harness.runs.lifecycle import ActiveRun
from harness.runs.options import RunOptions
from harness.scoring.passk import summarize_problems
from harness.workloads.interface import OnSample, request_seed
from harness.workloads.lmeval_model import PolicyLM
from harness.workloads.lmeval_tasks import build_task, shipped_tasks
from harness.workloads.prompt_file import default_prompts_path
from zoo.base import Policy
from zoo.schedule import EvictionSchedule


def deterministic_subset(n_docs: int, limit: int | None, seed: int) -> list[int] | None:
    """``limit`` document indices drawn with ``seed`` (sorted), or None for all documents."""
    if limit is None or limit >= n_docs:
        return None
    return sorted(random.Random(seed).sample(range(n_docs), limit))


class TaskWorkload:
    protocol = "generate"

    def __init__(self, options: RunOptions) -> None:
        name = options.task
        assert name is not None
        self.options = options
        self.task, self.kind = build_task(name, options.data_dir, options.samples)
        self.n_docs = len(list(self.task.test_docs()))
        self.n_items = min(self.n_docs, options.limit or 10**9) * options.samples
        info = shipped_tasks()[name]
        if options.data_dir is not None:
            self.source_hash = file_sha256(Path(options.data_dir) / f"{name}.jsonl")
        elif info["hub_path"] is None:  # data shipped with the package
            self.source_hash = file_sha256(default_prompts_path(info["embedded_task"] or "sum"))
        else:
            self.source_hash = f"hub:{info['hub_path']}:{info['hub_name'] or ''}"
        self.source_name = name
        self._lm_eval: dict[str, Any] = {}  # lm-eval's aggregate of the policy that generated last

    def config_extra(self) -> dict[str, Any]:
        """Task settings recorded in the config; CLI sampling options override the task YAML's gen_kwargs."""
        o = self.options
        gen_kwargs: dict[str, Any] = {"max_gen_toks": o.max_new_tokens}
        if o.temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=o.temperature, top_p=o.top_p, top_k=o.top_k)
        if o.stop:
            gen_kwargs["until"] = list(o.stop)
        return {"task": o.task, "task_kind": self.kind, "samples": o.samples, "gen_kwargs": gen_kwargs,
                "data_dir": str(o.data_dir) if o.data_dir else None}

    def check(self, backend: Backend, policies: Mapping[str, Policy], schedule: EvictionSchedule) -> None:
        """lm-eval builds the task's prompts; the backend checks them against the schedule before generating."""

    def generate(self, run: ActiveRun, backend: Backend, policy: Policy, on_sample: OnSample | None) -> None:
        from lm_eval.evaluator import simple_evaluate

        config = run.config
        seed = config.sampling.seed
        self._lm_eval = {}
        previous = {row["sample_id"]: row for row in run.rows()}

        def saved(row: dict[str, Any]) -> None:
            run.append(row)
            if on_sample is not None:
                on_sample()

        lm = PolicyLM(backend, policy, config.schedule, config.sampling, {self.task.config.task: self.kind},
                     seed_of=lambda sample_id: request_seed(seed, sample_id), done=previous, on_sample=saved)
        subset = deterministic_subset(self.n_docs, config.limit, seed)
        gen_kwargs = {k: v for k, v in config.extra.get("gen_kwargs", {}).items() if v is not None}
        evaluated = simple_evaluate(
            model=lm, tasks=[self.task], samples={self.task.config.task: subset} if subset is not None else None,
            apply_chat_template=config.chat, gen_kwargs=gen_kwargs or None, log_samples=False,
            bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        self._lm_eval = (evaluated or {}).get("results", {}).get(self.task.config.task, {})

    def quality(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        problems: dict[str, list[tuple[str | None, bool]]] = {}
        for row in rows:
            problems.setdefault(row["doc_id"], []).append((row["extracted"], bool(row["correct"])))
        quality: dict[str, Any] = summarize_problems(problems, self.options.samples)
        quality["truncated_samples"] = sum(bool(r.get("truncated")) for r in rows)
        quality["unclosed_thinking_samples"] = sum(not r.get("thinking_closed", True) for r in rows)
        quality["no_answer_samples"] = sum(r.get("extracted") is None for r in rows)
        quality["lm_eval"] = self._lm_eval
        return quality
