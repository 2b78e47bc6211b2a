"""A KV cache with a fixed slot capacity, where each sequence writes into the slots its evictions freed.

Capacity is fixed per batch (budget + interval under a budget schedule, prompt + max_new_tokens for the full
cache), so the KV memory a run allocates is known exactly and really drops with the budget. Every layer's keys
and values live in one stacked buffer ``[layers, 2, B, KVH, capacity, D]``.

Every sequence writes one token a step, each to its own next free slot: ``free`` lists a sequence's free slots in
ascending order and ``cursor`` counts how many of them it has used since. The left-padded prompt fills the first
slots; a sequence's free list is then its padding and the slots after the prompt. When a sequence's schedule
fires, compaction only empties the slots of its evicted tokens, which become its free list: no token ever moves,
whatever the policy kept. A sequence's slots are therefore in no particular order; its generation order is by
logical position (``generation_order``). A sequence's free list holds the emptied slots (all below ``written``,
the slots advanced so far) before the never-written ones, and its writes since its compaction never outnumber the
slots advanced since, so every live token lies in ``[0, written)``: the step attends over that span (in steps of
``SPAN_STEP`` slots, the whole buffer once ``written`` reaches it) with a validity mask, so shapes stay fixed
between compactions and nothing in the step depends on a value only the device knows.

Per-slot metadata (validity, logical position, token id, prompt flag, policy state) lives here too, by slot.
Logical positions are what RoPE saw (keys are cached after RoPE). At selection time policies see a sequence's slots
in generation order; at observe time their state is indexed by physical slot (``StepObservation``: a decode step's
tokens are at each sequence's own slot).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

#: attention spans grow in steps of this many slots until the buffer has wrapped (fewer distinct shapes)
SPAN_STEP = 64


class CacheCapacityError(RuntimeError):
    """Writing past the preallocated capacity: a scheduling bug, never a user error."""


class WriteSlots(NamedTuple):
    """Where a forward's tokens went: a prompt's ``q`` tokens to slots ``[start, start + q)`` of every sequence
    (``per_row`` None), a decode step's token to each sequence's own slot, ``per_row`` ``[B, 1]`` (``start`` -1)."""

    start: int
    per_row: torch.Tensor | None


class CompactingLayer(CacheLayerMixin):
    """One layer's view ``[B, KVH, capacity, D]`` of its owner's stacked keys and values."""

    is_sliding = False
    is_croppable = False

    def __init__(self, owner: CompactingCache, index: int) -> None:
        super().__init__()
        # A weak reference: a strong one would make cache <-> layer a cycle, so a finished batch's buffers would
        # stay allocated until Python's cyclic collector happened to run (on a GPU: the next batch's peak memory).
        self._owner = weakref.ref(owner)
        self.index = index

    @property
    def owner(self) -> CompactingCache:
        owner = self._owner()
        if owner is None:
            raise RuntimeError("this cache layer outlived its CompactingCache")
        return owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.owner.allocate_kv(key_states)

    def bind(self, kv: torch.Tensor) -> None:
        """Point this layer at its slice of the owner's (re)allocated stacked buffer."""
        self.keys, self.values = kv[self.index, 0], kv[self.index, 1]
        self.dtype, self.device = kv.dtype, kv.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        owner = self.owner
        q = key_states.shape[-2]
        if q == 1:  # a decode step: each row's slot is on the device, so the step has one shape per span
            at = owner.slot_index
            self.keys.scatter_(2, at, key_states)
            self.values.scatter_(2, at, value_states)
        else:  # a prompt, into an empty cache (``append`` checked)
            self.keys[:, :, :q] = key_states
            self.values[:, :, :q] = value_states
        span = owner.span
        return self.keys[:, :, :span], self.values[:, :, :span]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.span, 0

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_max_length(self) -> int:
        return self.owner.capacity


