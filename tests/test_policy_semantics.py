"""Each policy keeps what its paper says it keeps, on small hand-built caches.

One sequence of 12 slots: the prompt is slots 0-1, the window the last 2 (10-11), and a compression keeps 6,
so each policy picks 2 of the 8 slots in between (4 with ``--evict-prompt``). Keys are orthogonal (slot ``s``
has ``10 * e_s``, unless a case makes copies), so a query aimed at slots puts its attention there and nowhere
else. The expected sets are written from the policies' definitions, not computed by their code.
"""

from __future__ import annotations

import math

import pytest
import torch

from zoo import build_policy
from zoo.base import CacheView, ModelInfo, Policy, PolicyError, StepObservation
from zoo.dynts import SCORE
from zoo.predictor import ImportancePredictor, PredictorConfig

T, D, KEEP, WINDOW = 12, 16, 6, 2
PROMPT = {0, 1}
RECENT = {10, 11}


def unit(*slots: int) -> torch.Tensor:
    v = torch.zeros(D)
    for s in slots:
        v[s] = 10.0
    return v


def view(keys: list[torch.Tensor] | None = None, queries: list[torch.Tensor] | None = None,
         token_ids: list[int] | None = None, state: dict | None = None) -> CacheView:
    keys = keys or [unit(s) for s in range(T)]
    positions = torch.arange(T)[None]
    return CacheView(
        valid=torch.ones(1, T, dtype=torch.bool), positions=positions,
        token_ids=torch.tensor([token_ids or [20 + s for s in range(T)]]), is_prompt=positions < 2,
        keys=[torch.stack(keys)[None, None]],  # one layer [B=1, KVH=1, T, D]
        queries=[torch.stack(queries)[None, None]] if queries else None, state=state or {},
    )


def kept(policy: Policy, cache: CacheView, protect_prompt: bool = True) -> set[int]:
    chosen, valid = policy.select(policy.score(cache), cache, torch.tensor([KEEP]), WINDOW, protect_prompt)
    return set(chosen[valid].tolist())


def test_window_keeps_the_most_recent_tokens() -> None:
    assert kept(build_policy("window"), view()) == PROMPT | RECENT | {8, 9}


def test_streamingllm_keeps_the_sinks_and_the_recent_tokens() -> None:
    assert kept(build_policy("streamingllm", sinks=4), view(), protect_prompt=False) == {0, 1, 2, 3} | RECENT


def test_sepllm_keeps_sinks_separators_then_the_most_recent() -> None:
    policy = build_policy("sepllm", sinks=1)
    texts = [f"w{i}" for i in range(40)]
    texts[5] = "."
    policy.prepare(ModelInfo("m", "m", D, 1, lambda: texts))
    ids = [20 + s for s in range(T)]
    ids[3] = ids[6] = 5  # separators at slots 3 and 6
    assert kept(policy, view(token_ids=ids), protect_prompt=False) == {0, 3, 6, 9} | RECENT


def test_h2o_keeps_the_heavy_hitters_of_accumulated_attention() -> None:
    attention = torch.full((1, T), 0.1)
    attention[0, 4], attention[0, 7] = 3.0, 2.0
    assert kept(build_policy("h2o"), view(state={"attention": attention})) == PROMPT | RECENT | {4, 7}


def test_snapkv_keeps_what_the_observation_window_votes_for() -> None:
    # both observed queries look at slots 3 and 5; without pooling those are the votes
    policy = build_policy("snapkv", obs_window=2, kernel_size=1)
    assert kept(policy, view(queries=[unit(3, 5), unit(3, 5)])) == PROMPT | RECENT | {3, 5}


def test_snapkv_pooling_keeps_the_neighbours_of_a_voted_token() -> None:
    # one voted slot (6): max-pooling over 3 slots gives 5 and 7 its vote, so the pick comes from {5, 6, 7}
    policy = build_policy("snapkv", obs_window=1, kernel_size=3, pooling="maxpool")
    assert kept(policy, view(queries=[unit(6)])) - PROMPT - RECENT < {5, 6, 7}


