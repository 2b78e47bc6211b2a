"""The sglang backend: every policy inside SGLang's token pool, evicted slots returned to its allocator.

An in-process ``sglang.Engine`` (its scheduler runs in a process SGLang spawns) with the flags the adapter needs
(``checks.REQUIRED``); the plugin's hooks (``backends.sglang.plugin``, loaded by SGLang from the entry point)
compact in the scheduler. The policy reaches the scheduler once per policy through
``Engine.collective_rpc("dynts_configure", ...)`` (pickled: SGLang's RPC carries scalars only); per-request
schedules travel in ``SamplingParams.custom_params``; per-request KV figures come back as one JSON file per
request in a scratch directory. ``Engine.generate`` returns whole groups; per request, the scheduler stamps the
wall-clock time its prefill produced the first token and the time it finished: ``ttft_s`` is submission to first
token (queueing included: a group is submitted at once), ``decode_s`` first token to finish. (SGLang's own
``first_token_latency`` needs ``enable_metrics``, whose process-global Prometheus registry refuses a second engine
in one process.) Tokenisation is the model's transformers
tokenizer (``TokenizerText``), so prompts are byte-identical to the transformers backend's.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import tempfile
import time
import warnings
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.base import BackendError, GenerationRequest, SamplingParams, SequenceResult
from backends.hf.facts import DTYPES, ModelFacts
from backends.paged.engine import PagedEngine
from backends.sglang.checks import CAPABILITIES, check_engine_args, check_version, policy_refusal
from backends.sglang.runtime import request_options
from zoo.base import Policy
from zoo.schedule import EvictionSchedule

if TYPE_CHECKING:
    import sglang


def engine_args(model: str, device: str, dtype: str, batch_size: int, max_model_len: int,
                kv_tokens: int | None) -> dict[str, Any]:
    """``sglang.Engine`` keywords: the adapter's flags plus what the harness controls."""
    args: dict[str, Any] = dict(
        model_path=model, tokenizer_path=model, device=device, dtype=dtype, page_size=1, disable_radix_cache=True,
        disable_overlap_schedule=True, disable_cuda_graph=True, max_running_requests=batch_size,
        context_length=max_model_len, random_seed=0, tp_size=1, skip_server_warmup=True, log_level="error",
    )
    if device == "cpu":
        args.update(attention_backend="torch_native", sampling_backend="pytorch")
    else:  # graphs replay without Python hooks; FlashInfer reads the NHD pool at page size 1 on every NVIDIA GPU
        args.update(attention_backend="flashinfer", disable_prefill_cuda_graph=True, disable_decode_cuda_graph=True,
                    enable_torch_compile=False)
    # SGLang sizes its pool from free memory (on CPU: a fraction of the machine's RAM); a full cache for every
    # running request is what any schedule can need, and keeps the engine from taking the machine
    args["max_total_tokens"] = kv_tokens if kv_tokens is not None else batch_size * max_model_len
    return args


def _child_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children() if "resource_tracker" not in " ".join(_cmdline(p))}


def _cmdline(process: Any) -> list[str]:
    try:
        return process.cmdline()
    except Exception:  # noqa: BLE001 - gone or inaccessible: not ours to spare
        return []


def _shutdown_own(engine: sglang.Engine, own_pids: list[int]) -> None:
    """``Engine.shutdown`` kills every child process of this process (``kill_process_tree(os.getpid())``), so
    closing one engine would take down another engine's scheduler -- whose watchdog then SIGQUITs this process.
    For the call, that blanket kill is narrowed to this engine's own children."""
    import sglang.srt.entrypoints.engine as engine_module

    blanket = engine_module.kill_process_tree

    def kill_own(parent_pid: int | None = None, include_parent: bool = True, skip_pid: int | None = None,
                 wait_timeout: float | None = 60) -> None:
        if parent_pid not in (None, os.getpid()):
            return blanket(parent_pid, include_parent, skip_pid, wait_timeout)
        for pid in own_pids:
            blanket(pid, True, skip_pid, wait_timeout)

    engine_module.kill_process_tree = kill_own
    try:
        engine.shutdown()
    finally:
        engine_module.kill_process_tree = blanket


def prepare_cpu() -> None:
    """SGLang's CPU platform and the CPU shim (torchvision / sgl_kernel stand-ins), before SGLang is imported."""
    os.environ["SGLANG_USE_CPU_ENGINE"] = "1"
    # "Only CUDA ... support AWQ / GGUF", "Triton is not supported on current platform": true, and not ours to act on
    warnings.filterwarnings("ignore", category=UserWarning, module=r"sglang\.")
    from backends.sglang.cpu_shim import activate

    activate()


