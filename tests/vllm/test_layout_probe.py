"""The KV layout maps against vLLM's real ``cpu_attn_reshape_and_cache`` on this machine's build."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: backends/vllm/install_cpu_env.sh makes its venv")
import torch

from backends.vllm.layouts import layout_for, probe_layout


def write(key, value, key_cache, value_cache, slots, isa):
    from vllm import _custom_ops as ops

    ops.cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, slots, isa)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("isa,head_dim", [("vec", 32), ("vec", 64), ("vec", 128), ("vec16", 80)])
def test_vec_layouts_match_the_kernel(isa, head_dim, dtype):
    probe_layout(layout_for(isa, 32, head_dim, dtype), dtype, write)


def test_amx_layout_matches_the_kernel_where_amx_exists():
    if not torch.cpu._is_amx_tile_supported():
        pytest.skip("no AMX tiles on this CPU: the amx map is checked on synthetic tensors only")
    probe_layout(layout_for("amx", 32, 64, torch.bfloat16), torch.bfloat16, write)


def test_the_isa_this_machine_picks_is_known():
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    for dtype in (torch.float32, torch.bfloat16):
        for head_dim in (32, 64, 80, 128):
            layout_for(_get_attn_isa(dtype, 32, head_dim), 32, head_dim, dtype)


def test_the_transcribed_gpu_stride_orders_are_vllms():
    from vllm.v1.kv_cache_layout import KVCacheLayout

    from tests.test_paged_dense import STRIDE_ORDERS

    assert {m.name: m.value for m in KVCacheLayout} == STRIDE_ORDERS
