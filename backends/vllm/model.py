"""The directory vLLM loads for ``--model``, and the model's facts there (``backends.hf.facts.ModelFacts``).

Shared by the in-process backend and by ``serve`` (whose engine runs in vLLM's child process, where the worker
rebuilds the same facts to prepare the served policy).
"""

from __future__ import annotations

from backends.hf.facts import DTYPES, ModelFacts

__all__ = ["DTYPES", "VLLMModel", "model_directory"]


def model_directory(spec: str) -> tuple[str, str, str]:
    """(directory vLLM loads, source kind, path) for ``--model``; GGUF files are converted once, as for transformers."""
    from backends.hf import loading

    source = loading.resolve(spec)
    if source.kind == "gguf" or source.spec == loading.SMOLLM2_ALIAS:
        return str(loading.transformers_dir(source)), source.kind, source.path
    return source.path, source.kind, source.path


class VLLMModel(ModelFacts):
    """``ModelFacts`` of the directory vLLM loads (GGUF files and the SmolLM2 alias converted once)."""

    def __init__(self, model: str, dtype: str = "float32") -> None:
        path, self.source_kind, self.source_path = model_directory(model)
        super().__init__(model, path, dtype)
