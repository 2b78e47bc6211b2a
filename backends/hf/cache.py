"""A transformers ``Cache`` that compacts in place and whose allocation is bounded by the schedule.

Every layer owns one preallocated buffer of ``capacity`` slots per sequence (capacity = budget + interval under
the budget schedule, prompt + max_new_tokens for the full cache), so the KV memory a run allocates is known
exactly and really drops with the budget -- eviction is a gather into the front of the buffer, not a mask.

Physical slots are shared by the batch (left padding); per-slot metadata (validity, logical position, token id,
prompt flag, policy state) lives here too and is compacted with the keys and values. Logical positions are what
RoPE saw, so a token keeps its position after its neighbours are evicted (keys are cached after RoPE).
"""

from __future__ import annotations

import weakref

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class CacheCapacityError(RuntimeError):
    """Writing past the preallocated capacity: a scheduling bug, never a user error."""


class CompactingLayer(CacheLayerMixin):
    """One layer's keys and values in a fixed buffer ``[B, KVH, capacity, D]``; length lives in the owner."""

    is_sliding = False
    is_croppable = False

    def __init__(self, owner: CompactingCache) -> None:
        super().__init__()
        # A weak reference: a strong one would make cache <-> layer a cycle, so a finished batch's buffers would
        # stay allocated until Python's cyclic collector happened to run (on a GPU: the next batch's peak memory).
        self._owner = weakref.ref(owner)

    @property
    def owner(self) -> CompactingCache:
        owner = self._owner()
        if owner is None:
            raise RuntimeError("this cache layer outlived its CompactingCache")
        return owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        shape = (b, h, self.owner.capacity, d)
        self.keys = torch.empty(shape, dtype=key_states.dtype, device=key_states.device)
        self.values = torch.empty(shape, dtype=value_states.dtype, device=value_states.device)
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True
        self.owner._note_allocation()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.owner.length
        end = start + key_states.shape[-2]
        if end > self.owner.capacity:
            raise CacheCapacityError(f"cache capacity {self.owner.capacity} exceeded (need {end} slots)")
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_max_length(self) -> int:
        return self.owner.capacity

    def live_keys(self) -> torch.Tensor:
        return self.keys[:, :, : self.owner.length]

    def gather_(self, kept: torch.Tensor) -> None:
        """Move the kept slots ``[B, K]`` to the front of the buffer, in order."""
        if not self.is_initialized:
            return
        k = kept.shape[1]
        index = kept[:, None, :, None].expand(-1, self.keys.shape[1], -1, self.keys.shape[3])
        # gather makes a copy first, so overlapping source and destination slots are safe
        self.keys[:, :, :k] = self.keys.gather(2, index)
        self.values[:, :, :k] = self.values.gather(2, index)

    def resize_(self, capacity: int, length: int) -> None:
        if self.is_initialized:
            for name in ("keys", "values"):
                old = getattr(self, name)
                new = old.new_empty((*old.shape[:2], capacity, old.shape[3]))
                new[:, :, :length] = old[:, :, :length]
                setattr(self, name, new)

    def select_rows_(self, rows: torch.Tensor) -> None:
        if self.is_initialized:
            self.keys = self.keys.index_select(0, rows)
            self.values = self.values.index_select(0, rows)


