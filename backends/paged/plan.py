"""Compaction plans: a kept set over one request's physical tokens -> slot copies + freed blocks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


class PlanError(ValueError):
    """A kept set or block table that no compaction can honour (a backend bug, never a user error)."""


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class CompactionPlan:
    """What compacting one request does. Slots are (block table entry, offset) pairs resolved to block ids.

    The kept token ``i`` (``i < new_length``) ends in logical slot ``i`` of the request: block table entry
    ``i // block_size``, offset ``i % block_size``. Tokens already in place are not copied.
    """

    request_id: str
    src_blocks: torch.Tensor  # long [M] physical block id each moved token is read from
    src_offsets: torch.Tensor  # long [M] offset inside that block
    dst_blocks: torch.Tensor  # long [M]
    dst_offsets: torch.Tensor  # long [M]
    kept_blocks: list[int]  # the block table after compaction (a prefix of the old one)
    freed_blocks: list[int]  # whole blocks no longer used, in table order
    old_length: int
    new_length: int
    kept_positions: torch.Tensor | None  # long [new_length] logical positions of the survivors, if given

    @property
    def num_moves(self) -> int:
        return int(self.src_blocks.numel())


def checked_kept(request_id: str, kept: torch.Tensor, length: int) -> torch.Tensor:
    """``kept`` as a flat long CPU tensor, after checking it is strictly increasing within ``[0, length)``."""
    kept = kept.to(torch.long).flatten().cpu()
    k = int(kept.numel())
    if k:
        if int(kept[0]) < 0 or int(kept[-1]) >= length:
            raise PlanError(f"request {request_id}: kept slots must lie in [0, {length})")
        if k > 1 and not bool((kept[1:] > kept[:-1]).all()):
            raise PlanError(f"request {request_id}: kept slots must be strictly increasing")
    return kept


def plan_compaction(
    request_id: str,
    block_ids: Sequence[int],
    length: int,
    kept: torch.Tensor,
    block_size: int,
    positions: torch.Tensor | None = None,
) -> CompactionPlan:
    """Plan the compaction of one request holding ``length`` tokens in ``block_ids`` to the slots ``kept``.

    ``kept`` must be strictly increasing indices into ``[0, length)`` (generation order is preserved, so a kept
    token only ever moves towards the front). ``positions`` (``[length]``) are the logical positions of the
    current slots; the plan carries those of the survivors (RoPE stays logical after compaction).
    """
    if block_size < 1:
        raise PlanError(f"block_size must be >= 1, got {block_size}")
    if length > len(block_ids) * block_size:
        raise PlanError(f"request {request_id}: {length} tokens do not fit in {len(block_ids)} blocks")
    kept = checked_kept(request_id, kept, length)
    k = int(kept.numel())
    dst = torch.arange(k, dtype=torch.long)
    moving = kept != dst
    src, dst = kept[moving], dst[moving]
    table = torch.tensor(list(block_ids), dtype=torch.long)
    keep_blocks = cdiv(k, block_size)
    kept_positions = None
    if positions is not None:
        if positions.numel() < length:
            raise PlanError(f"request {request_id}: {positions.numel()} positions for {length} slots")
        kept_positions = positions.to(torch.long).flatten()[kept]
    return CompactionPlan(
        request_id=request_id,
        src_blocks=table[src // block_size],
        src_offsets=src % block_size,
        dst_blocks=table[dst // block_size],
        dst_offsets=dst % block_size,
        kept_blocks=list(block_ids[:keep_blocks]),
        freed_blocks=list(block_ids[keep_blocks:]),
        old_length=length,
        new_length=k,
        kept_positions=kept_positions,
    )


@dataclass(frozen=True)
class BatchPlan:
    """Every request's moves concatenated: one gather and one scatter per layer for the whole batch."""

    src_blocks: torch.Tensor
    src_offsets: torch.Tensor
    dst_blocks: torch.Tensor
    dst_offsets: torch.Tensor
    plans: tuple[CompactionPlan, ...]

    @property
    def num_moves(self) -> int:
        return int(self.src_blocks.numel())


def merge_plans(plans: Sequence[CompactionPlan]) -> BatchPlan:
    """Concatenate plans; refuses two requests sharing a block (their copies could collide)."""
    seen: set[int] = set()
    for p in plans:
        blocks = set(p.kept_blocks) | set(p.freed_blocks)
        if blocks & seen:
            raise PlanError(f"request {p.request_id} shares KV blocks with another request in the batch")
        seen |= blocks

    def cat(name: str) -> torch.Tensor:
        parts = [getattr(p, name) for p in plans]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    return BatchPlan(cat("src_blocks"), cat("src_offsets"), cat("dst_blocks"), cat("dst_offsets"), tuple(plans))
