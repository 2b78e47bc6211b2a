"""The cache's compaction: kept tokens keep their keys, values, metadata and slots (nothing moves), each sequence
writes its next tokens into the slots its evictions freed (lowest first) without touching a live one, and every
live token lies below the slots advanced so far (the span a step attends over).

The expectation is built from token identities: every key and value vector holds its token's logical position, so
what survives, and where, is read back from the buffer itself.
"""

from __future__ import annotations

import torch

from backends.hf.cache import CompactingCache
from zoo.base import StepObservation

LAYERS, HEADS, DIM, CAPACITY = 2, 2, 4, 24


def _filled(batch: int, steps: int, seed: int = 0, capacity: int = CAPACITY,
            prompt_lens: list[int] | None = None) -> CompactingCache:
    """A cache whose rows have reused their slots: each row holds ``steps`` decode tokens after its prompt (6
    tokens, or ``prompt_lens``, left-padded); key and value vectors hold (layer, position) so that each slot's
    identity can be checked. A row full to ``CAPACITY`` keeps a random half of its older tokens and its newest 4."""
    cache = CompactingCache(LAYERS, capacity, ("s",))
    lens = prompt_lens or [6] * batch
    width = max(lens)
    valid = torch.tensor([[i >= width - n for i in range(width)] for n in lens])
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    _write(cache, positions, positions, prompt=True, valid=valid)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        full = (cache.live_counts() == CAPACITY).nonzero().squeeze(1)
        if full.numel():
            _compact_random(cache, gen, keep=14, rows=full)
        pos = torch.tensor(lens)[:, None] + step
        _write(cache, pos, pos, prompt=False)
    return cache


def _write(cache: CompactingCache, ids: torch.Tensor, positions: torch.Tensor, prompt: bool,
           valid: torch.Tensor | None = None) -> StepObservation:
    b, q = ids.shape
    valid = torch.ones(b, q, dtype=torch.bool) if valid is None else valid
    where = cache.append(ids, positions, valid, prompt)
    for layer in range(LAYERS):
        value = positions[:, None, :, None].float().expand(b, HEADS, q, DIM) + 1000 * layer
        cache.layers[layer].update(value, -value)
    obs = StepObservation(ids, where.start, is_prefill=prompt, slots=where.per_row)
    obs.write(cache.state["s"], positions.float() * 10)
    cache.advance(q)
    return obs


def _compact_random(cache: CompactingCache, gen: torch.Generator, keep: int,
                    rows: torch.Tensor | None = None) -> list[list[int]]:
    """Keep, per row of ``rows`` (default: all), a random ``keep - 4`` of its older tokens and its newest 4;
    returns the kept positions."""
    rows = torch.arange(cache.valid.shape[0]) if rows is None else rows
    order = cache.generation_order(rows)
    kept, kept_positions = [], []
    for i, b in enumerate(rows.tolist()):
        live = cache.valid[b, order[i]].nonzero().squeeze(1)
        older = live[:-4][torch.randperm(live.numel() - 4, generator=gen)[: keep - 4]].sort().values
        chosen = torch.cat([older, live[-4:]])
        kept.append(chosen)
        kept_positions.append(cache.positions[b, order[i, chosen]].tolist())
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


def _slots(cache: CompactingCache, b: int) -> dict[int, int]:
    """position -> slot of every live token of row ``b``."""
    return {int(cache.positions[b, s]): s for s in cache.valid[b].nonzero().squeeze(1).tolist()}


def test_kept_tokens_keep_their_keys_values_and_metadata():
    cache = _filled(batch=3, steps=40)
    kept = _compact_random(cache, torch.Generator().manual_seed(5), keep=14)
    for b in range(3):
        got = _contents(cache, b)
        assert sorted(got) == sorted(kept[b])
        for pos, (k0, k1, v1, state) in got.items():
            assert (k0, k1, v1, state) == (pos, pos + 1000, -(pos + 1000), pos * 10)


def test_compaction_moves_no_token_and_empties_every_other_slot():
    cache = _filled(batch=2, steps=40)
    before = [_slots(cache, b) for b in range(2)]
    kept = _compact_random(cache, torch.Generator().manual_seed(2), keep=14)
    for b in range(2):
        assert _slots(cache, b) == {p: before[b][p] for p in kept[b]}
        empty = ~cache.valid[b]
        assert int(empty.sum()) == CAPACITY - 14
        assert (cache.positions[b][empty] == -1).all() and (cache.token_ids[b][empty] == 0).all()
        assert not cache.is_prompt[b][empty].any() and (cache.scores[0, b][empty] == 0).all()  # type: ignore[index]


def test_the_next_writes_fill_the_freed_slots_lowest_first_and_overwrite_nothing_live():
    cache = _filled(batch=2, steps=40)
    _compact_random(cache, torch.Generator().manual_seed(1), keep=14)
    freed = [(~cache.valid[b]).nonzero().squeeze(1).tolist() for b in range(2)]
    before = [_contents(cache, b) for b in range(2)]
    for step in range(CAPACITY - 14):
        pos = torch.full((2, 1), 100 + step)
        obs = _write(cache, pos, pos, prompt=False)
        assert obs.slots is not None
        assert obs.slots[:, 0].tolist() == [freed[0][step], freed[1][step]]
    for b in range(2):
        after = _contents(cache, b)
        assert {p: after[p] for p in before[b]} == before[b]
        assert len(after) == CAPACITY


