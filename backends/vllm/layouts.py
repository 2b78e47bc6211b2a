"""Where vLLM's CPU attention kernels (``CPU_ATTN``, vLLM 0.32) store each token inside a KV block.

Per layer the cache is ``[num_blocks, kv_heads, block_size, 2 * head_dim]``; the kernels view one (block, head)
as ``2 * block_size * head_dim`` elements, keys first, and ``cpu_attn_reshape_and_cache`` writes them in an
ISA-specific order (``csrc/cpu/cpu_attn_vec.hpp``, ``cpu_attn_vec16.hpp``, ``cpu_attn_amx.hpp``):

* ``vec`` (x86 AVX2 and AVX-512 without AMX, also the fallback on other CPUs with block sizes % 32 == 0) and
  ``vec16`` (head sizes % 32 != 0; inherits vec's ``reshape_and_cache``): keys ``[head_dim, block_size]``
  (column-major per token), values ``[block_size, head_dim]``.
* ``amx`` (bf16 on CPUs with AMX tiles): keys packed as 4-byte pairs in groups of 16 tokens, values packed as
  token pairs in groups of 16 head elements.

vLLM's GPU backends (FlashAttention, FlashInfer, Triton) instead read a per-layer logical ``(B, H, N, 2 * D)``
view, keys then values along the last axis (``kv_cache.transpose(1, 2).split(head_size, dim=-1)`` in their
``forward``), over memory in any stride order (``vllm/v1/kv_cache_layout.py``): a ``DenseStore`` indexes that
view directly.

Whole-block copies do not depend on this; token moves and key reads do. ``probe_layout`` checks a map against
the real CPU kernel at engine start (``cpu_attn_reshape_and_cache`` on a scratch block), ``probe_dense_layout``
checks the dense view against the GPU backends' writer (``reshape_and_cache_flash`` on a scratch block with the
cache's stride order), so a kernel whose layout changed is refused instead of silently corrupting the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from backends.base import BackendError
from backends.paged import BatchPlan, apply_dense_moves, apply_moves, gather_dense, gather_tokens


@dataclass(frozen=True)
class TokenLayout:
    """Element offsets of one token inside a (block, head) slab of ``2 * block_size * head_dim`` elements."""

    isa: str
    block_size: int
    head_dim: int
    key_offsets: Callable[[torch.Tensor, int, int], torch.Tensor]  # (offsets [n], bs, D) -> [n, D]
    value_offsets: Callable[[torch.Tensor, int, int], torch.Tensor]  # -> [n, D], within the value half

    def offsets(self, block_offsets: torch.Tensor) -> torch.Tensor:
        """``[n, 2 * head_dim]``: key elements (head-dim order), then value elements."""
        o = block_offsets.to(torch.long)
        k = self.key_offsets(o, self.block_size, self.head_dim)
        v = self.value_offsets(o, self.block_size, self.head_dim) + self.block_size * self.head_dim
        return torch.cat([k, v], dim=1)

    def key_only(self, block_offsets: torch.Tensor) -> torch.Tensor:
        return self.key_offsets(block_offsets.to(torch.long), self.block_size, self.head_dim)


def _vec_keys(o: torch.Tensor, bs: int, d: int) -> torch.Tensor:
    return torch.arange(d)[None, :] * bs + o[:, None]


def _vec_values(o: torch.Tensor, bs: int, d: int) -> torch.Tensor:
    return o[:, None] * d + torch.arange(d)[None, :]


def _amx_keys(o: torch.Tensor, bs: int, d: int) -> torch.Tensor:
    # int32 word (pair of bf16) j of token o: (o // 16) * 16 * (d / 2) + o % 16 + j * 16
    dim = torch.arange(d)[None, :]
    word = (o[:, None] // 16) * (16 * (d // 2)) + o[:, None] % 16 + (dim // 2) * 16
    return word * 2 + dim % 2


def _amx_values(o: torch.Tensor, bs: int, d: int) -> torch.Tensor:
    # token pairs interleaved; 16 head elements per group, groups block_size * 16 apart
    dim = torch.arange(d)[None, :]
    return (o[:, None] // 2) * 32 + o[:, None] % 2 + (dim // 16) * (bs * 16) + (dim % 16) * 2


_LAYOUTS = {"vec": (_vec_keys, _vec_values), "vec16": (_vec_keys, _vec_values), "amx": (_amx_keys, _amx_values)}
KNOWN_ISAS = tuple(_LAYOUTS)


def layout_for(isa: str, block_size: int, head_dim: int, dtype: torch.dtype) -> TokenLayout:
    """The token layout of ``isa``; an unknown one is refused with one line."""
    if isa not in _LAYOUTS:
        raise BackendError(
            f"the vLLM CPU attention kernel picked ISA {isa!r}, whose KV layout the vllm backend does not know "
            f"(known: {', '.join(KNOWN_ISAS)}): use --backend transformers on this machine"
        )
    if isa == "amx" and (dtype != torch.bfloat16 or block_size % 32 or head_dim % 32):
        raise BackendError(f"the amx KV layout needs bf16, block sizes and head sizes % 32 == 0 (got {dtype}, "
                           f"{block_size}, {head_dim})")
    keys, values = _LAYOUTS[isa]
    return TokenLayout(isa, block_size, head_dim, keys, values)


def slab_view(kv_cache: torch.Tensor) -> torch.Tensor:
    """``[num_blocks, kv_heads, 2 * block_size * head_dim]`` view of one layer's CPU_ATTN cache."""
    if kv_cache.dim() != 4:
        raise BackendError(f"unexpected CPU_ATTN KV cache shape {tuple(kv_cache.shape)}: expected 4 dims")
    nb, h, bs, two_d = kv_cache.shape
    return kv_cache.view(nb, h, bs * two_d)


