"""A JSONL prompt file (``--prompts``, default: the held-out problems of the model's embedded task): the model
answers each prompt; with an ``answer`` field the last number after ``</think>`` is checked against it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backends.base import Backend, GenerationRequest, SequenceResult, check_schedules
from harness.runs.config import file_sha256
from harness.runs.lifecycle import ActiveRun
from harness.scoring.answers import is_correct
from harness.workloads.interface import OnSample, request_seed
from harness.workloads.prompt_file import PromptItem, load_prompts
from zoo.base import Policy
from zoo.schedule import EvictionSchedule


class PromptWorkload:
    protocol = "generate"

    def __init__(self, path: Path, limit: int | None, chat: bool) -> None:
        self.items: list[PromptItem] = load_prompts(path, limit)
        self.chat = chat
        self.source_name, self.source_hash, self.n_items = path.name, file_sha256(path), len(self.items)
        self._encoded: tuple[Backend, dict[str, list[int]]] | None = None

    def prompt_ids(self, backend: Backend) -> dict[str, list[int]]:
        """Every prompt's token ids, encoded once per backend for the prompt check and every policy."""
        if self._encoded is None or self._encoded[0] is not backend:
            self._encoded = (backend, {i.id: backend.encode_prompt(i.prompt, chat=self.chat) for i in self.items})
        return self._encoded[1]

    def config_extra(self) -> dict[str, Any]:
        return {}

    def check(self, backend: Backend, policies: Mapping[str, Policy], schedule: EvictionSchedule) -> None:
        encoded = [GenerationRequest(sid, ids) for sid, ids in self.prompt_ids(backend).items()]
        for policy in policies.values():
            check_schedules(encoded, policy, schedule)

    def generate(self, run: ActiveRun, backend: Backend, policy: Policy, on_sample: OnSample | None) -> None:
        seed = run.config.sampling.seed
        todo = [item for item in self.items if item.id not in run.done]
        by_id = {item.id: item for item in todo}
        prompt_ids = self.prompt_ids(backend)
        requests = [GenerationRequest(i.id, prompt_ids[i.id], request_seed(seed, i.id)) for i in todo]
        thinking = backend.model_info().think_end_id is not None

        def record(results: list[SequenceResult]) -> None:
            for result in results:
                item = by_id[result.request_id]
                row = {"sample_id": item.id, "seed": request_seed(seed, item.id), **result.to_dict()}
                if item.answer is not None:
                    row["answer"] = item.answer
                    row["correct"] = is_correct(item.answer, result.text, thinking)
                run.append(row)
                if on_sample is not None:
                    on_sample()

        backend.generate(requests, policy, run.config.schedule, run.config.sampling, on_batch=record)

    def quality(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        scored = [r["correct"] for r in rows if "correct" in r]
        return {"accuracy": sum(scored) / len(scored) if scored else None}
