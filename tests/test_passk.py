"""Pass@k, Maj@k and the bootstrap CI against values computed by hand."""

from __future__ import annotations

import pytest

from harness.scoring.passk import bootstrap_ci, majority_correct, pass_at_k, summarize_problems, wilson_ci


@pytest.mark.parametrize(
    "n,c,k,expected",
    [(5, 0, 1, 0.0), (5, 5, 3, 1.0), (5, 2, 1, 0.4), (5, 2, 2, 1 - 3 / 10), (4, 1, 4, 1.0), (10, 3, 5, 1 - 21 / 252)],
)
def test_pass_at_k_unbiased(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_nonsense():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 4)


def test_majority_vote():
    assert majority_correct(["4", "5", "4", None], [True, False, True, False])
    assert not majority_correct(["5", "5", "4"], [False, False, True])
    assert not majority_correct([None, None], [False, False])
    assert majority_correct(["4", "5"], [True, False])  # a tie goes to the first answer seen


def test_bootstrap_ci_brackets_the_mean_and_is_seeded():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 0.5, 1.0, 0.0]
    lo, hi = bootstrap_ci(values)
    assert lo <= sum(values) / len(values) <= hi
    assert (lo, hi) == bootstrap_ci(values)
    assert bootstrap_ci([1.0, 1.0]) == (1.0, 1.0)


def test_summary_over_problems():
    problems = {"a": [("3", True), ("3", True), ("4", False)], "b": [("1", False), (None, False), ("2", True)]}
    s = summarize_problems(problems, k=3)
    assert s["pass@1"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert s["pass@3"] == 1.0 and s["maj@3"] == 0.5


@pytest.mark.parametrize("successes,trials,expected", [(0, 10, (0.0, 0.2775)), (10, 10, (0.7225, 1.0)),
                                                        (50, 100, (0.4038, 0.5962)), (173, 200, (0.8107, 0.9055))])
def test_wilson_interval_matches_published_values(successes, trials, expected):
    """Values of scipy's ``binomtest(...).proportion_ci(method='wilson')``."""
    lo, hi = wilson_ci(successes, trials)
    assert lo == pytest.approx(expected[0], abs=1e-4) and hi == pytest.approx(expected[1], abs=1e-4)


def test_wilson_interval_rejects_nonsense():
    with pytest.raises(ValueError):
        wilson_ci(3, 2)