def _digits(ids: torch.Tensor, base: int, rounds: int) -> list[torch.Tensor]:
    return [(ids // base**r) % base for r in range(rounds)]


def probe_layout(layout: TokenLayout, dtype: torch.dtype, write: Callable[..., None]) -> None:
    """Write a scratch block with the real kernel (``write(key, value, key_cache, value_cache, slots, isa)``) and
    check every element lands where ``layout`` says; raise ``BackendError`` otherwise.

    Ids are written as base-128 digits, one round each, so bf16 (exact integers up to 256) can carry them.
    """
    bs, d = layout.block_size, layout.head_dim
    heads = 2
    ids = torch.arange(bs * d).view(bs, d)  # element id of (token, dim)
    rounds = 1
    while 128**rounds < bs * d * 2:
        rounds += 1
    expected = layout.offsets(torch.arange(bs))  # [bs, 2d]
    for r, digit in enumerate(_digits(torch.cat([ids, ids + bs * d], dim=1), 128, rounds)):
        cache = torch.full((1, heads, bs, 2 * d), -1.0, dtype=dtype)
        view = cache.view(1, heads, bs * 2, d)
        key_cache, value_cache = view.chunk(2, dim=2)
        token = digit.to(dtype)  # [bs, 2d]: key digits then value digits
        key = token[:, :d].unsqueeze(1).expand(bs, heads, d).contiguous()
        value = token[:, d:].unsqueeze(1).expand(bs, heads, d).contiguous()
        write(key, value, key_cache, value_cache, torch.arange(bs, dtype=torch.long), layout.isa)
        slab = cache.view(1, heads, -1)
        got = slab[0, :, expected.flatten()].view(heads, bs, 2 * d).float()
        if not torch.equal(got, digit.float().unsqueeze(0).expand_as(got)):
            raise BackendError(
                f"vLLM's {layout.isa} KV layout differs from the one the vllm backend knows (vLLM version "
                "mismatch?): use --backend transformers, or the pinned vLLM release"
            )
        del r


class SlabStore:
    """One layer's CPU_ATTN cache: token moves and key reads through the ISA's ``TokenLayout``."""

    def __init__(self, kv_cache: torch.Tensor, layout: TokenLayout) -> None:
        self.slab, self.layout = slab_view(kv_cache), layout

    def move(self, plan: BatchPlan) -> None:
        apply_moves(self.slab, plan, self.layout.offsets)

    def keys(self, blocks: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``[*blocks.shape, H, D]``."""
        return gather_tokens(self.slab, blocks, offsets, self.layout.key_only)


class VecStore(SlabStore):
    """``vec`` / ``vec16``: per (block, head) the keys are ``[head_dim, block_size]`` and the values ``[block_size,
    head_dim]``, so a token is one column of the key half and one row of the value half. Moving it as those two
    strided ``[heads, head_dim]`` pieces is about 5x faster than scattering its ``2 * head_dim`` elements one index
    each (``benchmarks/paged_moves.py``, which also checks the two agree); the tests check it against the
    kernel's own write loop."""

    def __init__(self, kv_cache: torch.Tensor, layout: TokenLayout) -> None:
        super().__init__(kv_cache, layout)
        nb, heads, _ = self.slab.shape
        bs, d = layout.block_size, layout.head_dim
        halves = self.slab.view(nb, heads, 2, bs * d)
        self.key_half = halves[:, :, 0].view(nb, heads, d, bs)
        self.value_half = halves[:, :, 1].view(nb, heads, bs, d)

    def move(self, plan: BatchPlan) -> None:
        if plan.num_moves == 0:
            return
        device = self.slab.device
        src_b, src_o = plan.src_blocks.to(device), plan.src_offsets.to(device)
        dst_b, dst_o = plan.dst_blocks.to(device), plan.dst_offsets.to(device)
        keys = self.key_half[src_b, :, :, src_o]  # [M, H, D]: copies, read before any write (overlaps are safe)
        values = self.value_half[src_b, :, src_o, :]
        self.key_half[dst_b, :, :, dst_o] = keys
        self.value_half[dst_b, :, dst_o, :] = values

    def keys(self, blocks: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        device = self.slab.device
        keys = self.key_half[blocks.flatten().to(device), :, :, offsets.flatten().to(device)]  # [n, H, D]
        return keys.reshape(*blocks.shape, *keys.shape[1:])


def store_for(kv_cache: torch.Tensor, layout: TokenLayout) -> SlabStore:
    """The fastest store that is exact for ``layout``: strided pieces for vec / vec16, element maps otherwise."""
    return VecStore(kv_cache, layout) if layout.isa in ("vec", "vec16") else SlabStore(kv_cache, layout)


class DenseStore:
    """One layer's cache in the GPU kernels' logical ``(B, H, N, 2 * D)`` view (any physical stride order)."""

    def __init__(self, kv_cache: torch.Tensor, head_dim: int) -> None:
        if kv_cache.dim() != 4 or kv_cache.shape[-1] != 2 * head_dim:
            raise BackendError(f"unexpected KV cache view {tuple(kv_cache.shape)}: expected (blocks, heads, "
                               f"block_size, {2 * head_dim})")
        self.cache, self.head_dim = kv_cache, head_dim

    def move(self, plan: BatchPlan) -> None:
        apply_dense_moves(self.cache, plan)

    def keys(self, blocks: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return gather_dense(self.cache, blocks, offsets, self.head_dim)


#: a layer's token store, as the worker runtime uses it
LayerStore = SlabStore | DenseStore


def scratch_like(kv_cache: torch.Tensor, blocks: int = 2) -> torch.Tensor:
    """A ``blocks``-block tensor of ``kv_cache``'s logical shape, dtype, device and physical stride order."""
    order = sorted(range(kv_cache.dim()), key=lambda axis: (-kv_cache.stride(axis), -kv_cache.shape[axis]))
    shape = (blocks, *kv_cache.shape[1:])
    physical = torch.full(tuple(shape[a] for a in order), -1, dtype=kv_cache.dtype, device=kv_cache.device)
    return physical.permute(*[order.index(a) for a in range(kv_cache.dim())])


def reshape_and_cache_flash_reference(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                                      value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """What vLLM's ``reshape_and_cache_flash`` (``csrc/cache_kernels.cu``) does, in torch: token ``i``'s
    ``[heads, head_dim]`` key / value go to ``cache[slot // block_size, slot % block_size]`` of the
    ``(blocks, block_size, heads, head_dim)`` split views, through their strides; negative slots are padding."""
    block_size = key_cache.shape[1]
    slots = slot_mapping.to(torch.long)
    real = slots >= 0
    blocks, offsets = slots[real] // block_size, slots[real] % block_size
    key_cache[blocks, offsets] = key[: slots.numel()][real.to(key.device)].to(key_cache.dtype)
    value_cache[blocks, offsets] = value[: slots.numel()][real.to(value.device)].to(value_cache.dtype)


def probe_dense_layout(kv_cache: torch.Tensor, head_dim: int, write: Callable[..., None]) -> None:
    """Write a scratch copy of ``kv_cache``'s layout (same stride order, two blocks) through the GPU backends'
    own split (``kv_cache.transpose(1, 2).split(head_dim, -1)``) with ``write(key, value, key_cache, value_cache,
    slots)`` and check that ``DenseStore`` reads every key and value back where it put them; raise
    ``BackendError`` otherwise. Element ids are written as base-128 digits, so bf16 / fp16 carry them exactly."""
    DenseStore(kv_cache, head_dim)  # the shape check
    scratch = scratch_like(kv_cache)
    blocks, heads, block_size, _ = scratch.shape
    tokens = blocks * block_size
    ids = torch.arange(tokens * heads * 2 * head_dim, device=scratch.device).view(tokens, heads, 2 * head_dim)
    rounds = 1
    while 128**rounds < ids.numel():
        rounds += 1
    slots = torch.arange(tokens, device=scratch.device).flip(0)  # written out of order, read back in order
    store = DenseStore(scratch, head_dim)
    for digit in _digits(ids, 128, rounds):
        token = digit.to(scratch.dtype)
        key_cache, value_cache = scratch.transpose(1, 2).split(head_dim, dim=-1)
        write(token[..., :head_dim].contiguous(), token[..., head_dim:].contiguous(), key_cache, value_cache, slots)
        block_of, offset_of = slots // block_size, slots % block_size
        got_keys = store.keys(block_of, offset_of)  # [tokens, H, D]
        got_values = scratch[block_of, :, offset_of, head_dim:]
        if not (torch.equal(got_keys.float(), digit[..., :head_dim].float())
                and torch.equal(got_values.float(), digit[..., head_dim:].float())):
            raise BackendError(
                "vLLM's GPU KV cache layout differs from the (blocks, heads, block_size, 2 * head_dim) view the vllm "
                "backend knows (vLLM version mismatch?): use the pinned vLLM release or --backend transformers"
            )