class CompactingCache(Cache):
    """Bounded, compacting KV cache for the project's decode loop (see module docstring)."""

    def __init__(self, num_layers: int, capacity: int, state_names: tuple[str, ...] = ()) -> None:
        self.capacity = capacity
        self.length = 0  # physical slots in use, shared by the batch
        super().__init__(layers=[CompactingLayer(self) for _ in range(num_layers)])
        self.valid: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.token_ids: torch.Tensor | None = None
        self.is_prompt: torch.Tensor | None = None
        self.state_names = state_names
        self.state: dict[str, torch.Tensor] = {}
        self.peak_allocated_bytes = 0

    # ---------------------------------------------------------------- metadata
    def append(self, token_ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, is_prompt: bool) -> int:
        """Record the metadata of ``q`` tokens about to be written; returns their first slot.

        Call before the forward pass that writes them; ``advance`` after it.
        """
        b, q = token_ids.shape
        if self.valid is None:
            dev = token_ids.device
            self.valid = torch.zeros(b, self.capacity, dtype=torch.bool, device=dev)
            self.positions = torch.full((b, self.capacity), -1, dtype=torch.long, device=dev)
            self.token_ids = torch.zeros(b, self.capacity, dtype=torch.long, device=dev)
            self.is_prompt = torch.zeros(b, self.capacity, dtype=torch.bool, device=dev)
            self.state = {name: torch.zeros(b, self.capacity, device=dev) for name in self.state_names}
        start = self.length
        end = start + q
        if end > self.capacity:
            raise CacheCapacityError(f"cache capacity {self.capacity} exceeded (need {end} slots)")
        self.valid[:, start:end] = valid
        self.positions[:, start:end] = torch.where(valid, positions, -1)
        self.token_ids[:, start:end] = token_ids
        self.is_prompt[:, start:end] = is_prompt
        for tensor in self.state.values():
            tensor[:, start:end] = 0
        return start

    def advance(self, q: int) -> None:
        self.length += q

    def attention_mask(self, q: int) -> torch.Tensor:
        """2D padding mask over the live slots plus ``q`` incoming ones (all valid)."""
        assert self.valid is not None
        return self.valid[:, : self.length + q]

    def live_counts(self) -> torch.Tensor:
        assert self.valid is not None
        return self.valid[:, : self.length].sum(-1)

    # ---------------------------------------------------------------- eviction
    def compact(self, kept: torch.Tensor, kept_valid: torch.Tensor) -> None:
        """Keep slots ``kept[b]`` (``[B, K]``, ascending, left-padded; ``kept_valid`` marks real entries)."""
        assert self.valid is not None and self.positions is not None
        k = kept.shape[1]
        for layer in self.layers:
            layer.gather_(kept)
        for name in ("valid", "positions", "token_ids", "is_prompt"):
            tensor = getattr(self, name)
            tensor[:, :k] = tensor.gather(1, kept)
            tensor[:, k:] = -1 if name == "positions" else 0
        self.valid[:, :k] &= kept_valid
        self.positions[:, :k] = torch.where(self.valid[:, :k], self.positions[:, :k], -1)
        for tensor in self.state.values():
            tensor[:, :k] = tensor.gather(1, kept)
            tensor[:, k:] = 0
        self.length = k

    def shrink(self, capacity: int) -> None:
        """Reallocate every buffer to ``capacity`` slots (after a long prompt was compressed below it)."""
        if capacity >= self.capacity or capacity < self.length:
            return
        for layer in self.layers:
            layer.resize_(capacity, self.length)
        for name in ("valid", "positions", "token_ids", "is_prompt"):
            setattr(self, name, getattr(self, name)[:, :capacity].clone())
        self.state = {n: t[:, :capacity].clone() for n, t in self.state.items()}
        self.capacity = capacity

    def select_rows(self, rows: torch.Tensor) -> None:
        """Drop finished sequences from the batch (frees their share of the buffers)."""
        for layer in self.layers:
            layer.select_rows_(rows)
        for name in ("valid", "positions", "token_ids", "is_prompt"):
            setattr(self, name, getattr(self, name).index_select(0, rows))
        self.state = {n: t.index_select(0, rows) for n, t in self.state.items()}
        # Left padding shared by all remaining rows can go: shift everyone left.
        assert self.valid is not None
        first = int(self.valid[:, : self.length].any(0).long().argmax()) if self.length else 0
        if first > 0:
            kept = torch.arange(first, self.length, device=rows.device).expand(rows.numel(), -1)
            self.compact(kept, self.valid.gather(1, kept))

    # ---------------------------------------------------------------- accounting
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def allocated_bytes(self) -> int:
        """Exact bytes of every key and value buffer currently allocated."""
        total = 0
        for layer in self.layers:
            if layer.is_initialized:
                total += layer.keys.numel() * layer.keys.element_size()
                total += layer.values.numel() * layer.values.element_size()
        return total

    def _note_allocation(self) -> None:
        self.peak_allocated_bytes = max(self.peak_allocated_bytes, self.allocated_bytes())
