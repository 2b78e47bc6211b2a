"""dynts-bench CPU shim for ``sgl_kernel`` (see ``backends/sglang/cpu_shim/__init__.py``).

Only ``copy_all_layer_kv_cache_cpu`` is provided: SGLang's ``kernels/ops/kvcache/cache_move.py`` imports it at
the top under ``SGLANG_USE_CPU_ENGINE=1``. Every other name raises when called; SGLang uses the AMX kernels
(``torch.ops.sgl_kernel.*_cpu``) only on CPUs with AMX and native torch code elsewhere.
"""

from __future__ import annotations

import ctypes

import torch
from _dynts_shim import module_getattr

__version__ = "0.0.0+dynts-bench-cpu-shim"
__getattr__ = module_getattr("sgl_kernel")


def _rows(address: int, num_rows: int, row_bytes: int) -> torch.Tensor:
    buffer = (ctypes.c_uint8 * (num_rows * row_bytes)).from_address(address)
    return torch.frombuffer(buffer, dtype=torch.uint8).view(num_rows, row_bytes)


def copy_all_layer_kv_cache_cpu(data_ptrs: torch.Tensor, strides: torch.Tensor, tgt_loc: torch.Tensor,
                                src_loc: torch.Tensor) -> None:
    """For every buffer ``b`` (base address ``data_ptrs[b]``, ``strides[b]`` bytes per token row), copy row
    ``src_loc[i]`` onto row ``tgt_loc[i]``. All sources are read before any target is written, so overlapping
    locations are safe (as in SGLang's tiled Triton kernel, "safe for in-place copy")."""
    if tgt_loc.numel() != src_loc.numel():
        raise ValueError(f"{tgt_loc.numel()} target rows for {src_loc.numel()} source rows")
    if tgt_loc.numel() == 0:
        return
    src = src_loc.to("cpu", torch.long)
    tgt = tgt_loc.to("cpu", torch.long)
    if bool((src < 0).any()) or bool((tgt < 0).any()):
        raise ValueError("KV locations must be >= 0")
    rows = int(torch.maximum(src.max(), tgt.max())) + 1
    for address, stride in zip(data_ptrs.tolist(), strides.tolist()):
        view = _rows(int(address), rows, int(stride))
        view[tgt] = view[src].clone()
