"""The ring cache's compaction: kept tokens keep their keys, values and metadata, land in the slots the next
writes will not touch, and only the kept tokens outside those slots move (at most one per evicted token).

The expectation is built from token identities: every key and value vector holds its token's logical position, so
what survives, and where, is read back from the buffer itself.
"""

from __future__ import annotations

import torch

from backends.hf.cache import CompactingCache

LAYERS, HEADS, DIM, CAPACITY = 2, 2, 4, 24


def _filled(batch: int, steps: int, seed: int = 0) -> CompactingCache:
    """A cache whose ring has wrapped: each row holds ``steps`` decode tokens after a 6-token prompt; key and value
    vectors hold (layer, position) so that each slot's identity can be checked."""
    cache = CompactingCache(LAYERS, CAPACITY, ("s",))
    prompt = torch.arange(6).expand(batch, -1)
    _write(cache, prompt, prompt, prompt=True)
    gen = torch.Generator().manual_seed(seed)
    live = 6
    for step in range(6, 6 + steps):
        if live == CAPACITY:  # every row full: keep a random half of the older tokens and the newest 4
            _compact_random(cache, gen, keep=14)
            live = 14
        pos = torch.full((batch, 1), step)
        _write(cache, pos, pos, prompt=False)
        live += 1
    return cache


def _write(cache: CompactingCache, ids: torch.Tensor, positions: torch.Tensor, prompt: bool) -> None:
    b, q = ids.shape
    cache.append(ids, positions, torch.ones(b, q, dtype=torch.bool), prompt)
    for layer in range(LAYERS):
        value = positions[:, None, :, None].float().expand(b, HEADS, q, DIM) + 1000 * layer
        cache.layers[layer].update(value, -value)
    cache.scores[0, :, cache.write_slot : cache.write_slot + q] = positions.float() * 10  # type: ignore[index]
    cache.advance(q)


def _compact_random(cache: CompactingCache, gen: torch.Generator, keep: int) -> list[list[int]]:
    """Keep, per row, a random ``keep - 4`` of its older tokens and its newest 4; returns the kept positions."""
    rows = torch.arange(cache.valid.shape[0])
    order = cache.generation_order(rows)
    kept, kept_positions = [], []
    for b in range(rows.numel()):
        live = cache.valid[b, order[b]].nonzero().squeeze(1)
        older = live[:-4][torch.randperm(live.numel() - 4, generator=gen)[: keep - 4]].sort().values
        chosen = torch.cat([older, live[-4:]])
        kept.append(chosen)
        kept_positions.append(cache.positions[b, order[b, chosen]].tolist())
    cache.compact_rows(rows, order, torch.stack(kept), torch.ones(rows.numel(), keep, dtype=torch.bool))
    return kept_positions


def _contents(cache: CompactingCache, b: int) -> dict[int, tuple[float, float, float, float]]:
    """position -> (layer-0 key, layer-1 key, layer-1 value, state) of every live slot of row ``b``."""
    out = {}
    for slot in cache.valid[b].nonzero().squeeze(1).tolist():
        pos = int(cache.positions[b, slot])
        out[pos] = (float(cache.layers[0].keys[b, 0, slot, 0]), float(cache.layers[1].keys[b, 1, slot, 3]),
                    float(cache.layers[1].values[b, 0, slot, 2]), float(cache.scores[0, b, slot]))  # type: ignore[index]
    return out


def test_kept_tokens_keep_their_keys_values_and_metadata():
    cache = _filled(batch=3, steps=40)
    kept = _compact_random(cache, torch.Generator().manual_seed(5), keep=14)
    for b in range(3):
        got = _contents(cache, b)
        assert sorted(got) == sorted(kept[b])
        for pos, (k0, k1, v1, state) in got.items():
            assert (k0, k1, v1, state) == (pos, pos + 1000, -(pos + 1000), pos * 10)


