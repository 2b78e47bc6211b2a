"""The vllm backend: every policy inside vLLM's paged KV cache, evicted blocks returned to vLLM's block pool.

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): scheduler and worker are vLLM's own,
extended through the official ``scheduler_cls`` / ``worker_cls`` engine arguments (``backends.vllm.scheduler``,
``backends.vllm.runner``); the policy is handed to the worker with ``collective_rpc``. Tokenisation is the
model's transformers tokenizer (the same calls as the transformers backend), so prompts are byte-identical.
"""

from __future__ import annotations

import os
import time
from itertools import count
from typing import Any

from backends.base import (
    BackendError,
    GenerationRequest,
    SamplingParams,
    SequenceResult,
)
from backends.paged.engine import PagedEngine
from backends.vllm.checks import (
    CAPABILITIES,
    ENGINE_ENV,
    check_engine_config,
    check_version,
    engine_flags,
    graphs_refusal,
)
from backends.vllm.model import VLLMModel
from backends.vllm.runtime import EXTRA_KEY
from zoo.base import Policy
from zoo.schedule import EvictionSchedule


def cpu_bind(ranks: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` giving each rank its own share of this process's CPUs ("0|1" for 2 on 2)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < ranks:
        raise BackendError(f"tensor parallelism over {ranks} ranks needs {ranks} CPUs, this process may use "
                           f"{len(cpus)}: lower the tensor-parallel size")
    share = len(cpus) // ranks
    return "|".join(",".join(map(str, cpus[r * share:(r + 1) * share])) for r in range(ranks))


def engine_device(device: str) -> str:
    """``cpu`` or ``cuda`` (vLLM places ranks itself: pick a GPU with ``CUDA_VISIBLE_DEVICES``); one line when the
    device is unknown or no GPU is visible."""
    if device == "cpu":
        return "cpu"
    if device not in ("cuda", "cuda:0"):
        raise BackendError(f"--device {device}: the vllm backend runs on cpu or cuda (choose the GPU with "
                           "CUDA_VISIBLE_DEVICES and pass --device cuda)")
    import torch

    if not torch.cuda.is_available():
        raise BackendError(f"--device {device} asked for, but no CUDA GPU is visible here (vLLM's CUDA build is "
                           "needed too: pip install 'dynts-bench[vllm]'): use --device cpu")
    return "cuda"


def _cpu_kv_space(kv_cache_gib: int | None, engine_args: dict[str, Any] | None) -> None:
    """vLLM's CPU platform sizes the KV pool from ``VLLM_CPU_KVCACHE_SPACE`` (GiB), which wins over any engine
    argument when set."""
    if (engine_args or {}).get("kv_cache_memory_bytes"):
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        return
    if kv_cache_gib is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


class VLLMBackend(PagedEngine, VLLMModel):
    """vLLM ``LLM`` in this process with the compacting scheduler and worker (module docstring)."""

    name = "vllm"
    capabilities = CAPABILITIES

    def __init__(
        self,
        model: str,
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int = 8,
        block_size: int = 32,
        max_model_len: int | None = None,
        kv_cache_gib: int | None = None,
        engine_args: dict[str, Any] | None = None,
        tensor_parallel: int = 1,
    ) -> None:
        check_version()
        if batch_size < 1:
            raise BackendError(f"--batch-size must be >= 1, got {batch_size}")
        self.device = engine_device(device)
        for key, value in ENGINE_ENV.items():
            os.environ[key] = value
        if self.device == "cpu":
            _cpu_kv_space(kv_cache_gib, engine_args)
        from vllm import LLM

        super().__init__(model, dtype)
        self.max_model_len = min(max_model_len or self.position_limit, self.position_limit)
        self.batch_size = batch_size
        self.block_size = block_size
        args = dict(model=self.path, tokenizer=self.path, dtype=dtype, max_model_len=self.max_model_len,
                    block_size=block_size, max_num_seqs=batch_size, seed=0, disable_log_stats=True,
                    **engine_flags(self.device))
        if self.device == "cuda" and kv_cache_gib is not None:
            args["kv_cache_memory_bytes"] = kv_cache_gib * 2**30
        if tensor_parallel > 1:
            args.update(tensor_parallel_size=tensor_parallel, distributed_executor_backend="mp")
            if self.device == "cpu":
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_bind(tensor_parallel))
        args.update(engine_args or {})
        check_engine_config(args)
        import vllm.envs

        vllm.envs.disable_envs_cache()  # an engine built earlier in this process froze the variables set above
        self.llm = LLM(**args)
        core = self.llm.llm_engine.engine_core
        self._core = getattr(core, "engine_core", None)
        if self._core is None:
            raise BackendError("the vllm backend needs the engine in-process: set VLLM_ENABLE_V1_MULTIPROCESSING=0")
        check_engine_config(self._core.vllm_config)
        self._policy: Policy | None = None
        self._ids = count()
        self.tensor_parallel = int(self._core.vllm_config.parallel_config.tensor_parallel_size)

    # ------------------------------------------------------------------ engine internals (in-process)
    @property
    def scheduler(self) -> Any:
        return self._core.scheduler

    @property
    def model_runner(self) -> Any:
        """The rank-0 model runner (in this process with one rank; under tensor parallelism use ``rpc``)."""
        if self.tensor_parallel > 1:
            raise BackendError("under tensor parallelism the model runners live in worker processes: use rpc()")
        return self._core.model_executor.driver_worker.worker.model_runner

    def rpc(self, method: str, *args: Any) -> list[Any]:
        """Call a ``CompactingCPUWorker`` method on every rank; one result per rank."""
        return self.llm.collective_rpc(method, args=args)

    @property
    def block_pool(self) -> Any:
        return self.scheduler.kv_cache_manager.block_pool

    def describe(self) -> dict[str, Any]:
        import vllm

        isas = sorted({isa for rank in self.rpc("dynts_kv_isas") for isa in rank})
        return {
            "backend": self.name,
            "engine": f"vllm {vllm.__version__}",
            "model": self.spec,
            "model_source": self.source_kind,
            "model_path": self.path,
            "architecture": (self.config.architectures or ["?"])[0],
            "dtype": self.dtype,
            "device": self.device,
            "num_layers": self.config.num_hidden_layers,
            "hidden_size": self.config.hidden_size,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "kv_blocks": self.block_pool.num_gpu_blocks,
            "max_model_len": self.max_model_len,
            "kv_layout": ",".join(isas) or None,
            "tensor_parallel": self.tensor_parallel,
        }

    # ------------------------------------------------------------------ prompts
    # ------------------------------------------------------------------ generation
    def _configure(self, policy: Policy) -> None:
        if policy is self._policy:
            return
        reason = graphs_refusal(policy.needs, bool(self._core.vllm_config.model_config.enforce_eager))
        if reason is not None:
            raise BackendError(reason)
        self.llm.collective_rpc("dynts_configure", args=(policy if policy.evicts else None, self.think_end_id))
        self._policy = policy

    def _params(self, request: GenerationRequest, schedule: EvictionSchedule | None, sampling: SamplingParams,
                key: str, ignore_eos: bool = False) -> Any:
        from vllm import SamplingParams as VSamplingParams

        return VSamplingParams(
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            seed=None if sampling.greedy else request.seed,
            stop=list(sampling.stop) or None,
            stop_token_ids=None if ignore_eos else sorted(self.eos_ids),
            ignore_eos=ignore_eos,
            skip_special_tokens=True,
            extra_args={EXTRA_KEY: {"id": key, "schedule": None if schedule is None else schedule.to_dict()}},
        )

    def _run_group(self, group: list[GenerationRequest], policy: Policy, schedule: EvictionSchedule | None,
                   sampling: SamplingParams, ignore_eos: bool = False) -> list[SequenceResult]:
        """Generate one group concurrently (``ignore_eos``: every request runs to ``max_new_tokens``, benchmarks)."""
        engine = self.llm.llm_engine
        keys: dict[str, GenerationRequest] = {}
        t0 = time.perf_counter()
        for r in group:
            key = f"{r.request_id}#{next(self._ids)}"
            keys[key] = r
            sched = (r.schedule or schedule) if policy.evicts else None
            params = self._params(r, sched, sampling, key, ignore_eos)
            engine.add_request(key, {"prompt_token_ids": list(r.prompt_ids)}, params)
        first: dict[str, float] = {}
        finished: dict[str, Any] = {}
        done_at: dict[str, float] = {}
        while len(finished) < len(keys):
            outputs = engine.step()
            now = time.perf_counter()
            for out in outputs:
                if out.request_id not in keys:
                    continue
                if out.outputs and out.outputs[0].token_ids and out.request_id not in first:
                    first[out.request_id] = now - t0
                if out.finished:
                    finished[out.request_id] = out
                    done_at[out.request_id] = now
            if not outputs and not engine.has_unfinished_requests():
                raise BackendError("the vLLM engine stopped before every request finished")
        return [self._result(key, keys[key], finished[key], first.get(key, 0.0), done_at[key] - t0, sampling)
                for key in keys]

    def _result(self, key: str, request: GenerationRequest, out: Any, ttft: float, total: float,
                sampling: SamplingParams) -> SequenceResult:
        completion = out.outputs[0]
        ids = [int(i) for i in completion.token_ids]
        text = self.decode(ids)
        if completion.finish_reason == "length":
            finish = "length"
        elif ids and ids[-1] in self.eos_ids:
            finish = "eos"
        else:
            finish = "stop"
        if finish == "stop":
            cuts = [text.find(s) for s in sampling.stop if s and s in text]
            text = text[: min(cuts)] if cuts else text
        kv = self.scheduler.kv_stats.pop(key, None)
        prompt = len(request.prompt_ids)
        peak = kv.peak_physical_tokens if kv is not None else prompt + len(ids) - 1
        extra = {"batch_size": self.batch_size, "block_size": self.block_size}
        if kv is not None:
            extra.update(kv_peak_blocks=kv.peak_blocks, kv_freed_blocks=kv.freed_blocks, preemptions=kv.preemptions,
                         kv_min_free_blocks=kv.min_free_blocks, kv_pool_blocks=self.block_pool.num_gpu_blocks)
        return SequenceResult(
            request_id=request.request_id,
            output_ids=ids,
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt,
            generated_tokens=len(ids),
            ttft_s=ttft,
            decode_s=max(0.0, total - ttft),
            kv_peak_tokens=peak,
            kv_peak_bytes=peak * self.kv_bytes_per_token,
            kv_full_bytes=(prompt + len(ids) - 1) * self.kv_bytes_per_token,
            compressions=kv.compactions if kv is not None else 0,
            policy_s=kv.policy_s if kv is not None else 0.0,
            extra=extra,
        )

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the engine may already be down
                pass
