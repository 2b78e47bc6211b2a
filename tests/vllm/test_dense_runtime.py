"""The worker runtime's GPU branch on CPU tensors: vLLM's GPU attention backends' dense KV view
(``(blocks, heads, block_size, 2 * head_dim)`` over memory in each of the six stride orders of
``vllm/v1/kv_cache_layout.py``), written by ``reshape_and_cache_flash``'s torch twin, compacted by
``WorkerRuntime.compact`` under SnapKV (which reads keys and queries). The expectation is SnapKV run directly on
each request's keys and queries as contiguous tensors -- what the transformers backend's cache hands it -- and a
plain list of the kept tokens' vectors."""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

from vllm.v1.kv_cache_interface import FullAttentionSpec  # noqa: E402

from backends.base import BackendError  # noqa: E402
from backends.vllm import runtime as runtime_module  # noqa: E402
from backends.vllm.layouts import reshape_and_cache_flash_reference  # noqa: E402
from backends.vllm.runtime import WorkerRuntime  # noqa: E402
from backends.vllm.state import RequestState  # noqa: E402
from zoo import build_policy  # noqa: E402
from zoo.base import CacheView  # noqa: E402
from zoo.schedule import EvictionSchedule  # noqa: E402

STRIDE_ORDERS = {"LBHNC": (0, 1, 2, 3, 4), "LBNHC": (0, 1, 3, 2, 4), "LHBNC": (0, 2, 1, 3, 4),
                 "BLHNC": (1, 0, 2, 3, 4), "BLNHC": (1, 0, 3, 2, 4), "BHLNC": (1, 2, 0, 3, 4)}
LAYERS, BLOCKS, KV_HEADS, HEADS, BS, D = 2, 12, 2, 4, 4, 8
SCHEDULE = EvictionSchedule(budget=12, interval=4, window=3)
REQUESTS = {"a": ([7, 2, 9, 4], 16, 5), "b": ([0, 5, 11, 3, 8], 19, 6)}  # block table, physical length, prompt


class Backend:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_name(self) -> str:
        return self.name


class FakeAttention(torch.nn.Module):
    """What the runtime reads of vLLM's ``Attention`` layer on a GPU backend."""

    def __init__(self, kv_cache: torch.Tensor, backend: str = "FLASH_ATTN") -> None:
        super().__init__()
        self.kv_cache, self.attn_backend, self.num_heads = kv_cache, Backend(backend), HEADS
        self._k_scale = self._v_scale = torch.ones(())


def dense_caches(order: tuple[int, ...]) -> list[torch.Tensor]:
    """Per layer the logical ``(B, H, N, 2D)`` view of one ``[L, B, H, N, 2D]`` tensor stored in ``order``."""
    shape = (LAYERS, BLOCKS, KV_HEADS, BS, 2 * D)
    physical = torch.zeros(tuple(shape[i] for i in order))
    logical = physical.permute(*[order.index(i) for i in range(5)])
    return [logical[layer] for layer in range(LAYERS)]


def fake_runner(caches: list[torch.Tensor], backend: str = "FLASH_ATTN") -> SimpleNamespace:
    names = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]
    spec = FullAttentionSpec(BS, num_kv_heads=KV_HEADS, head_size=D, dtype=torch.float32)
    table = SimpleNamespace(block_size=BS, block_table=SimpleNamespace(np=np.zeros((4, 8), dtype=np.int32)),
                            num_blocks_per_row=np.zeros(4, dtype=np.int32))
    return SimpleNamespace(
        kv_cache_config=SimpleNamespace(kv_cache_groups=[SimpleNamespace(kv_cache_spec=spec, layer_names=names)]),
        compilation_config=SimpleNamespace(static_forward_context={
            n: FakeAttention(c, backend) for n, c in zip(names, caches)}),
        input_batch=SimpleNamespace(block_table=[table], req_id_to_index={}, token_ids_cpu=np.zeros((4, 64), np.int64)),
        max_model_len=64, requests={})


def build_runtime(runner: SimpleNamespace) -> WorkerRuntime:
    policy = build_policy("snapkv", obs_window=4, kernel_size=3)
    with mock.patch.object(runtime_module, "_tensor_parallel_group", return_value=None):
        return WorkerRuntime(runner, policy, None, dense_writer=reshape_and_cache_flash_reference)