def test_tova_keeps_the_argmax_of_the_last_query_only() -> None:
    # TOVA stores one query (the latest); it looks at 2 and 7
    assert kept(build_policy("tova"), view(queries=[unit(2, 7)])) == PROMPT | RECENT | {2, 7}


def test_rkv_prefers_a_unique_token_to_a_second_copy_of_a_repeated_one() -> None:
    # slots 3, 4, 5 hold the same key, 6 a unique one; the queries attend to all four equally. Attention alone
    # ties them; R-KV's redundancy penalty keeps the unique token and only one copy of the repeated one.
    keys = [unit(s) for s in range(T)]
    keys[4] = keys[5] = keys[3]
    policy = build_policy("rkv", obs_window=2, kernel_size=1)
    chosen = kept(policy, view(keys=keys, queries=[unit(3, 6), unit(3, 6)])) - PROMPT - RECENT
    assert 6 in chosen and len(chosen & {3, 4, 5}) == 1


def scaled(norms: dict[int, float], default: float = 10.0) -> list[torch.Tensor]:
    """Orthogonal keys (slot ``s`` along ``e_s``) with the L2 norm ``norms.get(s, default)``."""
    return [unit(s) * norms.get(s, default) / 10.0 for s in range(T)]


def test_knorm_keeps_the_smallest_keys() -> None:
    keys = scaled({4: 1.0, 7: 2.0, 5: 30.0})
    assert kept(build_policy("knorm"), view(keys=keys)) == PROMPT | RECENT | {4, 7}


def test_knorm_averages_the_norms_over_heads_and_layers() -> None:
    # layer 0, head 0 finds slot 3 the smallest (1); head 1 finds it large (25): mean norm 13. Slot 6 is 8 in every
    # head of both layers; slot 9 is 2 and 12 in layer 0 (mean 7) and 10 in layer 1: mean 8.5. Everything else 10.
    # Mean norms: 3 -> (13 + 10) / 2 = 11.5, 6 -> 8, 9 -> 8.5: kept 6 and 9 (3 would win in one head alone).
    head0, head1, other = scaled({3: 1.0, 6: 8.0, 9: 2.0}), scaled({3: 25.0, 6: 8.0, 9: 12.0}), scaled({6: 8.0})
    cache = view()
    cache.keys = [torch.stack([torch.stack(head0), torch.stack(head1)])[None],
                  torch.stack([torch.stack(other), torch.stack(other)])[None]]
    assert kept(build_policy("knorm"), cache) == PROMPT | RECENT | {6, 9}


def test_keydiff_keeps_the_keys_farthest_from_the_mean_direction() -> None:
    # ten keys share the direction e_0 (with a small private component); slots 3 and 8 point along e_1 and -e_0:
    # the least similar to the average key, so they are the ones kept
    keys = [10.0 * torch.eye(D)[0] + 0.5 * unit(s) / 10.0 for s in range(T)]
    keys[3], keys[8] = 10.0 * torch.eye(D)[1], -10.0 * torch.eye(D)[0]
    assert kept(build_policy("keydiff"), view(keys=keys)) == PROMPT | RECENT | {3, 8}


