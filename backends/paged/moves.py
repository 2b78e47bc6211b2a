"""Token copies inside a paged cache, for any layout that stores a token at fixed offsets within its block.

A cache is seen as ``slab [num_blocks, heads, E]``: per block and head, ``E`` elements holding ``block_size``
tokens. A layout is a function ``offsets(block_offsets [n]) -> long [n, e]`` giving, for each token offset in a
block, the ``e`` elements that belong to it (keys then values, each in head-dimension order). Row-major
``[block, token, dim]`` caches, the CPU kernels' transposed key blocks and AMX's packed tiles all fit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from backends.paged.plan import BatchPlan

ElementOffsets = Callable[[torch.Tensor], torch.Tensor]


def apply_moves(slab: torch.Tensor, plan: BatchPlan, offsets: ElementOffsets) -> None:
    """Copy every moved token of ``plan`` inside ``slab`` (in place).

    All sources are read before any destination is written (advanced indexing copies), so overlapping moves --
    a token moving onto a slot another kept token is leaving -- are safe.
    """
    if plan.num_moves == 0:
        return
    src_e = offsets(plan.src_offsets)  # [M, e]
    dst_e = offsets(plan.dst_offsets)
    device = slab.device
    values = slab[plan.src_blocks.to(device)[:, None], :, src_e.to(device)]  # [M, e, H]
    slab[plan.dst_blocks.to(device)[:, None], :, dst_e.to(device)] = values


def gather_tokens(slab: torch.Tensor, blocks: torch.Tensor, block_offsets: torch.Tensor,
                  offsets: ElementOffsets) -> torch.Tensor:
    """``[*blocks.shape, H, e]``: the elements of tokens at (``blocks``, ``block_offsets``), any leading shape."""
    shape = blocks.shape
    flat_e = offsets(block_offsets.flatten())  # [n, e]
    values = slab[blocks.flatten().to(slab.device)[:, None], :, flat_e.to(slab.device)]  # [n, e, H]
    return values.transpose(1, 2).reshape(*shape, slab.shape[1], flat_e.shape[1])


def apply_dense_moves(cache: torch.Tensor, plan: BatchPlan) -> None:
    """Copy every moved token of ``plan`` inside a ``[num_blocks, heads, block_size, C]`` cache (in place).

    The layout of vLLM's GPU attention backends (FlashAttention, FlashInfer, Triton: per layer a logical
    ``(B, H, N, 2 * head_dim)`` view, keys then values along the last axis, over memory in any stride order):
    a token is ``cache[block, :, offset, :]``, so indexing the logical view is right for every physical order.
    Sources are gathered before any destination is written, so overlapping moves are safe.
    """
    if plan.num_moves == 0:
        return
    device = cache.device
    values = cache[plan.src_blocks.to(device), :, plan.src_offsets.to(device), :]  # [M, H, C], a copy
    cache[plan.dst_blocks.to(device), :, plan.dst_offsets.to(device), :] = values


def gather_dense(cache: torch.Tensor, blocks: torch.Tensor, block_offsets: torch.Tensor, width: int) -> torch.Tensor:
    """``[*blocks.shape, H, width]``: the first ``width`` channels (the key) of tokens in a dense cache."""
    shape = blocks.shape
    device = cache.device
    values = cache[blocks.flatten().to(device), :, block_offsets.flatten().to(device), :width]  # [n, H, width]
    return values.reshape(*shape, cache.shape[1], width)
