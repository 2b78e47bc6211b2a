"""When to compress the KV cache and how many tokens each sequence keeps.

The schedule is shared by every policy: a policy decides *which* tokens survive, the schedule decides *when*
and *how many*. Two modes:

* ``budget`` -- a fixed KV budget ``B`` (tokens, prompt included). The cache grows until a sequence holds
  ``B + interval`` tokens, then it is compacted back to ``B``. The cache therefore never holds more than
  ``B + interval`` tokens, which is what bounds its allocated memory.
* ``paper`` -- the DynTS paper's schedule: when a sequence's KV length reaches ``trigger_len``, keep the prompt,
  the last ``window`` tokens and the top ``ratio`` of the remaining (thinking) tokens.

In both modes the last ``window`` tokens are always kept and, unless ``protect_prompt`` is off, so is the prompt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from zoo.errors import UserError

ScheduleMode = Literal["budget", "paper"]


class ScheduleError(UserError, ValueError):
    """A schedule option is out of range; the message names the option and the valid range."""


@dataclass(frozen=True)
class EvictionSchedule:
    mode: ScheduleMode = "budget"
    budget: int | None = None
    interval: int = 64
    window: int = 128
    trigger_len: int | None = None
    ratio: float = 0.4
    protect_prompt: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("budget", "paper"):
            raise ScheduleError(f"unknown schedule mode {self.mode!r}: use 'budget' or 'paper'")
        if self.window < 0:
            raise ScheduleError(f"--window must be >= 0, got {self.window}")
        if self.mode == "budget":
            if self.budget is None:
                raise ScheduleError("budget mode needs --budget (KV tokens to keep, prompt included)")
            if self.interval < 1:
                raise ScheduleError(f"--interval must be >= 1, got {self.interval}")
            if self.budget <= self.window:
                raise ScheduleError(
                    f"--budget {self.budget} must be larger than --window {self.window}: "
                    "raise the budget or shrink the window"
                )
        else:
            if self.trigger_len is None:
                raise ScheduleError("paper mode needs --trigger-len (KV length that triggers compression)")
            if not 0.0 <= self.ratio < 1.0:
                raise ScheduleError(f"--ratio must be in [0, 1), got {self.ratio}")
            if self.trigger_len <= self.window:
                raise ScheduleError(
                    f"--trigger-len {self.trigger_len} must be larger than --window {self.window}"
                )

    # ---------------------------------------------------------------- sizing
    def check_prompt(self, prompt_len: int, reserved: int = 0) -> None:
        """Refuse a prompt that cannot fit next to the window under this schedule (checked before any work).

        ``reserved`` counts tokens a policy always keeps besides prompt and window (attention sinks); they lie
        inside the prompt when it is protected, so they only count when prompt eviction is allowed.
        """
        limit = self.budget if self.mode == "budget" else self.trigger_len
        assert limit is not None
        name = "--budget" if self.mode == "budget" else "--trigger-len"
        if self.protect_prompt and prompt_len + self.window >= limit:
            raise ScheduleError(
                f"a prompt of {prompt_len} tokens plus the {self.window}-token window does not fit in "
                f"{name} {limit}: raise {name}, shrink --window, or pass --evict-prompt"
            )
        if not self.protect_prompt and self.window + reserved >= limit:
            raise ScheduleError(
                f"the {self.window}-token window plus {reserved} always-kept tokens (sinks) does not fit in "
                f"{name} {limit}: raise {name} or shrink --window"
            )

    def capacity(self, prompt_len: int, max_new_tokens: int) -> int:
        """Cache slots a sequence can ever need: the bound on its allocated KV memory."""
        full = prompt_len + max_new_tokens
        if self.mode == "budget":
            assert self.budget is not None
            return min(full, max(prompt_len, self.budget + self.interval))
        assert self.trigger_len is not None
        return min(full, max(prompt_len, self.trigger_len))

    def steady_capacity(self) -> int:
        """Slots needed once any over-long prompt has been compressed: budget + interval, or trigger_len."""
        limit = self.budget + self.interval if self.mode == "budget" else self.trigger_len
        assert limit is not None
        return limit

    def triggers(self, live: int) -> bool:
        """Whether a sequence holding ``live`` tokens must be compressed now."""
        if self.mode == "budget":
            assert self.budget is not None
            return live >= self.budget + self.interval
        assert self.trigger_len is not None
        return live >= self.trigger_len

    def keep_count(self, live: int, prompt_len: int) -> int:
        """How many of a sequence's ``live`` tokens survive a compression."""
        if self.mode == "budget":
            assert self.budget is not None
            return min(live, self.budget)
        protected = (prompt_len if self.protect_prompt else 0) + self.window
        rest = max(0, live - protected)
        return min(live, protected + math.ceil(self.ratio * rest))

    def to_dict(self) -> dict:
        return asdict(self)


def row_budgets(schedules: Sequence[EvictionSchedule | None]) -> tuple[int, ...] | None:
    """Each row's ``--budget`` (``CacheView.budgets``), or None when any row's schedule has none (paper mode)."""
    budgets = [s.budget if s is not None and s.mode == "budget" else None for s in schedules]
    return None if any(b is None for b in budgets) else tuple(int(b) for b in budgets)  # type: ignore[arg-type]
