"""Reasoning length as a tracked metric: a policy's mean generated tokens over the full cache's, on the same
problems.

Eviction at low budgets can lengthen reasoning traces (the model re-derives what it lost, arXiv 2512.12008): a
policy that keeps accuracy by thinking 30% longer costs 30% more decode time and KV writes. ``length vs full`` is

    R = mean(policy tokens) / mean(full tokens)    over the problems both runs finished,

with a 95% interval by the delta method for a ratio of paired means: the residuals ``d_i = y_i - R x_i`` have mean
zero at the true R, so ``se(R) = sd(d) / (sqrt(n) * mean(x))``, and the interval is ``R +- 1.96 se``. It is
deterministic (no resampling seed) and agrees with a paired bootstrap on samples of a few hundred
(tests/test_lengths.py). The interval is over problems: it says how far R could move on other problems of the
same kind, not how much a greedy rerun would vary (it would not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass(frozen=True)
class LengthRatio:
    ratio: float
    low: float | None  # None: fewer than two paired problems
    high: float | None
    n: int  # problems both runs finished

    def label(self) -> str:
        """``1.08x [1.04, 1.12]``: the ratio and its 95% interval, as tables print it."""
        interval = "" if self.low is None else f" [{self.low:.2f}, {self.high:.2f}]"
        return f"{self.ratio:.2f}x{interval}"


def length_ratio(policy: dict[str, int], full: dict[str, int]) -> LengthRatio | None:
    """``length vs full`` over the sample ids both maps hold (``{sample_id: generated tokens}``), or None when
    they share none or full generated nothing."""
    shared = sorted(set(policy) & set(full))
    n = len(shared)
    if not n:
        return None
    ys = [float(policy[k]) for k in shared]
    xs = [float(full[k]) for k in shared]
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    if mean_x <= 0:
        return None
    ratio = mean_y / mean_x
    if n < 2:
        return LengthRatio(ratio, None, None, n)
    residuals = [y - ratio * x for x, y in zip(xs, ys)]
    sd = math.sqrt(sum(d * d for d in residuals) / (n - 1))  # the residuals' mean is exactly 0
    half = Z95 * sd / (math.sqrt(n) * mean_x)
    return LengthRatio(ratio, ratio - half, ratio + half, n)


def ratio_of_totals(policy_tokens: int | None, policy_n: int, full_tokens: int | None,
                    full_n: int) -> LengthRatio | None:
    """The ratio from two runs' totals when their per-sample lengths were not recorded (runs made before
    ``generated_tokens_by_sample``): no interval, and only meaningful on the same problems (same sweep)."""
    if not policy_tokens or not full_tokens or not policy_n or policy_n != full_n:
        return None
    return LengthRatio(policy_tokens / full_tokens, None, None, policy_n)
