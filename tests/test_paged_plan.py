"""Compaction plans over paged KV blocks (``backends.paged``), checked against independent expectations:
the transformers backend's own ``CompactingCache.compact`` on the same kept set, and caches where every slot
holds its own id (non-contiguous block tables, overlapping moves, several requests, one left untouched)."""

from __future__ import annotations

import pytest
import torch

from backends.hf.cache import CompactingCache
from backends.paged import PlanError, apply_moves, gather_tokens, merge_plans, plan_compaction

HEADS, DIM, BS = 2, 4, 8


def row_major(offsets: torch.Tensor) -> torch.Tensor:
    """A plain ``[block, token, 2 * dim]`` layout: token ``o`` owns elements ``[o * 2D, (o + 1) * 2D)``."""
    return offsets[:, None] * 2 * DIM + torch.arange(2 * DIM)[None, :]


def token_values(ids: torch.Tensor) -> torch.Tensor:
    """``[n, heads, 2 * dim]`` values unique to each token id (and head, and element)."""
    return (ids[:, None, None] * 1000 + torch.arange(HEADS)[None, :, None] * 100
            + torch.arange(2 * DIM)[None, None, :]).float()


def paged_cache(num_blocks: int, tables: dict[str, list[int]], lengths: dict[str, int]) -> torch.Tensor:
    """A slab ``[num_blocks, heads, BS * 2D]`` where request r's token t holds ``token_values(id(r, t))``."""
    slab = torch.full((num_blocks, HEADS, BS * 2 * DIM), -1.0)
    for n, (rid, table) in enumerate(tables.items()):
        t = torch.arange(lengths[rid])
        blocks = torch.tensor(table)[t // BS]
        values = token_values(t + 10_000 * n)  # [T, H, 2D]
        slab[blocks[:, None], :, row_major(t % BS)] = values.transpose(1, 2)
    return slab


def read(slab: torch.Tensor, table: list[int], length: int) -> torch.Tensor:
    t = torch.arange(length)
    return gather_tokens(slab, torch.tensor(table)[t // BS], t % BS, row_major)  # [T, H, 2D]


def test_plan_matches_transformers_compacting_cache():
    """Kept set -> paged moves gives the same surviving keys, in the same order, as the transformers cache."""
    torch.manual_seed(0)
    length = 37
    table = [9, 2, 14, 5, 11]  # non-contiguous, out of order
    kept = torch.tensor(sorted(torch.randperm(length)[:19].tolist()))
    slab = paged_cache(16, {"r": table}, {"r": length})
    # the transformers backend's cache, holding the same tokens in its [B, H, T, D] buffer
    hf = CompactingCache(num_layers=1, capacity=length)
    ids = torch.arange(length)
    keys = token_values(ids)[:, :, :DIM].permute(1, 0, 2).unsqueeze(0)  # [1, H, T, D]
    values = token_values(ids)[:, :, DIM:].permute(1, 0, 2).unsqueeze(0)
    hf.append(ids.unsqueeze(0), ids.unsqueeze(0), torch.ones(1, length, dtype=torch.bool), is_prompt=False)
    hf.layers[0].update(keys, values)
    hf.advance(length)
    hf.compact(kept.unsqueeze(0), torch.ones(1, kept.numel(), dtype=torch.bool))

    plan = plan_compaction("r", table, length, kept, BS, positions=ids)
    apply_moves(slab, merge_plans([plan]), row_major)
    got = read(slab, plan.kept_blocks, plan.new_length)  # [K, H, 2D]
    order = hf.generation_order(torch.tensor([0]))[0]  # the cache's slots in generation order, empty ones first
    slots = order[hf.valid[0, order]]
    assert torch.equal(got[:, :, :DIM], hf.layers[0].keys[0][:, slots].permute(1, 0, 2))
    assert torch.equal(got[:, :, DIM:], hf.layers[0].values[0][:, slots].permute(1, 0, 2))
    assert torch.equal(plan.kept_positions, hf.positions[0, slots])
    assert plan.new_length == slots.numel() == 19
    assert plan.kept_blocks == table[:3] and plan.freed_blocks == table[3:]  # ceil(19 / 8) = 3 blocks stay


def test_every_slot_holds_its_own_id_several_requests_overlapping_moves():
    tables = {"a": [7, 3, 12], "b": [0, 15, 4, 9], "idle": [1, 6]}
    lengths = {"a": 20, "b": 29, "idle": 11}
    slab = paged_cache(16, tables, lengths)
    before = slab.clone()
    # "a": slot 8 (block 3) moves onto slot 2 of block 7 while slot 2's token moves out -> overlapping
    kept = {"a": torch.tensor([0, 1, 8, 9, 10, 17, 18, 19]), "b": torch.tensor([3, 4, 5, 6, 7, 8, 9, 10, 28])}
    plans = [plan_compaction(r, tables[r], lengths[r], kept[r], BS) for r in kept]
    apply_moves(slab, merge_plans(plans), row_major)
    for n, rid in enumerate(tables):
        if rid == "idle":
            continue
        plan = next(p for p in plans if p.request_id == rid)
        expected = token_values(kept[rid] + 10_000 * n)
        assert torch.equal(read(slab, plan.kept_blocks, plan.new_length), expected)
    # the request that was not due is byte-identical, and so is every block nobody compacted
    untouched = [1, 6, 2, 5, 8, 10, 11, 13, 14]
    assert torch.equal(slab[untouched], before[untouched])
    a, b = plans
    assert a.kept_blocks == [7] and a.freed_blocks == [3, 12]
    assert b.kept_blocks == [0, 15] and b.freed_blocks == [4, 9]
    assert a.num_moves == 6  # slots 0 and 1 stay where they are


def test_nothing_moves_when_the_kept_set_is_a_prefix():
    plan = plan_compaction("r", [4, 2], 13, torch.arange(9), BS)
    assert plan.num_moves == 0 and plan.kept_blocks == [4, 2] and plan.freed_blocks == []
    plan = plan_compaction("r", [4, 2], 13, torch.arange(8), BS)
    assert plan.num_moves == 0 and plan.kept_blocks == [4] and plan.freed_blocks == [2]


def test_token_slots_are_blocks_of_size_one():
    """SGLang-style token pools: every token its own slot, freed slots are the dropped tokens' own."""
    slab = torch.arange(6 * HEADS * 2, dtype=torch.float).view(6, HEADS, 2)
    table = [5, 0, 3, 1, 4]
    plan = plan_compaction("r", table, 5, torch.tensor([1, 3, 4]), 1)
    before = slab.clone()
    apply_moves(slab, merge_plans([plan]), lambda o: torch.zeros(o.numel(), 2, dtype=torch.long) + torch.arange(2))
    assert torch.equal(slab[[5, 0, 3]], before[[0, 1, 4]])
    assert plan.freed_blocks == [1, 4]


@pytest.mark.parametrize("kept", [[3, 2], [0, 0], [-1], [20]])
def test_bad_kept_sets_are_refused(kept):
    with pytest.raises(PlanError):
        plan_compaction("r", [0, 1], 16, torch.tensor(kept), BS)


def test_requests_sharing_a_block_are_refused():
    a = plan_compaction("a", [0, 1], 16, torch.arange(4), BS)
    b = plan_compaction("b", [1, 2], 16, torch.arange(4), BS)
    with pytest.raises(PlanError, match="shares KV blocks"):
        merge_plans([a, b])
