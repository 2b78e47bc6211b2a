"""Process and GPU measurement: peak RSS, CUDA peak memory, and an NVML sampler thread (memory, utilisation,
energy) on NVIDIA GPUs. Aggregation of the per-sample rows is ``harness.results.summary``."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
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
