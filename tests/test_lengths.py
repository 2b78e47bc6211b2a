"""``length vs full``: the ratio of paired mean trace lengths and its delta-method interval."""

from __future__ import annotations

import random

from harness.results.lengths import length_ratio, ratio_of_totals
from harness.results.summary import generated_by_sample, summarize_samples


def test_the_ratio_is_of_means_over_the_problems_both_runs_finished() -> None:
    full = {"a": 100, "b": 300, "c": 50}
    policy = {"a": 110, "b": 390, "z": 999}  # "c" unfinished by the policy, "z" not in full's run
    found = length_ratio(policy, full)
    assert found.n == 2 and found.ratio == (110 + 390) / (100 + 300)


def test_identical_lengths_give_one_with_a_zero_width_interval() -> None:
    full = {str(i): 50 + i for i in range(40)}
    found = length_ratio(dict(full), full)
    assert found.ratio == 1.0 and found.low == found.high == 1.0


def test_the_delta_interval_agrees_with_a_paired_bootstrap() -> None:
    rng = random.Random(3)
    full = {str(i): rng.randint(200, 500) for i in range(300)}
    policy = {k: round(v * rng.uniform(0.9, 1.5)) for k, v in full.items()}
    found = length_ratio(policy, full)
    keys = sorted(full)
    ratios = []
    for _ in range(2000):
        pick = [rng.choice(keys) for _ in keys]
        ratios.append(sum(policy[k] for k in pick) / sum(full[k] for k in pick))
    ratios.sort()
    low, high = ratios[50], ratios[1949]
    assert abs(found.low - low) < 0.01 and abs(found.high - high) < 0.01
    assert found.low < found.ratio < found.high


def test_no_shared_problem_or_an_empty_full_run_gives_none() -> None:
    assert length_ratio({"a": 3}, {"b": 3}) is None
    assert length_ratio({"a": 3}, {"a": 0}) is None
    assert length_ratio({"a": 6}, {"a": 3}).low is None  # one problem: no interval


def test_totals_stand_in_only_for_runs_of_the_same_size() -> None:
    assert ratio_of_totals(1200, 10, 1000, 10).ratio == 1.2
    assert ratio_of_totals(1200, 10, 1000, 20) is None


def test_the_summary_keeps_each_samples_length_for_pairing() -> None:
    rows = [{"sample_id": 7, "generated_tokens": 12}, {"sample_id": "b", "generated_tokens": 30},
            {"sample_id": "c", "generated_tokens": None}]
    assert generated_by_sample(rows) == {"7": 12, "b": 30}
    assert summarize_samples(rows)["generated_tokens_by_sample"] == {"7": 12, "b": 30}


def test_the_run_table_cell_pairs_a_policy_with_full_by_sample_id() -> None:
    from harness.results.tables import length_vs_full_cell

    full = [{"sample_id": i, "generated_tokens": 100 + 10 * i} for i in range(5)]
    grown = [{"sample_id": i, "generated_tokens": round((100 + 10 * i) * 1.2)} for i in reversed(range(5))]
    assert length_vs_full_cell(full, grown) == "1.20x [1.20, 1.20]"
    assert length_vs_full_cell(None, grown) == "-"
