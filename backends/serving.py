"""What ``dynts-bench serve`` hands an engine's server process, engine-neutral (vLLM and SGLang serve the same way).

An engine's OpenAI-compatible server runs its scheduler / engine core in child processes, so the policy cannot be
handed over in-process as ``run`` does. ``serve`` validates everything first, then starts the server with a JSON
``ServeSpec`` in the environment (``SERVE_ENV``); the engine process rebuilds and prepares the policy from it
(``build_served_policy``), runs every request that carries no per-request options of ours under the served
schedule, and, with ``stats`` set, appends one JSON line per finished request to that file (``write_stats``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from backends.base import BackendError
from backends.hf.facts import ModelFacts
from zoo import build_policy
from zoo.base import Policy
from zoo.schedule import EvictionSchedule, ScheduleError

SERVE_ENV = "DYNTS_BENCH_SERVE"
#: the API key ``serve --api-key`` hands the server process (each engine's launcher passes it to its server)
API_KEY_ENV = "DYNTS_BENCH_API_KEY"


@dataclass(frozen=True)
class ServeSpec:
    """What the engine process needs to rebuild the served policy: plain JSON, no pickled objects."""

    policy: str
    options: dict[str, Any]  # build_policy keyword arguments (the predictor directory included)
    schedule: dict[str, Any] | None  # EvictionSchedule.to_dict(); None for a policy that never evicts
    model: str  # --model as given
    dtype: str
    stats: str | None = None  # JSONL file of per-request KV stats

    def to_env(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls, value: str) -> ServeSpec:
        try:
            return cls(**json.loads(value))
        except (ValueError, TypeError) as exc:
            raise BackendError(f"{SERVE_ENV} is not a serve spec written by dynts-bench serve ({exc})") from None

    @property
    def default_options(self) -> dict[str, Any]:
        """Our per-request options for requests that come without them (every OpenAI client's)."""
        return {"schedule": self.schedule}


@lru_cache(maxsize=1)
def served_spec() -> ServeSpec | None:
    """The spec of the server this process belongs to, or ``None`` (``run``, tests, a plain engine)."""
    value = os.environ.get(SERVE_ENV)
    return ServeSpec.from_env(value) if value else None


def build_served_policy(spec: ServeSpec, facts: ModelFacts) -> tuple[Policy, int | None]:
    """The served policy, prepared for the model as ``run`` prepares it; with the model's ``</think>`` id."""
    policy = build_policy(spec.policy, **spec.options)
    policy.prepare(facts.model_info())
    return policy, facts.think_end_id


def write_stats(spec: ServeSpec, row: dict[str, Any]) -> None:
    """Append one finished request's stats (one ``write`` of one line: lines from one process never interleave)."""
    if spec.stats is None:
        return
    with open(spec.stats, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def prompt_refusal(spec: ServeSpec | None, prompt_len: int) -> str | None:
    """Why the served schedule cannot take a prompt of ``prompt_len`` tokens, or None when it can.

    With the prompt protected, a sequence keeps its whole prompt plus the recent window; a prompt that leaves no
    room for them inside the budget cannot be served as scheduled (``run`` refuses it the same way, before any
    work: ``EvictionSchedule.check_prompt``). Each engine's server calls this where it validates a request's
    length, so such a request gets a 400 naming the limit instead of a silently broken window.
    """
    if spec is None or spec.schedule is None:
        return None
    schedule = EvictionSchedule(**spec.schedule)
    if not schedule.protect_prompt:
        return None
    try:
        schedule.check_prompt(prompt_len)
    except ScheduleError:
        limit = schedule.budget if schedule.mode == "budget" else schedule.trigger_len
        assert limit is not None
        return (f"the prompt has {prompt_len} tokens; this server keeps the whole prompt plus a {schedule.window}-"
                f"token window within a KV budget of {limit} tokens, so prompts may have at most "
                f"{limit - schedule.window - 1} tokens")
    return None
