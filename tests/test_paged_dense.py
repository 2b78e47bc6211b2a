"""Token moves in the GPU kernels' KV layout (``backends.paged.apply_dense_moves`` / ``DenseStore``), on CPU
tensors: vLLM's FlashAttention, FlashInfer and Triton backends read a per-layer logical ``(B, H, N, 2 * D)`` view
over memory in one of six stride orders (``vllm/v1/kv_cache_layout.py``, transcribed below). Every slot holds
its own id; the expectation is a plain-Python model of the request's slots, not the code under test."""

from __future__ import annotations

import pytest
import torch

from backends.paged import merge_plans, plan_compaction
from backends.vllm.layouts import DenseStore

#: KVCacheLayout members of vLLM 0.32: a stride permutation of the logical axes [L, B, H, N, C]
STRIDE_ORDERS = {"LBHNC": (0, 1, 2, 3, 4), "LBNHC": (0, 1, 3, 2, 4), "LHBNC": (0, 2, 1, 3, 4),
                 "BLHNC": (1, 0, 2, 3, 4), "BLNHC": (1, 0, 3, 2, 4), "BHLNC": (1, 2, 0, 3, 4)}
LAYERS, BLOCKS, HEADS, BS, D = 3, 8, 2, 4, 3


def logical_cache(order: tuple[int, ...]) -> torch.Tensor:
    """``[L, B, H, N, 2D]`` logical view of storage laid out in ``order``; slot (l, b, h, n) holds id-based values."""
    shape = (LAYERS, BLOCKS, HEADS, BS, 2 * D)
    physical = torch.empty(tuple(shape[i] for i in order), dtype=torch.long)
    inverse = [order.index(i) for i in range(5)]
    logical = physical.permute(*inverse)
    assert logical.shape == shape
    ids = torch.arange(LAYERS * BLOCKS * HEADS * BS).view(LAYERS, BLOCKS, HEADS, BS, 1)
    logical.copy_(ids * 100 + torch.arange(2 * D))
    return logical