def test_keydiff_ranks_like_a_numpy_cosine_to_the_mean_unit_key_of_the_valid_slots() -> None:
    """Random keys in 2 KV heads, a left-padded row whose padding holds large keys that would pull the anchor:
    the kept set equals numpy's, which averages only the valid unit keys."""
    import numpy as np

    torch.manual_seed(1)
    keys = torch.randn(1, 2, T, D)
    keys[0, :, :3] = 50.0  # padding
    valid = torch.ones(1, T, dtype=torch.bool)
    valid[0, :3] = False
    positions = (torch.arange(T) - 3).clamp(min=-1)[None]
    cache = CacheView(valid=valid, positions=positions, token_ids=torch.zeros(1, T, dtype=torch.long),
                      is_prompt=torch.zeros(1, T, dtype=torch.bool), keys=[keys])
    k = keys[0].numpy()[:, 3:]  # [KVH, 9, D] valid slots
    unit_k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    anchor = unit_k.mean(axis=1, keepdims=True)
    cosine = (unit_k * anchor).sum(-1) / np.linalg.norm(anchor, axis=-1)
    mean_cosine = {3 + i: c for i, c in enumerate(cosine.mean(0))}  # slot -> cosine averaged over the heads
    window = {T - 2, T - 1}
    evictable = sorted(set(mean_cosine) - window, key=mean_cosine.get)  # least similar first
    expected = window | set(evictable[: KEEP - len(window)])
    policy = build_policy("keydiff")
    chosen, ok = policy.select(policy.score(cache), cache, torch.tensor([KEEP]), WINDOW, True)
    assert set(chosen[ok].tolist()) == expected


def test_curdkv_keeps_the_largest_keys_relative_to_their_local_window() -> None:
    # windows of 4 slots: {0-3} squared norms 1, 1, 1, 9 -> slot 3 has 9/12 = 0.75 of its window; {4-7} norms
    # 9..12 -> at most 144/446 = 0.32; {8-11} 25, 1, 1, 1 -> slot 8 has 25/28 = 0.89. Kept: 8 and 3, not the
    # globally largest keys (6, 7) that a plain norm ranking keeps.
    norms = {0: 1.0, 1: 1.0, 2: 1.0, 3: 3.0, 4: 9.0, 5: 10.0, 6: 11.0, 7: 12.0, 8: 5.0, 9: 1.0, 10: 1.0, 11: 1.0}
    keys = scaled(norms)
    assert kept(build_policy("curdkv", sinks=0, local_window=4), view(keys=keys)) == PROMPT | RECENT | {3, 8}
    assert kept(build_policy("curdkv", sinks=0, local_window=0), view(keys=keys)) == PROMPT | RECENT | {6, 7}


def test_curdkv_keeps_its_sinks_when_the_prompt_may_be_evicted() -> None:
    keys = scaled({5: 30.0, 8: 40.0})
    chosen = kept(build_policy("curdkv", sinks=2, local_window=0), view(keys=keys), protect_prompt=False)
    assert chosen == {0, 1} | RECENT | {5, 8}


def test_observed_divides_the_last_querys_attention_by_the_tokens_after_it() -> None:
    # logits q.k / sqrt(16): 25 for slots 2 and 5, 24 for slot 9, 0 elsewhere, so attention ~0.42, 0.42, 0.155.
    # Divided by the slots from each to the newest (10, 7, 3): 0.042, 0.060, 0.052 -> kept 5 and 9, where TOVA
    # (attention alone) keeps 2 and 5.
    query = (unit(2) + unit(5)) + 0.96 * unit(9)
    assert kept(build_policy("observed"), view(queries=[query])) == PROMPT | RECENT | {5, 9}
    assert kept(build_policy("tova"), view(queries=[query])) == PROMPT | RECENT | {2, 5}


