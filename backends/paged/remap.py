"""Zero-copy compaction of a token-major KV pool (a paged cache of block size 1, e.g. SGLang's ``page_size=1``).

A request's row ``req_to_token[r, :length]`` maps its physical slots (generation order) to pool slots. Keeping
the slots ``kept`` rewrites the row's prefix to ``row[kept]`` and hands the dropped pool slots back to the
allocator; the KV buffers are untouched. Pure tensor code: nothing here imports an engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backends.paged.plan import checked_kept


@dataclass(frozen=True)
class TokenRemap:
    """What compacting one request does to its row: the new row prefix and the pool slots it releases."""

    request_id: str
    kept_slots: torch.Tensor  # long [k] pool slots of the survivors, in order: the new row[:k]
    freed_slots: torch.Tensor  # long [length - k] pool slots no longer referenced
    old_length: int
    new_length: int

    @property
    def dropped(self) -> int:
        return self.old_length - self.new_length


def plan_remap(request_id: str, row: torch.Tensor, kept: torch.Tensor) -> TokenRemap:
    """Plan keeping the physical slots ``kept`` (strictly increasing, in ``[0, len(row))``) of ``row``."""
    row = row.to(torch.long).flatten()
    length = int(row.numel())
    kept = checked_kept(request_id, kept, length)
    k = int(kept.numel())
    mask = torch.zeros(length, dtype=torch.bool)
    mask[kept] = True
    kept_dev = kept.to(row.device)
    return TokenRemap(request_id, row[kept_dev], row[~mask.to(row.device)], length, k)


def apply_remap(req_to_token: torch.Tensor, row_index: int, remap: TokenRemap) -> None:
    """Rewrite row ``row_index``: survivors first, the released tail zeroed (slot 0 is SGLang's padding slot)."""
    row = req_to_token[row_index]
    row[: remap.new_length] = remap.kept_slots.to(row.dtype)
    row[remap.new_length : remap.old_length] = 0
