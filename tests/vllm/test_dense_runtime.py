"""The worker runtime's GPU branch on CPU tensors: vLLM's GPU attention backends' dense KV view
(``(blocks, heads, block_size, 2 * head_dim)`` over memory in each of the six stride orders of
``vllm/v1/kv_cache_layout.py``), written by ``reshape_and_cache_flash``'s torch twin, compacted by
``WorkerRuntime.compact`` under SnapKV (which reads keys and queries), on the stand-in model runner of
``benchmarks/paged_gpu_check.py`` with vLLM's own ``FullAttentionSpec``. The expectation is SnapKV run directly on
each request's keys and queries as contiguous tensors -- what the transformers backend's cache hands it -- and the
kept tokens' own vectors."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from vllm.v1.kv_cache_interface import FullAttentionSpec  # noqa: E402

import benchmarks.paged_gpu_check as check  # noqa: E402
from backends.base import BackendError  # noqa: E402
from backends.vllm import runtime as runtime_module  # noqa: E402
from backends.vllm.layouts import reshape_and_cache_flash_reference  # noqa: E402
from backends.vllm.runtime import WorkerRuntime  # noqa: E402
from zoo.base import CacheView  # noqa: E402

SPEC = FullAttentionSpec(check.BS, num_kv_heads=check.KV_HEADS, head_size=check.D, dtype=torch.float32)


def transformers_kept(data) -> dict[str, list[int]]:
    """SnapKV's kept tokens per request, from contiguous ``[B, H, T, D]`` keys and ``[B, H, w, D]`` queries."""
    out = {}
    for r, (_, length, prompt) in check.REQUESTS.items():
        kv, queries = data[r]
        view = CacheView(valid=torch.ones(1, length, dtype=torch.bool), positions=torch.arange(length)[None],
                         token_ids=torch.zeros(1, length, dtype=torch.long),
                         is_prompt=(torch.arange(length) < prompt)[None],
                         keys=[kv[layer, :, :, : check.D].permute(1, 0, 2)[None] for layer in range(check.LAYERS)],
                         queries=[queries[layer].permute(1, 0, 2)[None] for layer in range(check.LAYERS)],
                         query_valid=torch.ones(1, check.WINDOW, dtype=torch.bool))
        policy, schedule = check.snapkv(), check.SCHEDULE
        keep = torch.tensor([schedule.keep_count(length, prompt)])
        kept, kept_valid = policy.select(policy.score(view), view, keep, schedule.window, schedule.protect_prompt)
        out[r] = kept[0][kept_valid[0]].tolist()
    return out


@pytest.mark.parametrize("name", check.STRIDE_ORDERS)
def test_every_stride_order_gives_the_kept_sets_and_vectors_snapkv_picks_on_contiguous_tensors(name):
    data = check.truth()
    expected = transformers_kept(data)
    caches, kept, reports = check.compact(check.STRIDE_ORDERS[name], "cpu", torch.float32, data, spec=SPEC)
    assert kept == expected
    for r, (table, length, _) in check.REQUESTS.items():
        assert reports[r].physical_after == len(expected[r]) and reports[r].dropped == length - len(expected[r])
        assert reports[r].kept_blocks == -(-len(expected[r]) // check.BS)
        for layer, cache in enumerate(caches):
            got = torch.stack([cache[table[s // check.BS], :, s % check.BS] for s in range(len(expected[r]))])
            assert torch.equal(got, data[r][0][layer, expected[r]]), (r, layer)


def test_the_runtime_finds_the_dense_layout_on_a_gpu_backends_layers():
    runtime = check.build_runtime(check.fake_runner(check.dense_caches((0, 1, 2, 3, 4)), SPEC), check.snapkv())
    assert runtime.layout_name == "dense" and runtime.device == torch.device("cpu")


def test_an_attention_backend_whose_layout_was_not_read_is_refused_with_one_line():
    runner = check.fake_runner(check.dense_caches((0, 1, 2, 3, 4)), SPEC, backend="FLEX_ATTENTION")
    with pytest.raises(BackendError, match="FLEX_ATTENTION attention backend") as raised:
        check.build_runtime(runner, check.snapkv())
    assert "\n" not in str(raised.value)


def test_a_writer_that_disagrees_with_the_dense_view_is_refused_at_start(monkeypatch):
    def heads_swapped(key, value, key_cache, value_cache, slots):
        reshape_and_cache_flash_reference(key.flip(1), value.flip(1), key_cache, value_cache, slots)

    monkeypatch.setattr(runtime_module, "_tensor_parallel_group", lambda: None)
    runner = check.fake_runner(check.dense_caches((1, 0, 3, 2, 4)), SPEC)
    with pytest.raises(BackendError, match="GPU KV cache layout differs"):
        WorkerRuntime(runner, check.snapkv(), None, dense_writer=heads_swapped)


def test_a_sliding_window_group_is_refused(monkeypatch):
    from vllm.v1.kv_cache_interface import SlidingWindowSpec

    spec = SlidingWindowSpec(check.BS, num_kv_heads=check.KV_HEADS, head_size=check.D, dtype=torch.float32,
                             sliding_window=8)
    with pytest.raises(BackendError, match="one full-attention KV cache group"):
        check.build_runtime(check.fake_runner(check.dense_caches((0, 1, 2, 3, 4)), spec), check.snapkv())
