"""Scoring keys where they lie (the transformers backend's ``OrderedKeys.over_keys``) gives the numbers of scoring
them copied into generation order, one layer at a time (the paged engines' path): to the bit where each slot's
value comes from its own key, to float rounding where a sum over the sequence's keys enters (KeyDiff's anchor).

The per-layer path is the reference: a plain list of per-layer tensors makes every policy take it, and TOVA's
per-layer formula is also written out here independently.
"""

from __future__ import annotations

import pytest
import torch

from backends.hf.cache import LayerStack, OrderedKeys
from zoo import build_policy
from zoo.base import CacheView

LAYERS, BATCH, HEADS, KV_HEADS, CAPACITY, DIM = 3, 4, 8, 2, 40, 16


def _views(seed: int = 0) -> tuple[CacheView, CacheView]:
    """The same cache seen stacked (as the backend builds it) and per layer (plain lists)."""
    gen = torch.Generator().manual_seed(seed)
    kv = torch.randn(LAYERS, 2, BATCH + 2, KV_HEADS, CAPACITY, DIM, generator=gen)
    fired = [0, 2, 3, 5]  # a subset of the batch, as when some rows' schedules fire
    order = torch.stack([torch.randperm(CAPACITY, generator=gen) for _ in fired])  # each row's own slot order
    lengths = torch.tensor([40, 31, 25, 38])
    valid = torch.arange(CAPACITY)[None, :] >= (CAPACITY - lengths)[:, None]  # left-padded rows
    queries = torch.randn(LAYERS, BATCH, HEADS, 1, DIM, generator=gen)
    query_valid = torch.tensor([[True], [True], [False], [True]])  # a row without a real query
    common = dict(valid=valid, positions=torch.arange(CAPACITY).expand(BATCH, -1).masked_fill(~valid, -1),
                  token_ids=torch.zeros(BATCH, CAPACITY, dtype=torch.long), is_prompt=torch.zeros_like(valid),
                  query_valid=query_valid)
    ordered = OrderedKeys(kv, fired, torch.tensor(fired), order)
    in_place = CacheView(keys=ordered, queries=LayerStack(queries), **common)
    per_layer = CacheView(keys=[ordered[i] for i in range(LAYERS)], queries=list(queries), **common)
    return in_place, per_layer


@pytest.mark.parametrize("name", ["knorm", "curdkv", "tova", "observed"])
def test_scores_in_place_equal_per_layer_scores_to_the_bit(name):
    in_place, per_layer = _views()
    policy = build_policy(name)
    assert torch.equal(policy.score(in_place), policy.score(per_layer))


def test_keydiff_in_place_equals_per_layer_to_float_rounding():
    in_place, per_layer = _views()
    policy = build_policy("keydiff")
    torch.testing.assert_close(policy.score(in_place), policy.score(per_layer), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("together, calls", [
    (False, [[0], [1, 2], [3]]),  # batch entries 0 | 2, 3 | 5: one call per run of neighbours
    (True, [[0, 1, 2, 3]]),  # one call in all
], ids=["per-run", "together"])
def test_over_keys_calls_once_per_run_of_consecutive_rows_or_once_together_in_generation_order(together, calls):
    in_place, _ = _views()
    seen = []

    def first_coordinate(keys, valid, rows):
        seen.append(rows)
        return keys[..., 0] * valid[None, :, None, :]  # [L, R, KVH, T]

    got = in_place.keys.over_keys(first_coordinate, in_place.valid, together)  # type: ignore[union-attr]
    assert seen == calls
    expected = torch.stack([in_place.keys[layer][..., 0] for layer in range(LAYERS)])
    assert torch.equal(got, expected * in_place.valid[None, :, None, :])


def test_tova_is_the_newest_querys_attention_averaged_over_heads_and_layers():
    stacked, _ = _views()
    keys = torch.stack([stacked.keys[layer] for layer in range(LAYERS)])
    queries = stacked.queries.stacked()  # type: ignore[union-attr]
    group = HEADS // KV_HEADS
    per_layer = []
    for layer in range(LAYERS):
        k = keys[layer].repeat_interleave(group, dim=1)  # [B, H, T, D]
        logits = (queries[layer][:, :, -1:] @ k.transpose(-1, -2))[:, :, 0] / DIM**0.5  # [B, H, T]
        mask = stacked.valid & stacked.query_valid  # type: ignore[operator]
        probs = torch.softmax(logits.masked_fill(~mask[:, None], float("-inf")), dim=-1).nan_to_num(0.0)
        per_layer.append(probs.mean(1))
    got = build_policy("tova").score(stacked)
    torch.testing.assert_close(got, torch.stack(per_layer).mean(0))
    assert torch.all(got[2] == 0)  # the row without a real query gives no attention
    assert torch.allclose(got[[0, 1, 3]].sum(-1), torch.ones(3))
