"""Process/GPU resource measurement and run-level aggregation of per-sample metrics."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

_T = TypeVar("_T")


def _quiet(fn: Callable[[], _T]) -> _T | None:
    """``fn()``, or None if it raises: GPU probes are optional and must never abort a benchmark."""
    try:
        return fn()
    except Exception:  # noqa: BLE001 - NVML/driver failures come in many types; all mean "not available"
        return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes."""
    try:
        import resource
    except ImportError:  # Windows: no getrusage; psutil reports the peak working set there
        import psutil

        mem = psutil.Process().memory_info()
        return int(getattr(mem, "peak_wset", mem.rss))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux/BSD but bytes on macOS.
    return int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024


def _default_device_index() -> int:
    try:
        import torch
    except ImportError:
        return 0
    if not torch.cuda.is_available():
        return 0
    index = _quiet(torch.cuda.current_device)
    return 0 if index is None else int(index)


def _torch_uuid(index: int) -> str | None:
    """NVML-style UUID (``GPU-…``) of torch device ``index``, or None if torch cannot tell."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    uuid = _quiet(lambda: str(torch.cuda.get_device_properties(index).uuid))
    if not uuid:
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


class NvmlSampler:
    """Samples one NVIDIA GPU in a background thread while the ``with`` block runs.

    ``device_index`` is a CUDA (torch) index, so it is mapped to the NVML device by UUID: NVML ignores
    CUDA_VISIBLE_DEVICES, so torch's device 0 need not be NVML's device 0. Without torch/CUDA it is used as
    the NVML index directly. Memory is device-wide (``used`` from NVML, all processes), not this process's.

    Never raises for a missing library, driver or GPU: ``summary()`` then reports ``{"nvml": "unavailable"}``.
    """

    def __init__(self, interval_s: float = 0.1, device_index: int | None = None) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = float(interval_s)
        self.device_index = _default_device_index() if device_index is None else int(device_index)
        self._nvml: Any = None
        self._handle: Any = None
        self._gpu_name: str | None = None
        self._reason: str | None = "sampler not started"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._t_start = 0.0
        self._t_end: float | None = None
        self._samples = 0
        self._mem_peak = 0
        self._util: list[float] = []
        self._energy_start_mj: int | None = None
        self._energy_end_mj: int | None = None
        self._power_j = 0.0  # trapezoid-integrated power, used when the energy counter is unsupported
        self._last_power: tuple[float, float] | None = None  # (t, watts)

    # --- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> NvmlSampler:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("NvmlSampler already started; use a new instance per measurement")
        self._reason = self._init_nvml()
        if self._reason is not None:
            return
        self._t_start = time.monotonic()
        self._energy_start_mj = self._read_energy_mj()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample()  # catch the tail after the last tick
        self._energy_end_mj = self._read_energy_mj()
        self._t_end = time.monotonic()
        _quiet(self._nvml.nvmlShutdown)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _init_nvml(self) -> str | None:
        """Initialise NVML and the device handle; a short reason string on failure, None on success."""
        try:
            import pynvml
        except ImportError as exc:
            return f"pynvml not importable ({type(exc).__name__}); pip install nvidia-ml-py"
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVMLError subclasses, OSError for a missing libnvidia-ml
            return f"nvmlInit failed: {_short(exc)}"
        try:
            count = int(pynvml.nvmlDeviceGetCount())
            if count == 0:
                raise _Unavailable("no NVIDIA GPU found")
            handle = None
            uuid = _torch_uuid(self.device_index)
            if uuid is not None:
                handle = _quiet(lambda: pynvml.nvmlDeviceGetHandleByUUID(uuid))
            if handle is None:
                if not 0 <= self.device_index < count:
                    raise _Unavailable(f"device_index {self.device_index} out of range ({count} GPU(s))")
                handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_index)
            name = pynvml.nvmlDeviceGetName(handle)
        except Exception as exc:  # noqa: BLE001 - reported in summary() instead of failing the run
            _quiet(pynvml.nvmlShutdown)
            return str(exc) if isinstance(exc, _Unavailable) else f"NVML device query failed: {_short(exc)}"
        self._nvml = pynvml
        self._handle = handle
        self._gpu_name = name.decode() if isinstance(name, bytes) else str(name)
        return None

    # --- sampling --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _read_energy_mj(self) -> int | None:
        # NotSupported on pre-Volta and some virtualised GPUs; then power is integrated instead.
        return _quiet(lambda: int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)))

    def _sample(self) -> None:
        """One reading of each metric; each is optional, since drivers leave some unsupported."""
        nvml, handle = self._nvml, self._handle
        now = time.monotonic()
        mem = _quiet(lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).used))
        util = _quiet(lambda: float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
        watts = _quiet(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0)  # mW -> W
        with self._lock:
            self._samples += 1
            if mem is not None:
                self._mem_peak = max(self._mem_peak, mem)
            if util is not None:
                self._util.append(util)
            if watts is not None:
                if self._last_power is not None:
                    t0, w0 = self._last_power
                    self._power_j += 0.5 * (w0 + watts) * (now - t0)
                self._last_power = (now, watts)

    # --- results ---------------------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Aggregates so far (final once the ``with`` block has exited)."""
        if self._reason is not None:
            return {"nvml": "unavailable", "reason": self._reason}
        with self._lock:
            end = self._t_end if self._t_end is not None else time.monotonic()
            energy_j: float | None
            if self._energy_start_mj is not None and self._energy_end_mj is not None:
                energy_j = (self._energy_end_mj - self._energy_start_mj) / 1000.0
            elif self._last_power is not None:
                energy_j = self._power_j
            else:
                energy_j = None
            util = list(self._util)
            return {
                "nvml": "ok",
                "gpu_name": self._gpu_name,
                "memory_used_peak_bytes": self._mem_peak,
                "utilization_mean_pct": sum(util) / len(util) if util else None,
                "utilization_max_pct": max(util) if util else None,
                "energy_j": energy_j,
                "samples": self._samples,
                "duration_s": end - self._t_start,
            }


