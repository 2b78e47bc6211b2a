"""Engine-independent types shared by every backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from zoo.base import ModelInfo, Policy
from zoo.errors import UserError
from zoo.schedule import EvictionSchedule


class BackendError(UserError, RuntimeError):
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


#: what a backend can run: the three protocols of the harness
PROTOCOLS = frozenset({"generate", "replay", "bench"})
PROTOCOL_NEEDS = {
    "generate": "generation",
    "replay": "forced tokens (teacher-forced reference traces)",
    "bench": "a shared prefill restored for every policy",
}


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports, so that an impossible combination is refused before any model work.

    ``observations`` are the policy needs (``zoo.base.OBSERVATIONS``) the backend can provide; ``protocols``
    the harness protocols it runs: ``generate`` (the model writes its own output), ``replay`` (forced tokens,
    ``GenerationRequest.forced_ids``) and ``bench`` (a shared prefill restored for every timed policy).
    """

    observations: frozenset[str]
    protocols: frozenset[str]

    def refusal(self, backend: str, policy: Policy | None = None, protocol: str = "generate") -> str | None:
        """One line saying why ``policy`` under ``protocol`` cannot run on ``backend``, or None when it can."""
        if protocol not in self.protocols:
            need = PROTOCOL_NEEDS.get(protocol, protocol)
            flag = "dynts-bench bench" if protocol == "bench" else f"--protocol {protocol}"
            return f"{flag} needs {need}; the {backend} backend does not support it: use --backend transformers"
        if policy is not None:
            missing = sorted(policy.needs - self.observations)
            if missing:
                return (f"policy {policy.name} needs the observation {missing[0]!r}, which the {backend} backend "
                        "does not provide: use --backend transformers or another policy")
        return None

    def require(self, backend: str, policy: Policy | None = None, protocol: str = "generate") -> None:
        reason = self.refusal(backend, policy, protocol)
        if reason is not None:
            raise BackendError(reason)


OnBatch = Callable[[list[SequenceResult]], None]


@runtime_checkable
class Backend(Protocol):
    """The contract every engine adapter meets; the harness uses nothing else of a backend.

    Lifecycle: build (loads the model) -> per policy: ``prepare(policy)`` then ``generate(...)`` any number of
    times -> ``close()``. ``tests/test_backend_contract.py`` checks every registered backend against it.
    """

    name: str
    #: sequences generated together; the harness groups work (and resumes) in units of it
    batch_size: int
    capabilities: Capabilities

    def model_info(self) -> ModelInfo:
        """Model facts policies and the harness need: ids, sizes, ``think_end_id``, EOS ids, KV bytes per token."""
        ...

    def describe(self) -> dict[str, Any]:
        """Model and engine facts recorded with every result (model id, dtype, layers, bytes per KV token)."""
        ...

    def encode_prompt(self, text: str, chat: bool = True) -> list[int]:
        """Token ids of a user prompt; with ``chat`` wrapped as a user turn by the model's chat template."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of raw text, no special tokens added (lm-eval contexts come already templated)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids, special tokens skipped."""
        ...

    def chat_template(self) -> str | None:
        """The tokenizer's chat template, or None when the model has none."""
        ...

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """A chat rendered as text by the model's template (what lm-eval's ``apply_chat_template`` returns)."""
        ...

    def prepare(self, policy: Policy) -> None:
        """Bind ``policy`` to the model before it generates (``Policy.prepare``); refuses what cannot run."""
        ...

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        policy: Policy,
        schedule: EvictionSchedule | None,
        sampling: SamplingParams,
        on_batch: OnBatch | None = None,
    ) -> list[SequenceResult]:
        """Generate every request under ``policy``; ``on_batch`` sees each group of results as soon as it is done
        (results are then saved by the harness, so an interruption loses at most one group)."""
        ...

    def close(self) -> None:
        """Release the engine (threads, processes, memory); the backend is unusable afterwards."""
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