class OrderedKeys(Sequence):
    """Per layer, the keys of some sequences with their slots in generation order, made on first access (only
    policies that read keys pay for the copy); ``over_keys`` computes from them where they lie instead."""

    def __init__(self, kv: torch.Tensor, fired: Sequence[int], rows: torch.Tensor, order: torch.Tensor) -> None:
        self._kv, self._fired, self._rows, self._order = kv, list(fired), rows, order  # order: [F, C]

    def __len__(self) -> int:
        return self._kv.shape[0]

    def __getitem__(self, layer):  # type: ignore[override]
        if isinstance(layer, slice):
            return [self[i] for i in range(*layer.indices(len(self)))]
        keys = self._kv[layer, 0].index_select(0, self._rows)  # [F, KVH, C, D]
        return keys.gather(2, self._order[:, None, :, None].expand_as(keys))

    def over_keys(self, fn: Callable[[torch.Tensor, torch.Tensor, list[int]], torch.Tensor],
                  valid: torch.Tensor, together: bool = False) -> torch.Tensor:
        """``[L, B, X, T]`` in generation order: ``fn(keys, valid, rows)`` (see ``zoo.base.over_keys``) run where
        the keys lie, in the cache's slot order, with ``valid`` ``[B, T]`` put in that order too; only the result
        is reordered. One call per run of consecutive batch entries among the sequences, on a view of the buffer
        (one call in all when every sequence's schedule fired at once); with ``together``, one call in all, the
        sequences' keys stacked first when they are not neighbours (for a ``fn`` of many operations, whose cost
        per call outweighs the copy)."""
        in_slots = torch.zeros_like(valid).scatter_(1, self._order, valid)  # slot order[f, t] holds t's flag
        runs = _runs(self._fired)
        if together and len(runs) > 1:
            # a stack of per-sequence views: index_select over a dimension of this strided view is far slower
            keys = torch.stack([self._kv[:, 0, f] for f in self._fired], dim=1)
            values = fn(keys, in_slots, list(range(len(self._fired))))
        else:
            parts = [fn(self._kv[:, 0, first : first + end - start], in_slots[start:end], list(range(start, end)))
                     for start, end, first in runs]  # [L, R, KVH, C, D] views
            values = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # [L, F, X, C]
        return values.gather(3, self._order[None, :, None, :].expand_as(values))


def free_first(occupied: torch.Tensor) -> torch.Tensor:
    """Long ``[B, C]``: each row's slots, the free ones (``occupied`` False) first, each group in ascending slot
    order: a row's free list, read from its ``cursor``-th entry on."""
    return occupied.argsort(dim=1, stable=True)


def _runs(entries: list[int]) -> list[tuple[int, int, int]]:
    """``(start, end, first)`` of every run of consecutive batch entries in ``entries``: its index range there and
    its first batch entry."""
    runs, start = [], 0
    for end in range(1, len(entries) + 1):
        if end == len(entries) or entries[end] != entries[end - 1] + 1:
            runs.append((start, end, entries[start]))
            start = end
    return runs


