"""The CPU attention kernels' KV layouts (``backends.vllm.layouts``) on synthetic tensors, for every ISA the
kernels pick on AVX2 and AVX-512 machines (``vec``, ``vec16``) and on AMX ones (``amx``), whatever this machine is.

The expectation is an element-by-element transcription of each kernel's ``reshape_and_cache`` loop (vLLM 0.32,
``csrc/cpu/cpu_attn_vec.hpp`` / ``cpu_attn_amx.hpp``), not the vectorised maps under test. On a machine with
vLLM, ``tests/vllm/test_layout_probe.py`` also checks the maps against the real kernel.
"""

from __future__ import annotations

import pytest
import torch

from backends.base import BackendError
from backends.paged import apply_moves, gather_tokens, merge_plans, plan_compaction
from backends.vllm.layouts import SlabStore, VecStore, layout_for, store_for


def write_vec(slab: torch.Tensor, block: int, offset: int, key: torch.Tensor, value: torch.Tensor, bs: int) -> None:
    """``AttentionImpl<ISA::VEC>::reshape_and_cache`` for one token: K column-major, V row-major."""
    heads, d = key.shape
    for h in range(heads):
        for i in range(d):
            slab[block, h, offset + i * bs] = key[h, i]  # key_cache_start_ptr[j], j += block_size
        for i in range(d):
            slab[block, h, bs * d + offset * d + i] = value[h, i]  # memcpy at block_offset * head_dim


