"""Reproducibility facts (code version, package versions, hardware) recorded with every result."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# Result key -> distribution name as installed by pip.
_DISTRIBUTIONS: dict[str, str] = {
    "torch": "torch",
    "transformers": "transformers",
    "typer": "typer",
    "rich": "rich",
    "safetensors": "safetensors",
    "numpy": "numpy",
    "vllm": "vllm",
    "sglang": "sglang",
    "lm_eval": "lm_eval",
    "dynts-bench": "dynts-bench",
}

_GIT_TIMEOUT_S = 10.0


def _git(root: Path, *args: str) -> str | None:
    """Run ``git -C root args``; stdout stripped, or None on any failure (git missing, not a repo, timeout)."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip()


def git_sha(root: Path | None = None) -> str | None:
    """SHA of HEAD of the repo containing ``root`` (default: this package), ``-dirty`` if tracked files changed.

    Untracked files do not count as dirty: result directories and caches live in the work tree.
    Returns None when git is missing, ``root`` is not in a checkout, or the repo has no commits yet.
    """
    where = Path(root) if root is not None else Path(__file__).resolve().parent
    if not where.is_dir():
        return None
    sha = _git(where, "rev-parse", "--verify", "--quiet", "HEAD")
    if not sha:
        return None
    status = _git(where, "status", "--porcelain", "--untracked-files=no")
    if status:  # None (status failed) is treated as clean rather than guessing
        return f"{sha}-dirty"
    return sha


def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    """Versions of Python and the packages that affect results; None for those not installed."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in _DISTRIBUTIONS.items():
        versions[key] = _dist_version(dist)
    return versions


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


#: the instruction-set features that decide which CPU kernels torch (and vLLM's CPU attention) run
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def _cpu_isa() -> list[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":
                    present = set(value.split())
                    return [flag for flag in ISA_FLAGS if flag in present]
    except OSError:
        pass
    return None


def _total_ram_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except (ImportError, OSError):
        return None


def _nvml_driver_version() -> str | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except pynvml.NVMLError:
        return None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _torch_facts() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"torch_threads": None, "cuda": False, "gpus": []}
    facts: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    cuda = bool(torch.cuda.is_available())
    facts["cuda"] = cuda
    if not cuda:
        facts["gpus"] = []
        return facts
    gpus: list[dict[str, Any]] = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append(
            {
                "name": props.name,
                "total_memory_bytes": int(props.total_memory),
                "capability": f"{props.major}.{props.minor}",
            }
        )
    facts["gpus"] = gpus
    facts["cuda_version"] = torch.version.cuda
    facts["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    facts["driver_version"] = _nvml_driver_version()
    return facts


def hardware() -> dict[str, Any]:
    """Host and accelerator description. ``gpus`` lists only devices visible to torch (CUDA_VISIBLE_DEVICES)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_isa": _cpu_isa(),
        "cpu_count_logical": os.cpu_count(),
        "ram_total_bytes": _total_ram_bytes(),
    }
    info.update(_torch_facts())
    return info


def environment() -> dict[str, Any]:
    """Everything above in one JSON-serialisable dict: ``{"git_sha", "versions", "hardware"}``."""
    return {"git_sha": git_sha(), "versions": package_versions(), "hardware": hardware()}