class LayerStack(Sequence):
    """A ``[L, ...]`` tensor seen as a sequence of layers, which also offers itself whole (``stacked()``)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor = tensor

    def __len__(self) -> int:
        return self._tensor.shape[0]

    def __getitem__(self, layer):  # type: ignore[override]
        if isinstance(layer, slice):
            return [self[i] for i in range(*layer.indices(len(self)))]
        return self._tensor[layer]

    def stacked(self) -> torch.Tensor:
        return self._tensor


class CompactingCache(Cache):
    """Per-sequence compacting KV cache for the project's decode loop, written into freed slots (module docstring)."""

    def __init__(self, num_layers: int, capacity: int, state_names: tuple[str, ...] = ()) -> None:
        self.capacity = capacity
        self.written = 0  # slots advanced since the start (capped at capacity by ``shrink``): live slots lie below
        self.span = 0  # slots the next forward attends over (set by ``append``)
        super().__init__(layers=[CompactingLayer(self, i) for i in range(num_layers)])
        self.kv: torch.Tensor | None = None  # [layers, 2, B, KVH, capacity, D]
        self.flags: torch.Tensor | None = None  # bool [2, B, capacity]: valid, is_prompt
        self.ids: torch.Tensor | None = None  # long [2, B, capacity]: logical position (-1 if empty), token id
        self.scores: torch.Tensor | None = None  # float [S, B, capacity]: per-slot policy state
        self.free: torch.Tensor | None = None  # long [B, capacity]: each row's free slots first, ascending
        self.cursor: torch.Tensor | None = None  # long [B, 1]: how many of them the row has written since
        self.slot: torch.Tensor | None = None  # long [B, 1]: the decode step's write slot of every row, in place
        self.slot_index: torch.Tensor | None = None  # ``slot`` expanded to ``[B, KVH, 1, D]``, for the layers
        #: the additive mask's two values, 0 and -inf, in the buffers' dtype and on their device (made with them, so
        #: that a compiled decode step only reads them)
        self.mask_values: tuple[torch.Tensor, torch.Tensor] | None = None
        self.state_names = state_names
        self.peak_allocated_bytes = 0

    # ---------------------------------------------------------------- views
    @property
    def valid(self) -> torch.Tensor:
        return self.flags[0]  # type: ignore[index]

    @property
    def is_prompt(self) -> torch.Tensor:
        return self.flags[1]  # type: ignore[index]

    @property
    def positions(self) -> torch.Tensor:
        return self.ids[0]  # type: ignore[index]

    @property
    def token_ids(self) -> torch.Tensor:
        return self.ids[1]  # type: ignore[index]

    @property
    def state(self) -> dict[str, torch.Tensor]:
        if self.scores is None:
            return {}
        return {name: self.scores[i] for i, name in enumerate(self.state_names)}

    @property
    def length(self) -> int:
        """Slots that have ever been written: every live token lies in ``[0, length)``."""
        return min(self.written, self.capacity)

    # ---------------------------------------------------------------- allocation
    def _allocate_metadata(self, batch: int, device: torch.device) -> None:
        c = self.capacity
        self.flags = torch.zeros(2, batch, c, dtype=torch.bool, device=device)
        self.ids = torch.zeros(2, batch, c, dtype=torch.long, device=device)
        self.ids[0] = -1
        self.scores = torch.zeros(len(self.state_names), batch, c, device=device) if self.state_names else None
        self.free = torch.arange(c, device=device).expand(batch, c).clone()  # the prompt's ``append`` sets it
        self.cursor = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.slot = torch.zeros(batch, 1, dtype=torch.long, device=device)

    def allocate_kv(self, key_states: torch.Tensor) -> None:
        """Allocate every layer's keys and values at once (zeros: masked slots must hold finite values)."""
        b, h, _, d = key_states.shape
        shape = (len(self.layers), 2, b, h, self.capacity, d)
        dtype, device = key_states.dtype, key_states.device
        self.mask_values = (torch.zeros((), dtype=dtype, device=device),
                            torch.full((), float("-inf"), dtype=dtype, device=device))
        self._rebind(torch.zeros(shape, dtype=key_states.dtype, device=key_states.device))

    def _rebind(self, kv: torch.Tensor) -> None:
        self.kv = kv
        for layer in self.layers:
            layer.bind(kv)
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes())

    # ---------------------------------------------------------------- writing
    def append(self, token_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
               is_prompt: bool) -> WriteSlots:
        """Record the metadata of ``q`` tokens about to be written; returns where they go.

        Call before the forward pass that writes them; ``advance`` after it. Several tokens at once (a prompt)
        only into an empty cache; a decode step writes one token per sequence, at its own next free slot.
        """
        b, q = token_ids.shape
        if self.flags is None:
            self._allocate_metadata(b, token_ids.device)
        assert self.flags is not None and self.ids is not None and self.slot is not None
        if q == 1:
            torch.gather(self.free, 1, self.cursor, out=self.slot)  # type: ignore[arg-type]
            at = self.slot[None].expand(2, -1, -1)
            self.flags.scatter_(2, at, torch.stack([valid, torch.full_like(valid, is_prompt)]))
            self.ids.scatter_(2, at, torch.stack([torch.where(valid, positions, -1), token_ids]))
            if self.scores is not None:
                self.scores.scatter_(2, self.slot[None].expand(self.scores.shape[0], -1, -1), 0.0)
            if self.kv is not None:
                _, _, _, heads, _, dim = self.kv.shape
                self.slot_index = self.slot[:, None, :, None].expand(b, heads, 1, dim)
            where = WriteSlots(-1, self.slot)
        else:
            if self.written:
                raise CacheCapacityError("several tokens at once can only be written into an empty cache")
            if q > self.capacity:
                raise CacheCapacityError(f"cache capacity {self.capacity} exceeded (need {q} slots)")
            self.flags[0, :, :q] = valid
            self.flags[1, :, :q] = is_prompt
            self.ids[0, :, :q] = torch.where(valid, positions, -1)
            self.ids[1, :, :q] = token_ids
            self.free = free_first(self.valid)  # a shorter prompt's padding is free too
            where = WriteSlots(0, None)
        self.span = self.capacity if self.written + q > self.capacity else min(
            self.capacity, -(-(self.written + q) // SPAN_STEP) * SPAN_STEP
        )
        return where

    def advance(self, q: int) -> None:
        """The forward wrote ``q`` tokens: count them (host and device side)."""
        self.written += q
        if q == 1:
            self.cursor.add_(1)  # type: ignore[union-attr]

    def attention_mask(self, q: int) -> torch.Tensor:
        """4D mask ``[B, 1, q, span]`` over the attended span. A decode step's is additive (0 where valid, -inf
        where not), in the cache's dtype: SDPA converts a boolean mask to exactly that in every layer (two
        operations each), so one conversion per step replaces them all. A prompt's is boolean, causal and padding
        (a padded query sees itself so that no row is fully masked)."""
        valid = self.valid[:, None, None, : self.span]
        if q == 1:
            assert self.mask_values is not None  # a decode step follows the prompt that allocated the buffers
            return torch.where(valid, *self.mask_values)
        rows = torch.arange(q, device=valid.device)[:, None]
        cols = torch.arange(self.span, device=valid.device)[None, :]
        return (valid & (cols <= rows)) | (cols == rows)

    def live_counts(self) -> torch.Tensor:
        return self.valid.sum(-1)

    # ---------------------------------------------------------------- eviction
    def generation_order(self, rows: torch.Tensor) -> torch.Tensor:
        """Long ``[F, capacity]``: each of sequences ``rows``'s slots, empty ones first (left padding), then its
        tokens oldest first (by logical position: a sequence's tokens fill its freed slots in no order)."""
        assert self.ids is not None
        return self.positions.index_select(0, rows).argsort(dim=-1, stable=True)

    def ordered_rows(self, fired: Sequence[int]) -> dict[str, torch.Tensor | OrderedKeys]:
        """The metadata, state and keys of the sequences ``fired`` (batch entries) with slots in generation order;
        also ``rows`` (those entries as a device tensor) and ``order`` (``generation_order`` of them)."""
        assert self.flags is not None and self.ids is not None and self.kv is not None
        rows = torch.tensor(list(fired), device=self.kv.device)
        order = self.generation_order(rows)
        flags = self.flags.index_select(1, rows).gather(2, order.expand(2, -1, -1))
        ids = self.ids.index_select(1, rows).gather(2, order.expand(2, -1, -1))
        state = {}
        if self.scores is not None:
            s = len(self.state_names)
            scores = self.scores.index_select(1, rows).gather(2, order.expand(s, -1, -1))
            state = {name: scores[i] for i, name in enumerate(self.state_names)}
        return {"rows": rows, "order": order, "valid": flags[0], "is_prompt": flags[1], "positions": ids[0],
                "token_ids": ids[1], "state": state, "keys": OrderedKeys(self.kv, fired, rows, order)}

    def compact(self, kept: torch.Tensor, kept_valid: torch.Tensor) -> None:
        """Keep slots ``kept[b]`` of every sequence (``[B, K]``, positions in generation order, ascending,
        left-padded; ``kept_valid`` marks real entries)."""
        rows = torch.arange(kept.shape[0], device=kept.device)
        self.compact_rows(rows, self.generation_order(rows), kept, kept_valid)

    def compact_rows(self, rows: torch.Tensor, order: torch.Tensor, kept: torch.Tensor,
                     kept_valid: torch.Tensor) -> None:
        """Keep, of sequences ``rows``, the generation-order positions ``kept`` ``[F, K]`` (see ``compact``;
        ``order`` is their ``generation_order``): every other slot of theirs is emptied and becomes, in ascending
        order, their free list (module docstring). Nothing moves; the other sequences are not touched."""
        assert self.free is not None and self.cursor is not None
        c = self.capacity
        slots = order.gather(1, kept).masked_fill(~kept_valid, c)  # padding entries -> a spare column
        kept_slots = torch.zeros(rows.shape[0], c + 1, dtype=torch.bool, device=rows.device)
        kept_slots = kept_slots.scatter_(1, slots, True)[:, :c]  # [F, C]: the physical slots kept
        self._empty(rows, ~kept_slots)
        self.free.index_copy_(0, rows, free_first(kept_slots))
        self.cursor.index_fill_(0, rows, 0)

    def _empty(self, rows: torch.Tensor, dead: torch.Tensor) -> None:
        """Empty the slots ``dead`` ``[F, C]`` of sequences ``rows`` in every metadata tensor: validity False,
        position -1, token 0, policy state 0."""
        assert self.flags is not None and self.ids is not None
        where = torch.zeros(self.flags.shape[1:], dtype=torch.bool, device=dead.device).index_copy_(0, rows, dead)
        self.flags.masked_fill_(where, False)
        self.ids[0].masked_fill_(where, -1)
        self.ids[1].masked_fill_(where, 0)
        if self.scores is not None:
            self.scores.masked_fill_(where, 0.0)

    def shrink(self, capacity: int) -> None:
        """Reallocate every buffer to ``capacity`` slots (after a long prompt was compressed below it): each
        sequence's live slots, in slot order, become its first slots, and the rest its free list. Every sequence
        must hold at most ``capacity`` tokens (one compacted since holds its kept tokens and later writes)."""
        if capacity >= self.capacity or self.kv is None:
            return
        assert self.flags is not None and self.ids is not None and self.slot is not None
        live_first = self.valid.logical_not().argsort(dim=1, stable=True)[:, :capacity]  # [B, capacity]
        layers, two, batch, heads, _, dim = self.kv.shape
        self._rebind(self.kv.gather(4, live_first[None, None, :, None, :, None].expand(
            layers, two, batch, heads, capacity, dim)))
        self.flags = self.flags.gather(2, live_first.expand(2, -1, -1))
        self.ids = self.ids.gather(2, live_first.expand(2, -1, -1))
        if self.scores is not None:
            self.scores = self.scores.gather(2, live_first.expand(self.scores.shape[0], -1, -1))
        self.capacity = capacity
        self.written = capacity  # the span is the whole buffer
        self.free = free_first(self.valid)  # the empty slots after each row's live ones
        self.cursor.zero_()  # type: ignore[union-attr]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Drop finished sequences from the batch (frees their share of the buffers)."""
        if self.kv is not None:
            self._rebind(self.kv.index_select(2, rows))
        if self.flags is not None:
            self.flags = self.flags.index_select(1, rows)
            self.ids = self.ids.index_select(1, rows)  # type: ignore[union-attr]
            if self.scores is not None:
                self.scores = self.scores.index_select(1, rows)
            self.free = self.free.index_select(0, rows)  # type: ignore[union-attr]
            self.cursor = self.cursor.index_select(0, rows)  # type: ignore[union-attr]
            self.slot = self.slot.index_select(0, rows)  # type: ignore[union-attr]

    # ---------------------------------------------------------------- accounting
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def allocated_bytes(self) -> int:
        """Exact bytes of every key and value buffer currently allocated."""
        return 0 if self.kv is None else self.kv.numel() * self.kv.element_size()