def write_amx(slab: torch.Tensor, block: int, offset: int, key: torch.Tensor, value: torch.Tensor, bs: int) -> None:
    """``AttentionImpl<ISA::AMX>::reshape_and_cache`` (bf16: 2 elements per 4-byte word) for one token."""
    heads, d = key.shape
    per_group, words = 16, d // 2  # token_num_per_group = 64 / 4, quadword_num = head_dim / 2
    for h in range(heads):
        start = (offset // per_group) * per_group * words + offset % per_group  # in 4-byte words
        for j in range(words):
            word = start + j * per_group
            slab[block, h, 2 * word] = key[h, 2 * j]
            slab[block, h, 2 * word + 1] = key[h, 2 * j + 1]
        base = bs * d + (offset // 2) * 2 * 16 + offset % 2  # sub-groups of 2 tokens, 16 head elements
        for group in range(d // 16):
            for j in range(16):
                slab[block, h, base + group * bs * 16 + 2 * j] = value[h, group * 16 + j]


WRITERS = {"vec": write_vec, "vec16": write_vec, "amx": write_amx}
CASES = [("vec", 32, 32, torch.float32), ("vec", 64, 64, torch.float32), ("vec16", 32, 80, torch.float32),
         ("amx", 32, 32, torch.bfloat16), ("amx", 64, 64, torch.bfloat16)]


def token(i: int, heads: int, d: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value of token ``i`` with every element distinct (small integers: exact in bf16)."""
    base = torch.arange(heads * d).view(heads, d)
    return ((base + i) % 251).to(dtype), ((base * 3 + i) % 241 + 1).to(dtype)


@pytest.mark.parametrize("isa,bs,d,dtype", CASES)
def test_layout_is_a_permutation_of_the_block(isa, bs, d, dtype):
    offsets = layout_for(isa, bs, d, dtype).offsets(torch.arange(bs))
    assert sorted(offsets.flatten().tolist()) == list(range(2 * bs * d))


@pytest.mark.parametrize("isa,bs,d,dtype", CASES)
def test_layout_matches_the_kernel_loop(isa, bs, d, dtype):
    heads = 2
    layout = layout_for(isa, bs, d, dtype)
    slab = torch.zeros(3, heads, 2 * bs * d, dtype=dtype)
    for o in (0, 1, 15, 16, 17, bs - 1):
        k, v = token(o, heads, d, dtype)
        WRITERS[isa](slab, 2, o, k, v, bs)
        got = gather_tokens(slab, torch.tensor([2]), torch.tensor([o]), layout.offsets)[0]  # [H, 2D]
        assert torch.equal(got[:, :d], k) and torch.equal(got[:, d:], v)
        keys = gather_tokens(slab, torch.tensor([2]), torch.tensor([o]), layout.key_only)[0]
        assert torch.equal(keys, k)


@pytest.mark.parametrize("isa,bs,d,dtype", CASES)
def test_compaction_in_each_layout(isa, bs, d, dtype):
    """Kept tokens written by the kernel loop, compacted by the plan: the result is what the kernel loop would
    have written had only the survivors been generated, slot after slot."""
    heads, length = 2, 3 * bs - 5
    layout = layout_for(isa, bs, d, dtype)
    table = [4, 1, 3]
    slab = torch.zeros(5, heads, 2 * bs * d, dtype=dtype)
    for t in range(length):
        WRITERS[isa](slab, table[t // bs], t % bs, *token(t, heads, d, dtype), bs)
    kept = torch.tensor([0, 2, 3, bs - 1, bs, bs + 1, 2 * bs, length - 2, length - 1])
    plan = plan_compaction("r", table, length, kept, bs)
    apply_moves(slab, merge_plans([plan]), layout.offsets)
    expected = torch.zeros_like(slab)
    for i, t in enumerate(kept.tolist()):
        WRITERS[isa](expected, table[i // bs], i % bs, *token(t, heads, d, dtype), bs)
    for i in range(len(kept)):
        got = gather_tokens(slab, torch.tensor([table[i // bs]]), torch.tensor([i % bs]), layout.offsets)
        want = gather_tokens(expected, torch.tensor([table[i // bs]]), torch.tensor([i % bs]), layout.offsets)
        assert torch.equal(got, want)
    assert plan.freed_blocks == [1, 3]


def test_unknown_isa_is_refused_with_one_line():
    with pytest.raises(BackendError, match="does not know") as err:
        layout_for("neon", 32, 64, torch.float32)
    assert "\n" not in str(err.value)


def test_amx_needs_bf16():
    with pytest.raises(BackendError, match="bf16"):
        layout_for("amx", 32, 64, torch.float32)


@pytest.mark.parametrize("isa,bs,d,dtype", CASES)
def test_each_layouts_store_compacts_several_requests_as_the_kernel_would_have_written_them(isa, bs, d, dtype):
    """The store the runtime uses for each ISA (strided pieces for vec / vec16, element maps for amx): two
    requests on interleaved blocks, overlapping moves, compacted in one batch; every survivor reads back, keys
    included, as the kernel loop writes it in its new slot, and a third request not in the batch is untouched."""
    heads = 2
    layout = layout_for(isa, bs, d, dtype)
    cache = torch.zeros(7, heads, bs, 2 * d, dtype=dtype)
    store = store_for(cache, layout)
    assert type(store) is (VecStore if isa in ("vec", "vec16") else SlabStore)
    slab = cache.view(7, heads, -1)
    tables = {"a": [5, 0, 3], "b": [2, 6], "idle": [4]}
    lengths = {"a": 3 * bs - 3, "b": 2 * bs, "idle": bs - 2}
    for r, table in tables.items():
        for t in range(lengths[r]):
            WRITERS[isa](slab, table[t // bs], t % bs, *token(t + 1000 * len(r), heads, d, dtype), bs)
    idle_before = slab[4].clone()
    kept = {"a": torch.tensor([1, 2, bs - 1, bs, bs + 3, 2 * bs + 1, lengths["a"] - 1]),
            "b": torch.tensor([0, bs // 2, bs - 1, bs, 2 * bs - 1])}
    plans = [plan_compaction(r, tables[r], lengths[r], kept[r], bs) for r in kept]
    store.move(merge_plans(plans))
    for r, survivors in kept.items():
        table = tables[r]
        for i, t in enumerate(survivors.tolist()):
            expected = torch.zeros(1, heads, 2 * bs * d, dtype=dtype)
            k, v = token(t + 1000 * len(r), heads, d, dtype)
            WRITERS[isa](expected, 0, i % bs, k, v, bs)
            block, offset = torch.tensor([table[i // bs]]), torch.tensor([i % bs])
            got = gather_tokens(slab, block, offset, layout.offsets)[0]
            assert torch.equal(got, gather_tokens(expected, torch.tensor([0]), offset, layout.offsets)[0])
            assert torch.equal(store.keys(block[None], offset[None])[0, 0], k)
    assert torch.equal(slab[4], idle_before)