class SGLangBackend(PagedEngine, ModelFacts):
    """``sglang.Engine`` with the dynts_bench plugin (module docstring)."""

    name = "sglang"
    capabilities = CAPABILITIES

    def __init__(self, model: str, dtype: str = "float32", device: str = "cpu", batch_size: int = 8,
                 max_model_len: int | None = None, kv_tokens: int | None = None,
                 engine_kwargs: dict[str, Any] | None = None) -> None:
        check_version()
        if batch_size < 1:
            raise BackendError(f"--batch-size must be >= 1, got {batch_size}")
        if dtype not in DTYPES:
            raise BackendError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        if device != "cpu" and not device.startswith("cuda"):
            raise BackendError(f"--device {device}: the sglang backend runs on cpu or cuda")
        if device == "cpu":
            prepare_cpu()
        super().__init__(model, dtype)  # the directory it loads: GGUF converted once, as for transformers
        limit = self.position_limit
        self.max_model_len = min(max_model_len or limit, limit)
        self.batch_size, self.dtype, self.device = batch_size, dtype, "cpu" if device == "cpu" else "cuda"
        args = engine_args(self.path, self.device, dtype, batch_size, self.max_model_len, kv_tokens)
        args.update(engine_kwargs or {})
        check_engine_args(args)
        self.engine_args = args
        import sglang

        self._stats_dir = Path(tempfile.mkdtemp(prefix="dynts-sglang-"))
        before = _child_pids()
        self.engine = sglang.Engine(**args)
        self._own_pids = sorted(_child_pids() - before)  # this engine's scheduler and detokenizer
        self._policy: Policy | None = None
        self._ids = count()

    def describe(self) -> dict[str, Any]:
        import sglang

        return {
            "backend": self.name, "engine": f"sglang {sglang.__version__}", "model": self.spec,
            "model_source": self.source_kind, "model_path": self.path,
            "architecture": (self.config.architectures or ["?"])[0], "dtype": self.dtype, "device": self.device,
            "num_layers": self.config.num_hidden_layers, "hidden_size": self.config.hidden_size,
            "kv_bytes_per_token": self.kv_bytes_per_token, "batch_size": self.batch_size, "page_size": 1,
            "max_model_len": self.max_model_len,
            "attention_backend": self.engine_args.get("attention_backend"),
        }

    # ------------------------------------------------------------------ generation
    def _configure(self, policy: Policy) -> None:
        if policy is self._policy:
            return
        reason = policy_refusal(self.engine_args, policy.needs)
        if reason is not None:
            raise BackendError(reason)
        # a policy that never evicts is configured too: the scheduler then tracks pool use and timing the same way
        blob = base64.b64encode(pickle.dumps(policy)).decode()
        try:
            self.engine.collective_rpc("dynts_configure", policy_b64=blob, think_end_id=self.think_end_id,
                                       stats_dir=str(self._stats_dir))
        except AssertionError as err:  # SGLang asserts the RPC's success; its message is the scheduler's error
            raise BackendError(f"SGLang's scheduler refused the policy: {err}") from None
        self._policy = policy

    def _params(self, sampling: SamplingParams, request: GenerationRequest, key: str,
                schedule: EvictionSchedule | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 else -1, "stop_token_ids": sorted(self.eos_ids),
            "custom_params": request_options(key, schedule), "skip_special_tokens": True,
        }
        if sampling.stop:
            params["stop"] = list(sampling.stop)
        if not sampling.greedy:
            params["sampling_seed"] = request.seed
        return params

    def _run_group(self, group: list[GenerationRequest], policy: Policy, schedule: EvictionSchedule | None,
                   sampling: SamplingParams) -> list[SequenceResult]:
        keys = [f"{r.request_id}#{next(self._ids)}" for r in group]
        params = [self._params(sampling, r, k, (r.schedule or schedule) if policy.evicts else None)
                  for r, k in zip(group, keys)]
        submitted, t0 = time.time(), time.perf_counter()
        outs = self.engine.generate(input_ids=[list(r.prompt_ids) for r in group], sampling_params=params)
        total = time.perf_counter() - t0
        return [self._result(k, r, o, total, sampling, submitted) for k, r, o in zip(keys, group, outs)]

    def _result(self, key: str, request: GenerationRequest, out: dict[str, Any], total: float,
                sampling: SamplingParams, submitted: float) -> SequenceResult:
        ids = [int(i) for i in out["output_ids"]]
        meta = out.get("meta_info", {})
        text = self.decode(ids)
        reason = (meta.get("finish_reason") or {}).get("type")
        finish = "length" if reason == "length" else ("eos" if ids and ids[-1] in self.eos_ids else "stop")
        if finish == "stop":
            cuts = [text.find(s) for s in sampling.stop if s and s in text]
            text = text[: min(cuts)] if cuts else text
        stats_file = self._stats_dir / f"{key}.json"
        kv = json.loads(stats_file.read_text()) if stats_file.exists() else None
        prompt = len(request.prompt_ids)
        peak = kv["peak_physical_tokens"] if kv else prompt + len(ids) - 1
        extra: dict[str, Any] = {"batch_size": self.batch_size, "page_size": 1}
        if kv:
            extra.update(kv_freed_slots=kv["freed_slots"], kv_min_free_slots=kv["min_free_slots"],
                         kv_retractions=kv.get("retractions", 0))
        if kv and kv.get("first_token_ts"):  # wall-clock stamps from the scheduler process, same clock
            ttft, decode = kv["first_token_ts"] - submitted, kv["finished_ts"] - kv["first_token_ts"]
        else:
            ttft, decode = 0.0, float(meta.get("e2e_latency") or total)
        return SequenceResult(
            request_id=request.request_id, output_ids=ids, text=text, finish_reason=finish, prompt_tokens=prompt,
            generated_tokens=len(ids), ttft_s=ttft, decode_s=decode,
            kv_peak_tokens=peak, kv_peak_bytes=peak * self.kv_bytes_per_token,
            kv_full_bytes=(prompt + len(ids) - 1) * self.kv_bytes_per_token,
            compressions=kv["compactions"] if kv else 0, policy_s=kv["policy_s"] if kv else 0.0, extra=extra,
        )

    def close(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            try:
                _shutdown_own(engine, getattr(self, "_own_pids", []))
            except Exception:  # noqa: BLE001 - best effort: the engine may already be down
                pass
        stats_dir = getattr(self, "_stats_dir", None)
        if stats_dir is not None:
            shutil.rmtree(stats_dir, ignore_errors=True)
