"""The directory vLLM loads for ``--model``, and the model's facts there (``backends.hf.facts.ModelFacts``).

Shared by the in-process backend and by ``serve`` (whose engine runs in vLLM's child process, where the worker
rebuilds the same facts to prepare the served policy).
"""

from __future__ import annotations

from backends.hf.facts import DTYPES, ModelFacts, model_directory

__all__ = ["DTYPES", "VLLMModel", "model_directory"]


class VLLMModel(ModelFacts):
    """``ModelFacts`` of the directory vLLM loads (GGUF files and the SmolLM2 alias converted once)."""