def slot_ids(layer: torch.Tensor, table: list[int], length: int) -> list[list[list[int]]]:
    """Per logical slot of a request: its content per head, read slot by slot (the model's reference read)."""
    return [[layer[table[i // BS], h, i % BS].tolist() for h in range(HEADS)] for i in range(length)]


REQUESTS = {  # request -> (block table: non-contiguous, interleaved with the others; length; kept slots)
    "a": ([5, 2, 7], 11, [0, 1, 4, 6, 9, 10]),  # overlapping: slot 4 -> 2 while slot 6 -> 3 ...
    "b": ([0, 3], 8, [2, 3, 4, 5, 6, 7]),  # everything shifts by two
}
IDLE = ([1, 4, 6], 10)  # a request not due: must stay byte-identical


@pytest.mark.parametrize("name", STRIDE_ORDERS)
def test_dense_moves_relocate_each_kept_token_in_every_stride_order(name):
    cache = logical_cache(STRIDE_ORDERS[name])
    before = cache.clone()
    layer = cache[1]
    expected = {r: [slot_ids(layer, table, length)[k] for k in kept] for r, (table, length, kept) in REQUESTS.items()}
    idle_before = slot_ids(layer, *IDLE)
    plans = [plan_compaction(r, table, length, torch.tensor(kept), BS) for r, (table, length, kept) in REQUESTS.items()]
    DenseStore(layer, D).move(merge_plans(plans))
    for (r, (table, _, kept)), plan in zip(REQUESTS.items(), plans):
        assert slot_ids(layer, plan.kept_blocks, len(kept)) == expected[r]
        assert plan.kept_blocks == table[: -(-len(kept) // BS)]
    assert slot_ids(layer, *IDLE) == idle_before
    assert torch.equal(cache[0], before[0]) and torch.equal(cache[2], before[2])  # other layers untouched


@pytest.mark.parametrize("name", STRIDE_ORDERS)
def test_dense_keys_are_what_the_attention_kernels_split_off(name):
    layer = logical_cache(STRIDE_ORDERS[name])[0]
    key_cache, value_cache = layer.transpose(1, 2).split(D, dim=-1)  # FlashAttentionImpl.forward's own view
    blocks = torch.tensor([[3, 3, 6], [0, 7, 7]])
    offsets = torch.tensor([[0, 2, 1], [3, 0, 3]])
    keys = DenseStore(layer, D).keys(blocks, offsets)
    assert keys.shape == (2, 3, HEADS, D)
    for i in range(2):
        for j in range(3):
            assert torch.equal(keys[i, j], key_cache[blocks[i, j], offsets[i, j]])  # [H, D]
            assert not torch.equal(keys[i, j], value_cache[blocks[i, j], offsets[i, j]])


def test_a_cache_that_is_not_the_dense_view_is_refused():
    from backends.base import BackendError

    with pytest.raises(BackendError, match="expected"):
        DenseStore(torch.zeros(4, 2, 8, 5), head_dim=3)


def flash_write_loop(key, value, key_cache, value_cache, slots) -> None:
    """``reshape_and_cache_flash``'s kernel body (``csrc/cache_kernels.cu``) one element at a time."""
    block_size = key_cache.shape[1]
    for token, slot in enumerate(slots.tolist()):
        if slot < 0:
            continue
        for head in range(key.shape[1]):
            for dim in range(key.shape[2]):
                key_cache[slot // block_size, slot % block_size, head, dim] = key[token, head, dim]
                value_cache[slot // block_size, slot % block_size, head, dim] = value[token, head, dim]


@pytest.mark.parametrize("name", STRIDE_ORDERS)
def test_the_torch_twin_of_reshape_and_cache_flash_writes_what_the_kernel_loop_writes(name):
    from backends.vllm.layouts import reshape_and_cache_flash_reference

    twin, loop = logical_cache(STRIDE_ORDERS[name])[1], logical_cache(STRIDE_ORDERS[name])[1]
    key = torch.arange(5 * HEADS * D).view(5, HEADS, D) + 10_000
    value = -key
    slots = torch.tensor([9, 0, -1, 31, 14])  # one padding slot
    for cache, write in ((twin, reshape_and_cache_flash_reference), (loop, flash_write_loop)):
        key_cache, value_cache = cache.transpose(1, 2).split(D, dim=-1)
        write(key, value, key_cache, value_cache, slots)
    assert torch.equal(twin, loop)
    assert torch.equal(twin[31 // BS, :, 31 % BS, :D], key[3]) and torch.equal(twin[31 // BS, :, 31 % BS, D:], -key[3])


@pytest.mark.parametrize("name", STRIDE_ORDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_dense_layout_probe_accepts_the_kernels_writer_in_every_stride_order(name, dtype):
    from backends.vllm.layouts import probe_dense_layout, scratch_like

    layer = logical_cache(STRIDE_ORDERS[name]).to(dtype)[1]
    scratch = scratch_like(layer)
    assert scratch.shape[1:] == layer.shape[1:]
    assert sorted(range(4), key=lambda a: -scratch.stride(a)) == sorted(range(4), key=lambda a: -layer.stride(a))
    probe_dense_layout(layer, D, flash_write_loop)


@pytest.mark.parametrize("mistake", ["keys and values swapped", "heads reversed", "slots reversed"])
def test_the_dense_layout_probe_refuses_a_writer_that_disagrees(mistake):
    from backends.base import BackendError
    from backends.vllm.layouts import probe_dense_layout

    def wrong(key, value, key_cache, value_cache, slots):
        if mistake == "keys and values swapped":
            flash_write_loop(value, key, key_cache, value_cache, slots)
        elif mistake == "heads reversed":
            flash_write_loop(key.flip(1), value.flip(1), key_cache, value_cache, slots)
        else:
            flash_write_loop(key, value, key_cache, value_cache, slots.flip(0))

    with pytest.raises(BackendError, match="GPU KV cache layout differs"):
        probe_dense_layout(logical_cache(STRIDE_ORDERS["LBNHC"])[0].float(), D, wrong)
