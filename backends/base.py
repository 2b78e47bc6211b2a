"""Engine-independent types shared by every backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from zoo.base import Policy
from zoo.schedule import EvictionSchedule


class BackendError(RuntimeError):
    """A backend cannot run as asked; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class SamplingParams:
    """Decoding options. ``temperature == 0`` means greedy; ``seed`` makes sampling reproducible per request."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d


@dataclass
class GenerationRequest:
    """One sequence to generate. ``schedule`` overrides the run's schedule (per-sequence budgets).

    ``forced_ids`` are written instead of the model's choices, one per step and with the policy active, before
    the model continues on its own: trace replay (``--protocol replay``).
    """

    request_id: str
    prompt_ids: list[int]
    seed: int = 0
    schedule: EvictionSchedule | None = None
    forced_ids: list[int] | None = None


@dataclass
class SequenceResult:
    """What one generated sequence produced and cost. Byte counts are exact (from tensor sizes)."""

    request_id: str
    output_ids: list[int]
    text: str
    finish_reason: str  # "eos" | "stop" | "length"
    prompt_tokens: int
    generated_tokens: int
    ttft_s: float
    decode_s: float
    kv_peak_tokens: int  # most tokens this sequence held in the cache at once
    kv_peak_bytes: int  # kv_peak_tokens x bytes per token
    kv_full_bytes: int  # what a full cache would have held at the end (the counterfactual)
    compressions: int
    policy_s: float  # time in observe + score + select + evict while this sequence was in the batch
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def decode_tokens_per_s(self) -> float:
        steps = self.generated_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decode_tokens_per_s"] = self.decode_tokens_per_s
        return d


class Backend(Protocol):
    """Generates a batch of requests under one policy and schedule."""

    name: str

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        policy: Policy,
        schedule: EvictionSchedule | None,
        sampling: SamplingParams,
    ) -> list[SequenceResult]: ...

    def describe(self) -> dict[str, Any]:
        """Model and engine facts recorded with every result (model id, dtype, layers, bytes per KV token)."""
        ...


def check_schedules(
    requests: Sequence[GenerationRequest], policy: Policy, schedule: EvictionSchedule | None
) -> None:
    """Validate every prompt against its schedule before any generation starts (no half-finished runs)."""
    if not policy.evicts:
        return
    for r in requests:
        sched = r.schedule or schedule
        if sched is None:
            raise BackendError(f"policy {policy.name} evicts, so it needs a schedule (--budget or --trigger-len)")
        if schedule is not None and r.schedule is not None:
            if replace(r.schedule, budget=schedule.budget, trigger_len=schedule.trigger_len) != schedule:
                raise BackendError(
                    f"request {r.request_id}: a per-sequence schedule may change only budget or trigger_len"
                )
        sched.check_prompt(len(r.prompt_ids), policy.reserved_tokens())
