"""What the sglang backend demands and refuses, each with one line: it fails closed rather than run an engine
configuration whose token accounting it has not been verified against."""

from __future__ import annotations

import os
from typing import Any

from backends.base import BackendError, Capabilities
from backends.paged.release import check_release, installed_release

#: hidden states and recent queries; H2O's per-step attention would need a kernel; no forced tokens, no bench
CAPABILITIES = Capabilities(observations=frozenset({"hidden", "queries"}), protocols=frozenset({"generate"}))
#: the release the adapter is verified against (extra ``[sglang]`` pins the same one)
PINNED_SGLANG = "0.5.23"
#: SGLang's attention backends on CUDA whose pool layout at page size 1 is the NHD one the adapter remaps
CUDA_ATTENTION_BACKENDS = ("fa3", "flashinfer", "triton")
#: SGLang's switch to a (pages, heads, page, head_dim) pool layout, which the adapter does not read
HND_ENV = "SGLANG_USE_HND_KVCACHE"
#: engine arguments the adapter needs, set by the backend and demanded of any engine the plugin serves
REQUIRED = {
    "disable_radix_cache": True,  # a compacted row no longer holds the tokens a prefix-tree node names
    "disable_overlap_schedule": True,  # compaction edits the batch between steps; overlap runs one step ahead
    "page_size": 1,  # token-major pool: compaction rewrites req_to_token, no KV is copied
}
_WHY = {
    "disable_radix_cache": "--disable-radix-cache (a compacted request no longer holds the tokens its prefix names)",
    "disable_overlap_schedule": "--disable-overlap-schedule (compaction edits the batch between two steps)",
    "page_size": "--page-size 1 (compaction remaps single token slots)",
}


def installed_sglang() -> str | None:
    return installed_release("sglang")


def check_version(found: str | None = None) -> None:
    check_release(installed_sglang() if found is None else found, PINNED_SGLANG,
                  "SGLang is not installed: pip install 'dynts-bench[sglang]' (GPU) or, on CPU, run "
                  "backends/sglang/install_cpu_env.sh",
                  f"the sglang backend is verified against SGLang {PINNED_SGLANG}, found {{found}}: "
                  f"pip install 'sglang=={PINNED_SGLANG}'")


def refusal(args: Any) -> str | None:
    """Why the engine arguments (a dict of ``sglang.Engine`` keywords, or a ``ServerArgs``) cannot run, or None."""
    get = args.get if isinstance(args, dict) else lambda key, default=None: getattr(args, key, default)
    for key, value in REQUIRED.items():
        if get(key) != value:
            return f"the sglang backend needs {_WHY[key]}, got {key}={get(key)!r}"
    if get("speculative_algorithm"):
        return "speculative decoding is configured: the sglang backend does not support it (drop speculative_algorithm)"
    for key in ("tp_size", "pp_size", "dp_size"):
        if int(get(key) or 1) > 1:
            return f"{key}={get(key)}: the sglang backend is verified on one rank only (set {key}=1)"
    if get("kv_cache_dtype") not in (None, "auto"):
        return (f"quantised KV cache ({get('kv_cache_dtype')}) is configured: the sglang backend needs "
                "kv_cache_dtype='auto'")
    if get("enable_mixed_chunk"):
        return "--enable-mixed-chunk is on: the sglang backend compacts decode batches only (drop it)"
    if str(get("device") or "").startswith("cuda"):
        return _cuda_refusal(get)
    return None


def _cuda_refusal(get: Any) -> str | None:
    if not get("disable_cuda_graph"):
        return "CUDA graphs are on: the sglang backend needs --disable-cuda-graph (replayed graphs skip its hooks)"
    if os.environ.get(HND_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return (f"{HND_ENV} is set: the sglang backend reads the pool's NHD layout (size, heads, head_dim) only; "
                f"unset {HND_ENV}")
    for key in ("attention_backend", "prefill_attention_backend", "decode_attention_backend"):
        value = get(key)
        if (value is not None or key == "attention_backend") and value not in CUDA_ATTENTION_BACKENDS:
            return (f"{key}={value!r}: the sglang backend runs on CUDA with attention_backend one of "
                    f"{', '.join(CUDA_ATTENTION_BACKENDS)} (page size 1; TRTLLM MHA and FA4 need larger pages)")
    return None


def policy_refusal(args: Any, needs: frozenset[str]) -> str | None:
    """Why ``args`` cannot serve a policy that needs ``needs``: on CUDA, a policy reading queries (captured by a
    hook on ``RadixAttention.forward``) needs prefill (piecewise) CUDA graphs and torch.compile off, whose
    replayed or compiled forwards may skip the hook."""
    get = args.get if isinstance(args, dict) else lambda key, default=None: getattr(args, key, default)
    if not str(get("device") or "").startswith("cuda") or "queries" not in needs:
        return None
    if not get("disable_prefill_cuda_graph"):
        return ("prefill CUDA graphs are on and the policy reads queries through a hook they may skip: pass "
                "disable_prefill_cuda_graph=True")
    if get("enable_torch_compile"):
        return "torch.compile is on and the policy reads queries through a hook it may skip: drop enable_torch_compile"
    return None


def check_engine_args(args: Any) -> None:
    reason = refusal(args)
    if reason is not None:
        raise BackendError(reason)
