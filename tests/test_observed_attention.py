"""The registered attention (``backends.hf.observe``): a masked CPU decode step of grouped-query attention with few
work items runs one item per query head, and gives what transformers' own SDPA attention and a plain softmax give."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from backends.hf.observe import SPREAD_BYTES, per_query_head_sdpa, spreads_query_heads

HEADS, KV_HEADS, DIM, SPAN = 9, 3, 16, 40
MODULE = SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, scaling=DIM**-0.5, is_causal=True, layer_idx=0)


def _step(batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, HEADS, 1, DIM, generator=gen)
    key, value = (torch.randn(batch, KV_HEADS, SPAN, DIM, generator=gen) for _ in range(2))
    live = torch.rand(batch, SPAN, generator=gen) < 0.7
    live[:, -1] = True  # the new token
    mask = torch.zeros(batch, 1, 1, SPAN).masked_fill(~live[:, None, None, :], float("-inf"))
    return query, key, value, mask, live


@pytest.mark.parametrize("batch", [1, 3])
def test_per_query_head_attention_equals_transformers_and_a_plain_softmax(batch):
    query, key, value, mask, live = _step(batch)
    ours, _ = per_query_head_sdpa(query, key, value, mask, MODULE.scaling)
    theirs, _ = sdpa_attention_forward(MODULE, query, key, value, mask, scaling=MODULE.scaling)
    # reference: every query head attends to its KV head's live slots
    k = key.repeat_interleave(MODULE.num_key_value_groups, dim=1)
    v = value.repeat_interleave(MODULE.num_key_value_groups, dim=1)
    logits = (query @ k.transpose(-1, -2)) * MODULE.scaling
    weights = logits.masked_fill(~live[:, None, None, :], float("-inf")).softmax(-1)
    reference = (weights @ v).transpose(1, 2)  # [B, 1, heads, D]
    assert ours.shape == theirs.shape == (batch, 1, HEADS, DIM)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_query_heads_are_spread_only_for_a_masked_cpu_decode_step_with_fewer_items_than_twice_the_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        query, key, _, mask, _ = _step(1)
        assert spreads_query_heads(MODULE, query, key, mask, {})  # 1 x 3 packed items < 4
        two = _step(2)
        assert not spreads_query_heads(MODULE, two[0], two[1], two[3], {})  # 2 x 3 >= 4
        assert not spreads_query_heads(MODULE, query, key, None, {})  # no mask: transformers already spreads them
        assert not spreads_query_heads(MODULE, torch.randn(1, HEADS, 2, DIM), key, mask, {})  # a prompt
        assert not spreads_query_heads(SimpleNamespace(num_key_value_groups=1), query, key, mask, {})  # no grouping
        assert not spreads_query_heads(MODULE, query, key, mask, {"dropout": 0.1})
        # a KV head's keys and values just over SPREAD_BYTES: read once, packed
        long_key = torch.zeros(1, KV_HEADS, SPREAD_BYTES // (2 * DIM * 4) + 1, DIM)
        assert not spreads_query_heads(MODULE, query, long_key, mask, {})
        assert spreads_query_heads(MODULE, query, long_key[:, :, :-1], mask, {})
    finally:
        torch.set_num_threads(threads)