def test_dynts_keeps_the_highest_predicted_scores(tmp_path) -> None:
    # a hand-set head: score = softplus(softplus(hidden[0])), increasing in the first hidden feature
    head = ImportancePredictor(PredictorConfig("m", hidden_size=4, layer_sizes=[1]))
    with torch.no_grad():
        head.mlp[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        head.mlp[2].weight.fill_(1.0)
    head.save(tmp_path)
    policy = build_policy("dynts", predictor=str(tmp_path))
    hidden = torch.zeros(1, T, 4)
    hidden[0, :, 0] = torch.tensor([0, 0, 1, 9, 2, 3, 1, 0, 8, 2, 0, 0], dtype=torch.float)
    state = {SCORE: torch.zeros(1, T)}
    policy.observe(StepObservation(torch.zeros(1, T, dtype=torch.long), 0, hidden=hidden), state)
    assert kept(policy, view(state=state)) == PROMPT | RECENT | {3, 8}


def test_dynts_never_evicts_the_answer_after_think_end(tmp_path) -> None:
    head = ImportancePredictor(PredictorConfig("m", hidden_size=4, layer_sizes=[1]))
    head.save(tmp_path)
    policy = build_policy("dynts", predictor=str(tmp_path))
    state = {SCORE: torch.zeros(1, T)}
    ids = [20 + s for s in range(T)]
    ids[8] = 99  # </think> at slot 8: slots 8 and 9 are the answer
    cache = view(token_ids=ids, state=state)
    cache.think_end_id = 99
    assert {8, 9} <= kept(policy, cache)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_keeps_the_right_count_with_prompt_and_window(seed: int) -> None:
    chosen = kept(build_policy("random", seed=seed), view())
    assert len(chosen) == KEEP and PROMPT | RECENT <= chosen


def test_random_draws_differ_between_seeds_and_cover_every_evictable_slot() -> None:
    draws = [frozenset(kept(build_policy("random", seed=s), view()) - PROMPT - RECENT) for s in range(40)]
    assert len(set(draws)) > 5 and set().union(*draws) == set(range(2, 10))


def test_full_never_evicts() -> None:
    assert not build_policy("full").evicts


def test_query_attention_reads_each_query_heads_own_kv_head_under_grouped_query_attention() -> None:
    """4 query heads over 2 KV heads (SmolLM2 has 9 over 3): query head ``j`` reads KV head ``j // 2``, each of
    the ``w`` stored queries sees only slots up to its own, softmax over ``sqrt(D)``-scaled products -- written
    out one head and one query at a time, against the batched computation."""
    from zoo.base import query_attention

    torch.manual_seed(0)
    b, kv_heads, heads, w, t, d = 2, 2, 4, 3, T, D
    keys = torch.randn(b, kv_heads, t, d)
    queries = torch.randn(b, heads, w, d)
    valid = torch.ones(b, t, dtype=torch.bool)
    valid[1, :3] = False  # a left-padded row
    cache = CacheView(valid=valid, positions=torch.arange(t).expand(b, t),
                      token_ids=torch.zeros(b, t, dtype=torch.long), is_prompt=torch.zeros(b, t, dtype=torch.bool),
                      keys=[keys], queries=[queries], state={})
    (probs,) = list(query_attention(cache))
    for row in range(b):
        for j in range(heads):
            for i in range(w):
                visible = [s for s in range(t - (w - 1 - i)) if valid[row, s]]
                logits = torch.stack([queries[row, j, i] @ keys[row, j // 2, s] for s in visible]) / d**0.5
                expected = torch.zeros(t)
                expected[visible] = torch.softmax(logits, dim=0)
                assert torch.allclose(probs[row, j, i], expected, atol=1e-6)


def _dynts_with_scores(tmp_path, scores: list[float], selection: dict | None = None, target: str = "importance",
                       transform: str = "none", **options):
    head = ImportancePredictor(PredictorConfig("m", hidden_size=4, layer_sizes=[1], selection=selection or {},
                                               target=target, label_transform=transform))
    head.save(tmp_path)
    policy = build_policy("dynts", predictor=str(tmp_path), **options)
    return policy, {SCORE: torch.tensor([scores])}


#                0    1    2    3    4    5    6    7    8    9    10   11   (slots 0-1 prompt, 10-11 window)
NAME_VALUE = [1.0, 1.0, 1.0, 1.0, 0.1, 10., 1.0, 1.0, 9.0, 1.0, 1.0, 1.0]


def test_dynts_ranks_by_the_heads_scores_alone_by_default(tmp_path) -> None:
    policy, state = _dynts_with_scores(tmp_path, NAME_VALUE)
    assert policy.selection() == (0, 0.0)
    assert kept(policy, view(state=state)) == PROMPT | RECENT | {5, 8}


def test_dynts_pool_next_keeps_the_token_before_a_high_scoring_one(tmp_path) -> None:
    """Slot 4 (a result's name, scored low) goes with slot 5 (its value, scored high) and outranks slot 8."""
    policy, state = _dynts_with_scores(tmp_path, NAME_VALUE, pool_next="1")
    assert kept(policy, view(state=state)) == PROMPT | RECENT | {4, 5}


def test_dynts_pool_next_follows_logical_positions_not_columns(tmp_path) -> None:
    from zoo.dynts import pool_successors

    scores = torch.tensor([[9.0, 1.0, 5.0, 2.0, 3.0]])
    valid = torch.tensor([[False, True, True, True, True]])  # left padding (its score never pools)
    # columns hold positions 3, 7, 8, 10 after the padding: 7 is followed by 8; 3 and 8 have no cached successor
    # (4 and 9 were evicted), so column 1 does not take column 2's 5 though they are adjacent
    positions = torch.tensor([[-1, 3, 7, 8, 10]])
    assert pool_successors(scores, positions, valid, 1).tolist() == [[9.0, 1.0, 5.0, 2.0, 3.0]]
    positions = torch.tensor([[-1, 6, 7, 8, 10]])  # now 6 -> 7 -> 8 follow each other
    assert pool_successors(scores, positions, valid, 1).tolist() == [[9.0, 5.0, 5.0, 2.0, 3.0]]
    # pool_next 2: the next two positions, 8 and 10 are 2 apart
    assert pool_successors(scores, positions, valid, 2).tolist() == [[9.0, 5.0, 5.0, 3.0, 3.0]]


def test_dynts_recency_keeps_the_newest_of_equally_scored_tokens(tmp_path) -> None:
    policy, state = _dynts_with_scores(tmp_path, [1.0] * T, recency="2")
    assert kept(policy, view(state=state)) == PROMPT | RECENT | {8, 9}


def test_dynts_recency_keeps_a_high_scoring_old_token_over_newer_ones(tmp_path) -> None:
    scores = [1.0] * T
    scores[3] = 10.0  # median 1, so recency 2 adds at most 2: an old token scored 10 stays
    policy, state = _dynts_with_scores(tmp_path, scores, recency="2")
    assert kept(policy, view(state=state)) == PROMPT | RECENT | {3, 9}


def test_dynts_takes_its_ranking_options_from_the_predictor_unless_given(tmp_path) -> None:
    selection = {"pool_next": 1, "recency": 2.0}
    policy, state = _dynts_with_scores(tmp_path / "a", NAME_VALUE, selection)
    assert policy.selection() == (1, 2.0)
    assert build_policy("dynts", predictor=str(tmp_path / "a"), pool_next="none").selection() == (1, 2.0)
    assert build_policy("dynts", predictor=str(tmp_path / "a"), pool_next="0", recency="0").selection() == (0, 0.0)
    policy, state = _dynts_with_scores(tmp_path / "b", NAME_VALUE, recency="-1")
    with pytest.raises(PolicyError, match="must be >= 0"):
        policy.selection()


def test_a_predictor_without_a_selection_loads_as_the_papers_ranking(tmp_path) -> None:
    """predictor.json files written before ``selection`` existed still load (and rank as before)."""
    import json

    head = ImportancePredictor(PredictorConfig("m", hidden_size=4, layer_sizes=[1]))
    head.save(tmp_path)
    config = json.loads((tmp_path / "predictor.json").read_text())
    del config["selection"], config["target"]
    (tmp_path / "predictor.json").write_text(json.dumps(config))
    policy = build_policy("dynts", predictor=str(tmp_path))
    assert policy.selection() == (0, 0.0)
    assert ImportancePredictor.load(tmp_path).config.target == "importance"
    state = {SCORE: torch.tensor([NAME_VALUE])}
    assert torch.equal(policy.score(view(state=state)), state[SCORE])  # an importance head's scores, untouched


#: predicted lifetimes (tokens) of a lifetime head; the newest cached position is 11, so slot s is 11 - s old.
#: Slot 3 (age 8) is needed for 30 tokens (``p``: read at the end); slot 4 (age 7) for 6 -- a register statement a
#: later one overwrote, its need ran out a token ago; slot 7 (age 4) for 5 -- the register's live statement.
LIFETIMES = [0.0, 0.0, 0.0, 30., 6.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0]


def test_dynts_lifetime_head_evicts_the_token_whose_predicted_need_ran_out(tmp_path) -> None:
    # log(1 + lifetime) - log(1 + age): slot 3 log(31/9), slot 7 log(6/5) > 0, slot 4 log(7/8) < 0, the rest
    # -log(1 + age), at most -log 3 (slot 9)
    policy, state = _dynts_with_scores(tmp_path / "a", LIFETIMES, target="lifetime")
    assert kept(policy, view(state=state)) == PROMPT | RECENT | {3, 7}
    # the same numbers read as importance keep the longer-lived, dead statement (6 > 5)
    policy, state = _dynts_with_scores(tmp_path / "b", LIFETIMES)
    assert kept(policy, view(state=state)) == PROMPT | RECENT | {3, 4}
    # a head trained on log1p(lifetime) ranks the same
    logged = torch.tensor(LIFETIMES).log1p().tolist()
    policy, state = _dynts_with_scores(tmp_path / "c", logged, target="lifetime", transform="log1p")
    assert kept(policy, view(state=state)) == PROMPT | RECENT | {3, 7}


def test_dynts_lifetime_head_ranks_by_how_far_through_its_predicted_lifetime_a_token_is(tmp_path) -> None:
    """(1 + lifetime) / (1 + age), not lifetime - age: slot 2 (age 9, 30 tokens) 31/10, slot 6 (age 5, 20) 21/6,
    slot 9 (age 2, 11) 12/3 -> slots 6 and 9 stay, though lifetime - age (21, 15, 9) would keep 2 and 6."""
    lifetimes = [0.0] * T
    lifetimes[2], lifetimes[6], lifetimes[9] = 30.0, 20.0, 11.0
    policy, state = _dynts_with_scores(tmp_path, lifetimes, target="lifetime")
    assert kept(policy, view(state=state)) == PROMPT | RECENT | {6, 9}


def test_dynts_recency_on_a_lifetime_head_makes_age_weigh_more(tmp_path) -> None:
    """Recency r adds r x log(1 + span) x age rank (span 11, rank s / 11): slot 3 (lifetime 11, age 8) against
    slots 8 and 9 (lifetime 0, ages 3 and 2)."""
    lifetimes = [0.0] * T
    lifetimes[3] = 11.0
    # r = 0: log(12/9) = 0.29, -log 4 = -1.39, -log 3 = -1.10 -> {3, 9}
    policy, state = _dynts_with_scores(tmp_path / "a", lifetimes, target="lifetime")
    assert kept(policy, view(state=state)) == PROMPT | RECENT | {3, 9}
    # r = 2: + 2 log(12) s / 11 = 4.97 s / 11: slot 3 0.29 + 1.36 = 1.64, slot 8 -1.39 + 3.61 = 2.23, slot 9
    # -1.10 + 4.07 = 2.97 -> {8, 9}
    policy, state = _dynts_with_scores(tmp_path / "b", lifetimes, target="lifetime", recency="2")
    assert kept(policy, view(state=state)) == PROMPT | RECENT | {8, 9}
    # every need run out (scores -log(1 + age), median negative): recency still keeps the newest
    policy, state = _dynts_with_scores(tmp_path / "c", [0.0] * T, target="lifetime", recency="2")
    assert kept(policy, view(state=state)) == PROMPT | RECENT | {8, 9}


def test_a_lifetime_predictor_that_cannot_give_tokens_back_is_refused(tmp_path) -> None:
    ImportancePredictor(PredictorConfig("m", 4, [1], label_transform="power", target="lifetime")).save(tmp_path / "a")
    with pytest.raises(PolicyError, match="--transform log1p"):
        ImportancePredictor.load(tmp_path / "a")
    ImportancePredictor(PredictorConfig("m", 4, [1], target="age")).save(tmp_path / "b")
    with pytest.raises(PolicyError, match="target 'age' is unknown"):
        ImportancePredictor.load(tmp_path / "b")


PER_BUDGET = {"pool_next": 1, "recency": 4.0,
              "by_budget": {"100": {"pool_next": 0, "recency": 0.0}, "400": {"pool_next": 0, "recency": 2.0}}}


@pytest.mark.parametrize("budget,options", [
    (100, (0, 0.0)), (400, (0, 2.0)),  # a chosen budget: its own entry
    (150, (0, 0.0)), (240, (0, 2.0)),  # between: the nearer by ratio (240 is nearer 100 by difference, 400 by ratio)
    (200, (0, 0.0)),  # the geometric midpoint of 100 and 400: a tie, to the smaller budget
    (40, (0, 0.0)), (4000, (0, 2.0)),  # outside: the nearest end
    (None, (1, 4.0)),  # a run without a budget (paper mode): the single setting
])
def test_dynts_looks_its_options_up_by_the_runs_budget(tmp_path, budget, options) -> None:
    policy, _ = _dynts_with_scores(tmp_path, NAME_VALUE, PER_BUDGET)
    assert policy.selection(budget) == options


def test_an_option_given_overrides_the_stored_table_at_every_budget(tmp_path) -> None:
    _dynts_with_scores(tmp_path, NAME_VALUE, PER_BUDGET)
    policy = build_policy("dynts", predictor=str(tmp_path), recency="8")
    assert [policy.selection(b) for b in (100, 400, None)] == [(0, 8.0), (0, 8.0), (1, 8.0)]


def test_a_single_stored_setting_serves_every_budget(tmp_path) -> None:
    policy, state = _dynts_with_scores(tmp_path, NAME_VALUE, {"pool_next": 1, "recency": 2.0})
    assert {policy.selection(b) for b in (None, 64, 160, 256, 10_000)} == {(1, 2.0)}
    with_budget, without = view(state=state), view(state=state)
    with_budget.budgets = (160,)
    assert torch.equal(policy.score(with_budget), policy.score(without))


def test_each_row_of_a_compression_ranks_with_its_own_budgets_options(tmp_path) -> None:
    """Row 0 at budget 100 (paper ranking: the two highest scores, slots 5 and 8), row 1 at budget 400 (recency
    2 on equal scores: the newest, 8 and 9) -- the kept sets written from the options' definitions."""
    policy, _ = _dynts_with_scores(tmp_path, NAME_VALUE, PER_BUDGET)
    assert kept_per_row(policy, [NAME_VALUE, [1.0] * T], (100, 400)) == [PROMPT | RECENT | {5, 8},
                                                                          PROMPT | RECENT | {8, 9}]


def kept_per_row(policy: Policy, rows: list[list[float]], budgets: tuple[int, ...]) -> list[set[int]]:
    """The slots ``policy`` keeps of each row of a compression: ``view``'s cache once per row, each row with its
    own head scores and budget."""
    one, b = view(), len(rows)
    cache = CacheView(valid=one.valid.expand(b, T), positions=one.positions.expand(b, T),
                      token_ids=one.token_ids.expand(b, T), is_prompt=one.is_prompt.expand(b, T), keys=[],
                      state={SCORE: torch.tensor(rows)}, budgets=budgets)
    chosen, valid = policy.select(policy.score(cache), cache, torch.tensor([KEEP] * b), WINDOW, True)
    return [set(chosen[r][valid[r]].tolist()) for r in range(b)]


def test_a_lifetime_head_ranks_each_row_with_its_budgets_options_on_its_own_recency_scale(tmp_path) -> None:
    """``test_dynts_recency_on_a_lifetime_head_makes_age_weigh_more``'s cache in two rows: at budget 100 (recency
    0) slot 3 (lifetime 11, age 8) stays beside slot 9; at budget 400 (recency 2, scale log(1 + span 11)) the
    newest, 8 and 9. On the median score's scale (negative for these scores) recency would favour old tokens."""
    lifetimes = [0.0] * T
    lifetimes[3] = 11.0
    policy, _ = _dynts_with_scores(tmp_path, lifetimes, PER_BUDGET, target="lifetime")
    assert kept_per_row(policy, [lifetimes, lifetimes], (100, 400)) == [PROMPT | RECENT | {3, 9},
                                                                         PROMPT | RECENT | {8, 9}]


def test_a_lifetime_head_with_one_stored_setting_scores_alike_at_any_budget(tmp_path) -> None:
    """The shipped program head's case (one setting, pool_next 0, recency 0.5): with or without a budget each slot
    s scores log(1 + lifetime) - log(1 + age 11 - s) + 0.5 x log(1 + 11) x s / 11."""
    policy, state = _dynts_with_scores(tmp_path, LIFETIMES, {"pool_next": 0, "recency": 0.5}, target="lifetime")
    s = torch.arange(T, dtype=torch.float32)
    expected = torch.tensor(LIFETIMES).log1p() - (11 - s).log1p() + 0.5 * math.log(12) * s / 11
    for budgets in (None, (104,), (80,)):
        cache = view(state=state)
        cache.budgets = budgets
        assert torch.allclose(policy.score(cache)[0], expected, atol=1e-6), budgets


@pytest.mark.parametrize("table", [5, [160], {"x": {"pool_next": 0}}, {"0": {"pool_next": 0}}, {"160": 3},
                                   {"160": {"pool_next": "a"}}])
def test_a_malformed_budget_table_is_refused_when_dynts_is_prepared(tmp_path, table) -> None:
    head = ImportancePredictor(PredictorConfig("m", hidden_size=4, layer_sizes=[1],
                                               selection={"pool_next": 0, "by_budget": table}))
    head.save(tmp_path)
    policy = build_policy("dynts", predictor=str(tmp_path))
    with pytest.raises(PolicyError, match="select-ranking"):
        policy.prepare(ModelInfo("m", "m", 4, 1, lambda: []))


def test_recent_window_is_the_last_valid_slots_of_each_left_padded_row() -> None:
    valid = torch.tensor([[False, False, True, True, True, True, True],  # left padding
                          [True, True, True, True, True, True, True],
                          [False, False, False, False, False, True, True]])  # fewer valid slots than the window
    got = CacheView(valid=valid, positions=torch.zeros(3, 7, dtype=torch.long),
                    token_ids=torch.zeros(3, 7, dtype=torch.long), is_prompt=torch.zeros_like(valid),
                    keys=[]).recent_window(3)
    assert got.tolist() == [[False, False, False, False, True, True, True],
                            [False, False, False, False, True, True, True],
                            [False, False, False, False, False, True, True]]
    # and, on random left-padded rows, the valid slots with at most `window` valid slots from them to the end
    lengths = torch.randint(0, 41, (64,), generator=torch.Generator().manual_seed(0))
    valid = torch.arange(40)[None, :] >= 40 - lengths[:, None]
    view = CacheView(valid=valid, positions=torch.zeros(64, 40, dtype=torch.long),
                     token_ids=torch.zeros(64, 40, dtype=torch.long), is_prompt=torch.zeros_like(valid), keys=[])
    for window in (0, 1, 7, 40, 50):
        from_the_end = valid.flip(-1).long().cumsum(-1).flip(-1)
        assert torch.equal(view.recent_window(window), valid & (from_the_end <= window))
