"""Accuracy over several samples per problem: Pass@1, unbiased Pass@k, Maj@k, and a bootstrap CI on Pass@1."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from math import comb, sqrt


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator of Pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021):
    ``1 - C(n - c, k) / C(n, k)``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Maj@k for one problem: is the most frequent extracted answer a correct one? Missing answers never vote;
    ties go to the answer seen first (deterministic)."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return any(ok for a, ok in zip(answers, correct) if a == winner)


def bootstrap_ci(
    per_problem: Sequence[float], resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over problems (problems are resampled, not samples)."""
    if not per_problem:
        raise ValueError("bootstrap needs at least one problem")
    rng = random.Random(seed)
    n = len(per_problem)
    means = sorted(sum(rng.choices(per_problem, k=n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def wilson_ci(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a success rate: sound at 0% and 100%, unlike the normal approximation."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"wilson_ci needs 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize_problems(problems: dict[str, list[tuple[str | None, bool]]], k: int) -> dict[str, float | int | list]:
    """Aggregate ``{problem: [(extracted answer, correct), ...]}`` with ``k`` samples each."""
    pass1 = [sum(ok for _, ok in s) / len(s) for s in problems.values()]
    passk = [pass_at_k(len(s), sum(ok for _, ok in s), min(k, len(s))) for s in problems.values()]
    majk = [float(majority_correct([a for a, _ in s], [ok for _, ok in s])) for s in problems.values()]
    lo, hi = bootstrap_ci(pass1)
    return {
        "problems": len(problems),
        "samples_per_problem": k,
        "pass@1": sum(pass1) / len(pass1),
        "pass@1_ci95": [lo, hi],
        f"pass@{k}": sum(passk) / len(passk),
        f"maj@{k}": sum(majk) / len(majk),
    }
