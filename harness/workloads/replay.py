"""Trace replay (``--protocol replay``): every reference trace is forced token by token through the decode loop
with the policy active, then the model answers; rows carry KL / top-1 agreement with the full cache on the same
prefix and the share of far-back reads still cached and predicted right (mechanics:
``replay_traces``).

Transformers only: it needs forced tokens and a per-forward hook on the decode loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backends.base import Backend, BackendError, GenerationRequest, check_schedules
from backends.hf.backend import TransformersBackend
from backends.hf.decode import generate_batch
from harness.runs.config import file_sha256
from harness.runs.lifecycle import ActiveRun
from harness.workloads.interface import OnSample, request_seed
from harness.workloads.replay_traces import (
    Recorder,
    ReferenceCache,
    ReplayItem,
    answer_after,
    build_items,
    load_trace_rows,
    mean,
    replay_sampling,
)
from zoo.base import Policy
from zoo.schedule import EvictionSchedule


def _transformers(backend: Backend) -> TransformersBackend:
    if not isinstance(backend, TransformersBackend):
        raise BackendError(f"--protocol replay needs forced tokens through the project's decode loop; the "
                           f"{backend.name} backend does not support them: use --backend transformers")
    return backend


class ReplayWorkload:
    protocol = "replay"

    def __init__(self, path: Path, limit: int | None, chat: bool) -> None:
        self.rows = load_trace_rows(path, limit)
        self.chat = chat
        self.source_name, self.source_hash, self.n_items = path.name, file_sha256(path), len(self.rows)
        self._items: list[ReplayItem] | None = None
        self._references = ReferenceCache()  # full-cache log-probabilities, shared by every policy of the run

    def config_extra(self) -> dict[str, Any]:
        return {"protocol": "replay"}

    def items(self, backend: TransformersBackend) -> list[ReplayItem]:
        """Prompts and traces tokenized once per invocation, for the prompt check and every policy."""
        if self._items is None:
            self._items = build_items(backend, self.rows, self.chat)
        return self._items

    def check(self, backend: Backend, policies: Mapping[str, Policy], schedule: EvictionSchedule) -> None:
        encoded = [GenerationRequest(i.id, i.prompt_ids) for i in self.items(_transformers(backend))]
        for policy in policies.values():
            check_schedules(encoded, policy, schedule)

    def generate(self, run: ActiveRun, backend: Backend, policy: Policy, on_sample: OnSample | None) -> None:
        engine = _transformers(backend)
        config = run.config
        todo = [i for i in self.items(engine) if i.id not in run.done]
        for start in range(0, len(todo), engine.batch_size):
            batch = todo[start : start + engine.batch_size]
            requests = [GenerationRequest(i.id, i.prompt_ids, request_seed(config.sampling.seed, i.id),
                                          forced_ids=i.forced_ids) for i in batch]
            chunk = {i.id: i for i in batch}
            recorder = Recorder(chunk, self._references.get(engine, requests, chunk, config))
            results = generate_batch(engine.parts, requests, policy, config.schedule, replay_sampling(config, chunk),
                                     engine.device, on_forward=recorder)
            for result in results:
                item = chunk[result.request_id]
                got = answer_after(engine, item, result.output_ids)
                run.append({"sample_id": item.id, **result.to_dict(), "answer": item.answer, "extracted": got,
                            "correct": got == item.answer, "forced_tokens": len(item.forced_ids),
                            "kl_mean": mean(recorder.kl[item.id]), "top1_agreement": mean(recorder.top1[item.id]),
                            "retrieval_recall": mean(recorder.kept.get(item.id, [])),
                            "retrieval_accuracy": mean(recorder.retrieved.get(item.id, [])),
                            "retrievals": len(item.retrievals)})
                if on_sample is not None:
                    on_sample()

    def quality(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "accuracy": mean([r["correct"] for r in rows]),
            "kl_mean": mean([r["kl_mean"] for r in rows]),
            "top1_agreement": mean([r["top1_agreement"] for r in rows]),
            "retrieval_recall": mean([r["retrieval_recall"] for r in rows if r["retrieval_recall"] is not None]),
            "retrieval_accuracy": mean([r["retrieval_accuracy"] for r in rows if r["retrieval_accuracy"] is not None]),
            "protocol": "replay",
        }