class _Unavailable(Exception):
    pass


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def cuda_memory() -> dict[str, int]:
    """torch's peak allocated/reserved CUDA memory on the current device since the last reset; {} without CUDA."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    return {
        "cuda_max_memory_allocated_bytes": int(torch.cuda.max_memory_allocated()),
        "cuda_max_memory_reserved_bytes": int(torch.cuda.max_memory_reserved()),
    }


def reset_cuda_peak() -> None:
    """Reset torch's CUDA peak-memory counters (no-op without CUDA)."""
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


# --- run-level aggregation -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Percentile ``q`` in [0, 100] by linear interpolation between closest ranks (numpy's default method).

    For sorted x of length n the position is ``(n - 1) * q / 100``; e.g. p50 of [1, 2, 3, 4] is 2.5.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    xs = sorted(float(v) for v in values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _values(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    """Numeric values of ``key``, skipping rows where it is missing or None (e.g. a failed sample)."""
    out: list[float] = []
    for row in rows:
        v = row.get(key)
        if v is not None and not isinstance(v, bool):
            out.append(v)
    return out


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize_samples(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Run-level aggregates over per-sample metric rows. Units are the key suffixes (_s, _bytes, _pct).

    Each statistic uses the rows that have the key (None/missing values are skipped); statistics with no
    values are None. Percentiles use linear interpolation (see :func:`percentile`). ``tokens_per_s`` is
    end-to-end throughput: total generated tokens / total (ttft_s + decode_s). ``kv_saving_ratio`` is
    mean full-cache bytes / mean peak (compressed) bytes, so 4.0 means the policy kept a quarter of the cache.
    """
    if not rows:
        return {"n_samples": 0}
    out: dict[str, Any] = {"n_samples": len(rows)}

    prompt = _values(rows, "prompt_tokens")
    generated = _values(rows, "generated_tokens")
    out["total_prompt_tokens"] = int(sum(prompt))
    out["total_generated_tokens"] = int(sum(generated))

    for key, name, unit in (
        ("ttft_s", "ttft", "s"),
        ("decode_s", "decode", "s"),
        ("decode_tokens_per_s", "decode", "tokens_per_s"),
    ):
        xs = _values(rows, key)
        out[f"{name}_mean_{unit}"] = _mean(xs)
        out[f"{name}_p50_{unit}"] = percentile(xs, 50)
        out[f"{name}_p90_{unit}"] = percentile(xs, 90)

    total_time = sum(_values(rows, "ttft_s")) + sum(_values(rows, "decode_s"))
    out["tokens_per_s"] = sum(generated) / total_time if total_time > 0 else None

    peak = _values(rows, "kv_peak_bytes")
    full = _values(rows, "kv_full_bytes")
    out["kv_peak_max_bytes"] = int(max(peak)) if peak else None
    out["kv_peak_mean_bytes"] = _mean(peak)
    out["kv_full_max_bytes"] = int(max(full)) if full else None
    out["kv_full_mean_bytes"] = _mean(full)
    peak_mean, full_mean = out["kv_peak_mean_bytes"], out["kv_full_mean_bytes"]
    out["kv_saving_ratio"] = full_mean / peak_mean if peak_mean and full_mean is not None else None

    compressions = _values(rows, "compressions")
    out["total_compressions"] = int(sum(compressions)) if compressions else None
    out["mean_compressions"] = _mean(compressions)

    policy = _values(rows, "policy_s")
    decode_total = sum(_values(rows, "decode_s"))
    out["total_policy_s"] = sum(policy) if policy else None
    out["policy_overhead_pct"] = 100.0 * sum(policy) / decode_total if policy and decode_total > 0 else None

    reasons = [str(r["finish_reason"]) for r in rows if r.get("finish_reason") is not None]
    if reasons:
        out["finish_reasons"] = dict(sorted(Counter(reasons).items()))
    return out