def test_kept_tokens_end_in_the_last_keep_slots_of_the_ring_so_the_next_writes_are_free():
    cache = _filled(batch=2, steps=40)
    _compact_random(cache, torch.Generator().manual_seed(1), keep=14)
    ring = cache.ring_order()
    for b in range(2):
        assert cache.valid[b, ring[-14:]].all() and not cache.valid[b, ring[:-14]].any()
    # the next 10 writes (up to capacity) overwrite nothing live
    before = [_contents(cache, b) for b in range(2)]
    for step in range(100, 110):
        pos = torch.full((2, 1), step)
        _write(cache, pos, pos, prompt=False)
    for b in range(2):
        after = _contents(cache, b)
        assert {p: after[p] for p in before[b]} == before[b]
        assert len(after) == 24


def test_only_kept_tokens_outside_their_slots_move_at_most_one_per_evicted_token():
    cache = _filled(batch=2, steps=40)
    positions_before = cache.positions.clone()
    _compact_random(cache, torch.Generator().manual_seed(2), keep=14)
    for b in range(2):
        still = (cache.positions[b] == positions_before[b]) & cache.valid[b]
        moved = int(cache.valid[b].sum() - still.sum())
        assert moved <= CAPACITY - 14  # 10 evicted


def test_rows_not_compacted_are_untouched():
    cache = _filled(batch=3, steps=30)
    untouched = (cache.kv[:, :, 1].clone(), cache.flags[:, 1].clone(), cache.ids[:, 1].clone())  # type: ignore[index]
    rows = torch.tensor([0, 2])
    order = cache.generation_order(rows)
    live = [cache.valid[b, order[i]].nonzero().squeeze(1) for i, b in enumerate(rows.tolist())]
    kept = torch.stack([torch.cat([x[:6], x[-6:]]) for x in live])
    cache.compact_rows(rows, order, kept, torch.ones(2, 12, dtype=torch.bool))
    assert torch.equal(cache.kv[:, :, 1], untouched[0])  # type: ignore[index]
    assert torch.equal(cache.flags[:, 1], untouched[1]) and torch.equal(cache.ids[:, 1], untouched[2])  # type: ignore[index]


def test_a_row_keeping_fewer_tokens_uses_its_own_last_slots():
    cache = _filled(batch=2, steps=40)
    rows = torch.arange(2)
    order = cache.generation_order(rows)
    live = [cache.valid[b, order[b]].nonzero().squeeze(1) for b in range(2)]
    kept = torch.stack([live[0][-14:], torch.cat([live[1][:1].expand(4), live[1][-10:]])])  # row 1: 4 padding
    kept_valid = torch.ones(2, 14, dtype=torch.bool)
    kept_valid[1, :4] = False
    cache.compact_rows(rows, order, kept, kept_valid)
    ring = cache.ring_order()
    assert cache.valid[1, ring[-10:]].all() and not cache.valid[1, ring[:-10]].any()
    assert int(cache.valid[0].sum()) == 14 and int(cache.valid[1].sum()) == 10


def test_a_decode_steps_mask_is_zero_on_live_slots_and_minus_infinity_elsewhere_in_the_caches_dtype():
    cache = CompactingCache(LAYERS, CAPACITY)
    prompt = torch.arange(6).expand(2, -1)
    cache.append(prompt, prompt, torch.tensor([[True] * 6, [False, False, True, True, True, True]]), True)
    for layer in range(LAYERS):
        cache.layers[layer].update(torch.ones(2, HEADS, 6, DIM, dtype=torch.bfloat16),
                                   torch.ones(2, HEADS, 6, DIM, dtype=torch.bfloat16))
    cache.advance(6)
    cache.append(torch.full((2, 1), 6), torch.full((2, 1), 6), torch.ones(2, 1, dtype=torch.bool), False)
    mask = cache.attention_mask(1)
    assert mask.dtype == torch.bfloat16 and mask.shape == (2, 1, 1, cache.span)
    live = cache.valid[:, : cache.span]
    assert live[0, :7].all() and not live[1, :2].any()  # the prompt's padding and the new token's slot
    assert torch.equal(mask[:, 0, 0][live], torch.zeros(int(live.sum()), dtype=torch.bfloat16))
    assert torch.isneginf(mask[:, 0, 0][~live]).all()
