"""What a paged engine's backend does the same way whatever the engine (vLLM, SGLang): check a generation, bind
the policy, run it in groups of ``batch_size`` concurrent requests, hand each group's results on.

In the manner of kvpress's ``ScorerPress``, the base class owns the loop and an engine supplies what differs:
``_configure`` (hand the policy to the engine's workers or scheduler) and ``_run_group`` (submit one group and
collect its results). Nothing here imports an engine.
"""

from __future__ import annotations

from collections.abc import Sequence

from backends.base import (
    BackendError,
    Capabilities,
    GenerationRequest,
    OnBatch,
    SamplingParams,
    SequenceResult,
    check_schedules,
)
from zoo.base import Policy
from zoo.schedule import EvictionSchedule


class PagedEngine:
    """Mixin for a paged engine's backend, placed before the model-facts base that provides ``model_info``
    (module docstring)."""

    name: str
    capabilities: Capabilities
    batch_size: int
    max_model_len: int

    def _configure(self, policy: Policy) -> None:
        """Bind ``policy`` to the engine (a no-op when it is already bound)."""
        raise NotImplementedError

    def _run_group(self, group: list[GenerationRequest], policy: Policy, schedule: EvictionSchedule | None,
                   sampling: SamplingParams) -> list[SequenceResult]:
        """Generate ``group`` concurrently, results in the group's order."""
        raise NotImplementedError

    def prepare(self, policy: Policy) -> None:
        self.capabilities.require(self.name, policy)
        policy.prepare(self.model_info())  # type: ignore[attr-defined]

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        policy: Policy,
        schedule: EvictionSchedule | None,
        sampling: SamplingParams,
        on_batch: OnBatch | None = None,
    ) -> list[SequenceResult]:
        self.capabilities.require(self.name, policy)
        if any(r.forced_ids for r in requests):
            self.capabilities.require(self.name, policy, "replay")
        check_schedules(requests, policy, schedule)
        too_long = [r for r in requests if len(r.prompt_ids) + sampling.max_new_tokens > self.max_model_len]
        if too_long:
            raise BackendError(f"request {too_long[0].request_id}: prompt + --max-new-tokens exceeds the engine's "
                               f"context length (max_model_len) {self.max_model_len}: lower --max-new-tokens")
        self._configure(policy)
        results: list[SequenceResult] = []
        for start in range(0, len(requests), self.batch_size):
            done = self._run_group(list(requests[start : start + self.batch_size]), policy, schedule, sampling)
            results.extend(done)
            if on_batch is not None:
                on_batch(done)
        return results