def test_rows_not_compacted_are_untouched():
    cache = _filled(batch=3, steps=30)
    untouched = (cache.kv[:, :, 1].clone(), cache.flags[:, 1].clone(), cache.ids[:, 1].clone())  # type: ignore[index]
    cursor = cache.cursor[1].clone()  # type: ignore[index]
    rows = torch.tensor([0, 2])
    order = cache.generation_order(rows)
    live = [cache.valid[b, order[i]].nonzero().squeeze(1) for i, b in enumerate(rows.tolist())]
    kept = torch.stack([torch.cat([x[:6], x[-6:]]) for x in live])
    cache.compact_rows(rows, order, kept, torch.ones(2, 12, dtype=torch.bool))
    assert torch.equal(cache.kv[:, :, 1], untouched[0])  # type: ignore[index]
    assert torch.equal(cache.flags[:, 1], untouched[1]) and torch.equal(cache.ids[:, 1], untouched[2])  # type: ignore[index]
    assert torch.equal(cache.cursor[1], cursor)  # type: ignore[index]


def test_a_row_keeping_fewer_tokens_has_more_free_slots():
    cache = _filled(batch=2, steps=40)
    rows = torch.arange(2)
    order = cache.generation_order(rows)
    live = [cache.valid[b, order[b]].nonzero().squeeze(1) for b in range(2)]
    kept = torch.stack([live[0][-14:], torch.cat([live[1][:1].expand(4), live[1][-10:]])])  # row 1: 4 padding
    kept_valid = torch.ones(2, 14, dtype=torch.bool)
    kept_valid[1, :4] = False
    cache.compact_rows(rows, order, kept, kept_valid)
    assert cache.live_counts().tolist() == [14, 10]
    before = [_contents(cache, b) for b in range(2)]
    for step in range(CAPACITY - 14):  # row 0 fills up; row 1 has 4 slots to spare
        pos = torch.full((2, 1), 100 + step)
        _write(cache, pos, pos, prompt=False)
    assert cache.live_counts().tolist() == [CAPACITY, CAPACITY - 4]
    for b in range(2):
        after = _contents(cache, b)
        assert {p: after[p] for p in before[b]} == before[b]


def test_a_shorter_prompt_writes_into_its_padding_before_its_schedule_fires():
    """Rows are left-padded to the longest prompt: a shorter one's padding slots are free, so it fills the buffer
    (live tokens == capacity) without writing past it or over a live token."""
    cache = _filled(batch=3, steps=CAPACITY - 6, prompt_lens=[6, 2, 4])
    assert cache.live_counts().tolist() == [CAPACITY, CAPACITY - 4, CAPACITY - 2]
    cache = _filled(batch=3, steps=CAPACITY - 2, prompt_lens=[2, 6, 4], seed=3)  # row 1 compacts, row 0 fills
    for b, n in enumerate([2, 6, 4]):
        assert sorted(_contents(cache, b))[-4:] == list(range(n + CAPACITY - 6, n + CAPACITY - 2))


def test_every_live_token_lies_below_the_slots_advanced_so_far():
    """The step attends over ``[0, written)`` until it reaches the capacity (``span``): a sequence's writes after
    a compaction go to its freed slots before any never-written one."""
    cache = CompactingCache(LAYERS, 64, ("s",))
    width, lens = 8, [8, 3, 6]
    valid = torch.tensor([[i >= width - n for i in range(width)] for n in lens])
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    _write(cache, positions, positions, prompt=True, valid=valid)
    gen = torch.Generator().manual_seed(7)
    checked = 0
    while cache.written < 64:
        full = (cache.live_counts() == CAPACITY).nonzero().squeeze(1)
        if full.numel():
            _compact_random(cache, gen, keep=14, rows=full)
        step = cache.written - width
        pos = torch.tensor(lens)[:, None] + step
        _write(cache, pos, pos, prompt=False)
        assert not cache.valid[:, cache.written :].any()
        checked += 1
    assert checked == 64 - width and int(cache.written) == 64


def test_shrink_keeps_every_live_token_and_the_next_writes_fill_the_rest():
    cache = _filled(batch=3, steps=40, capacity=CAPACITY, prompt_lens=[6, 2, 4])
    _compact_random(cache, torch.Generator().manual_seed(4), keep=14)
    before = [_contents(cache, b) for b in range(3)]
    cache.shrink(16)
    assert cache.capacity == 16 and cache.kv.shape[4] == 16  # type: ignore[union-attr]
    assert [_contents(cache, b) for b in range(3)] == before
    for step in range(2):
        pos = torch.full((3, 1), 200 + step)
        _write(cache, pos, pos, prompt=False)
    for b in range(3):
        after = _contents(cache, b)
        assert {p: after[p] for p in before[b]} == before[b] and len(after) == 16


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
    assert live[0, :7].all() and live[1, :1].all() and not live[1, 1:2].any()  # row 1's token took a padding slot
    assert torch.equal(mask[:, 0, 0][live], torch.zeros(int(live.sum()), dtype=torch.bfloat16))
    assert torch.isneginf(mask[:, 0, 0][~live]).all()
