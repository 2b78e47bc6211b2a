"""The vllm adapter's GPU compaction on CUDA tensors, against the same on CPU, without vLLM.

    python -m benchmarks.paged_gpu_check [--device cuda] [--reference cpu]

``WorkerRuntime.compact`` (the worker runtime of ``backends.vllm``: ``backends.paged`` plans, ``DenseStore`` moves and
key reads, SnapKV scoring over the lazily read keys and the stored queries) runs on a stand-in model runner whose
KV caches are vLLM's GPU view (``(blocks, heads, block_size, 2 * head_dim)`` over memory in each of the six stride
orders of ``vllm/v1/kv_cache_layout.py``), written through ``reshape_and_cache_flash``'s torch twin, in float32 and
bfloat16. Per stride order and dtype one line says whether the compacted caches hold exactly the kept tokens'
keys and values, in order, and whether the kept sets equal those of the same compaction on ``--reference`` (CPU).
Exit 1 on a failed case. Needs torch only (the lent GPU machine has no
engine); ``benchmarks/gpu_check.sh`` runs it. ``tests/vllm/test_dense_runtime.py`` uses the stand-in runner with
vLLM's own ``FullAttentionSpec`` on CPU.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import torch

from backends.paged.state import RequestState
from backends.vllm import runtime as runtime_module
from backends.vllm.layouts import reshape_and_cache_flash_reference
from backends.vllm.runtime import WorkerRuntime
from zoo import build_policy
from zoo.base import Policy
from zoo.schedule import EvictionSchedule

#: KVCacheLayout members of vLLM 0.32: a stride permutation of the logical axes [L, B, H, N, C]
STRIDE_ORDERS = {"LBHNC": (0, 1, 2, 3, 4), "LBNHC": (0, 1, 3, 2, 4), "LHBNC": (0, 2, 1, 3, 4),
                 "BLHNC": (1, 0, 2, 3, 4), "BLNHC": (1, 0, 3, 2, 4), "BHLNC": (1, 2, 0, 3, 4)}
LAYERS, BLOCKS, KV_HEADS, HEADS, BS, D, WINDOW = 2, 12, 2, 4, 4, 8, 4
SCHEDULE = EvictionSchedule(budget=12, interval=4, window=3)
#: request -> (block table: non-contiguous, interleaved with the other's; physical length; prompt length)
REQUESTS = {"a": ([7, 2, 9, 4], 16, 5), "b": ([0, 5, 11, 3, 8], 19, 6)}


class _Backend:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_name(self) -> str:
        return self.name


class FakeAttention(torch.nn.Module):
    """What the runtime reads of vLLM's ``Attention`` layer on a GPU backend."""

    def __init__(self, kv_cache: torch.Tensor, backend: str = "FLASH_ATTN") -> None:
        super().__init__()
        self.kv_cache, self.attn_backend, self.num_heads = kv_cache, _Backend(backend), HEADS
        self._k_scale = self._v_scale = torch.ones((), device=kv_cache.device)