def test_every_stride_order_gives_the_kept_sets_and_vectors_snapkv_picks_on_contiguous_tensors():
    gen = torch.Generator().manual_seed(0)
    truth = {r: (torch.randn(LAYERS, length, KV_HEADS, 2 * D, generator=gen),
                 torch.randn(LAYERS, 4, HEADS, D, generator=gen)) for r, (_, length, _) in REQUESTS.items()}
    expected_kept = {}
    for r, (_, length, prompt) in REQUESTS.items():
        kv, queries = truth[r]
        view = CacheView(valid=torch.ones(1, length, dtype=torch.bool), positions=torch.arange(length)[None],
                         token_ids=torch.zeros(1, length, dtype=torch.long),
                         is_prompt=(torch.arange(length) < prompt)[None],
                         keys=[kv[layer, :, :, :D].permute(1, 0, 2)[None] for layer in range(LAYERS)],
                         queries=[queries[layer].permute(1, 0, 2)[None] for layer in range(LAYERS)],
                         query_valid=torch.ones(1, 4, dtype=torch.bool))
        policy = build_policy("snapkv", obs_window=4, kernel_size=3)
        keep = torch.tensor([SCHEDULE.keep_count(length, prompt)])
        kept, kept_valid = policy.select(policy.score(view), view, keep, SCHEDULE.window, SCHEDULE.protect_prompt)
        expected_kept[r] = kept[0][kept_valid[0]].tolist()
    for name, order in STRIDE_ORDERS.items():
        caches = dense_caches(order)
        runner = fake_runner(caches)
        runtime = build_runtime(runner)
        assert runtime.layout_name == "dense"
        due = []
        for row, (r, (table, length, prompt)) in enumerate(REQUESTS.items()):
            kv, queries = truth[r]
            slots = torch.tensor([table[s // BS] * BS + s % BS for s in range(length)])
            for layer, cache in enumerate(caches):
                key_cache, value_cache = cache.transpose(1, 2).split(D, dim=-1)
                reshape_and_cache_flash_reference(kv[layer, :, :, :D], kv[layer, :, :, D:], key_cache, value_cache,
                                                  slots)
            st = RequestState(r, r, SCHEDULE, prompt, 64)
            st.physical = length
            st.query_row = runtime.queries.acquire()
            for layer in range(LAYERS):
                runtime.queries.write(layer, torch.full((4,), st.query_row), torch.arange(length - 4, length),
                                      queries[layer])
            runtime.requests[r] = st
            runner.requests[r] = SimpleNamespace(block_ids=[list(table)])
            runner.input_batch.req_id_to_index[r] = row
            runner.input_batch.block_table[0].num_blocks_per_row[row] = len(table)
            due.append(st)
        reports = runtime.compact(runner, due)
        for r, (table, length, _) in REQUESTS.items():
            kept = expected_kept[r]
            assert runtime.requests[r].logical_map().tolist() == kept, name
            assert reports[r].physical_after == len(kept) and reports[r].dropped == length - len(kept)
            assert reports[r].kept_blocks == -(-len(kept) // BS)
            kv = truth[r][0]
            for layer, cache in enumerate(caches):
                got = torch.stack([cache[table[s // BS], :, s % BS] for s in range(len(kept))])
                assert torch.equal(got, kv[layer, kept]), (name, r, layer)


def test_an_attention_backend_whose_layout_was_not_read_is_refused_with_one_line():
    with pytest.raises(BackendError, match="FLEX_ATTENTION attention backend") as raised:
        build_runtime(fake_runner(dense_caches(STRIDE_ORDERS["LBHNC"]), backend="FLEX_ATTENTION"))
    assert "\n" not in str(raised.value)


def test_a_writer_that_disagrees_with_the_dense_view_is_refused_at_start():
    def heads_swapped(key, value, key_cache, value_cache, slots):
        reshape_and_cache_flash_reference(key.flip(1), value.flip(1), key_cache, value_cache, slots)

    policy = build_policy("snapkv", obs_window=4, kernel_size=3)
    with mock.patch.object(runtime_module, "_tensor_parallel_group", return_value=None):
        with pytest.raises(BackendError, match="GPU KV cache layout differs"):
            WorkerRuntime(fake_runner(dense_caches(STRIDE_ORDERS["BLNHC"])), policy, None, dense_writer=heads_swapped)