def dense_caches(order: tuple[int, ...], device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Per layer the logical ``(B, H, N, 2D)`` view of one ``[L, B, H, N, 2D]`` tensor stored in ``order``."""
    shape = (LAYERS, BLOCKS, KV_HEADS, BS, 2 * D)
    physical = torch.zeros(tuple(shape[i] for i in order), device=device, dtype=dtype)
    logical = physical.permute(*[order.index(i) for i in range(5)])
    return [logical[layer] for layer in range(LAYERS)]


def fake_runner(caches: list[torch.Tensor], spec: Any, backend: str = "FLASH_ATTN") -> SimpleNamespace:
    """The model runner attributes ``WorkerRuntime`` reads (``spec``: the KV cache group's spec)."""
    names = [f"model.layers.{i}.self_attn.attn" for i in range(LAYERS)]
    table = SimpleNamespace(block_size=BS, block_table=SimpleNamespace(np=np.zeros((4, 8), dtype=np.int32)),
                            num_blocks_per_row=np.zeros(4, dtype=np.int32))
    return SimpleNamespace(
        kv_cache_config=SimpleNamespace(kv_cache_groups=[SimpleNamespace(kv_cache_spec=spec, layer_names=names)]),
        compilation_config=SimpleNamespace(static_forward_context={
            n: FakeAttention(c, backend) for n, c in zip(names, caches)}),
        input_batch=SimpleNamespace(block_table=[table], req_id_to_index={}, token_ids_cpu=np.zeros((4, 64), np.int64)),
        max_model_len=64, requests={})


def snapkv() -> Policy:
    return build_policy("snapkv", obs_window=WINDOW, kernel_size=3)


def build_runtime(runner: SimpleNamespace, policy: Any, full_attention: bool | None = None) -> WorkerRuntime:
    """``full_attention``: stands in for vLLM's ``FullAttentionSpec`` check where vLLM is absent (None: vLLM's)."""
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(runtime_module, "_tensor_parallel_group", return_value=None))
        if full_attention is not None:
            stack.enter_context(mock.patch.object(runtime_module, "_is_full_attention", return_value=full_attention))
        return WorkerRuntime(runner, policy, None, dense_writer=reshape_and_cache_flash_reference)


def truth(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per request: keys and values ``[L, T, H, 2D]`` and its last queries ``[L, WINDOW, HEADS, D]``."""
    gen = torch.Generator().manual_seed(seed)
    return {r: (torch.randn(LAYERS, length, KV_HEADS, 2 * D, generator=gen),
                torch.randn(LAYERS, WINDOW, HEADS, D, generator=gen)) for r, (_, length, _) in REQUESTS.items()}


def compact(order: tuple[int, ...], device: str, dtype: torch.dtype, data: dict[str, Any], spec: Any = None,
            ) -> tuple[list[torch.Tensor], dict[str, list[int]], dict[str, Any]]:
    """Fill the caches with ``data``, compact both requests once; (caches, kept logical tokens, reports)."""
    caches = dense_caches(order, device, dtype)
    runner = fake_runner(caches, spec if spec is not None else "full attention")
    runtime = build_runtime(runner, snapkv(), None if spec is not None else True)
    due = []
    for row, (r, (table, length, prompt)) in enumerate(REQUESTS.items()):
        kv, queries = data[r]
        slots = torch.tensor([table[s // BS] * BS + s % BS for s in range(length)], device=device)
        for layer, cache in enumerate(caches):
            key_cache, value_cache = cache.transpose(1, 2).split(D, dim=-1)
            part = kv[layer].to(device)
            reshape_and_cache_flash_reference(part[..., :D], part[..., D:], key_cache, value_cache, slots)
        st = RequestState(r, r, SCHEDULE, prompt, 64)
        st.physical = length
        st.query_row = runtime.queries.acquire()
        for layer in range(LAYERS):
            runtime.queries.write(layer, torch.full((WINDOW,), st.query_row), torch.arange(length - WINDOW, length),
                                  queries[layer].to(device))
        runtime.requests[r] = st
        runner.requests[r] = SimpleNamespace(block_ids=[list(table)])
        runner.input_batch.req_id_to_index[r] = row
        runner.input_batch.block_table[0].num_blocks_per_row[row] = len(table)
        due.append(st)
    reports = runtime.compact(runner, due)
    kept = {r: runtime.requests[r].logical_map().tolist() for r in REQUESTS}
    return caches, kept, reports


def holds_kept(caches: list[torch.Tensor], kept: dict[str, list[int]], data: dict[str, Any]) -> bool:
    """Every request's first slots hold exactly its kept tokens' keys and values, in order (the move is right)."""
    for r, tokens in kept.items():
        table = REQUESTS[r][0]
        for layer, cache in enumerate(caches):
            got = torch.stack([cache[table[s // BS], :, s % BS] for s in range(len(tokens))]).cpu()
            if not torch.equal(got, data[r][0][layer, tokens].to(cache.dtype)):
                return False
    return True


def compare(device: str, reference: str) -> list[tuple[str, bool, str]]:
    """(case, agrees, detail) per stride order and dtype. A case passes when the compacted caches hold exactly
    the kept tokens and the kept sets equal the reference device's; in bfloat16 SnapKV's scores are rounded,
    so the two devices may break a near-tie differently: there a kept-set difference is reported, not failed."""
    data = truth()
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for name, order in STRIDE_ORDERS.items():
            got_caches, got_kept, _ = compact(order, device, dtype, data)
            _, want_kept, _ = compact(order, reference, dtype, data)
            moved = holds_kept(got_caches, got_kept, data)
            same = got_kept == want_kept
            ok = moved and (same or dtype is torch.bfloat16)
            kept = ", ".join(f"{r} keeps {len(k)}/{REQUESTS[r][1]}" for r, k in got_kept.items())
            rows.append((f"{name} {str(dtype).removeprefix('torch.')}", ok,
                         f"{kept}; caches hold {'exactly the kept tokens' if moved else 'WRONG tokens'}; kept sets "
                         f"{'equal to' if same else 'DIFFER from'} {reference}'s"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reference", default="cpu")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU is visible: run this on the GPU machine (or pass --device cpu to check the script)")
        return 2
    rows = compare(args.device, args.reference)
    for case, ok, detail in rows:
        print(f"{'PASS' if ok else 'FAIL'} paged compaction {args.device} vs {args.reference}, {case}: {detail}")
    return 0 if all(ok for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
