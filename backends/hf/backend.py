"""The transformers backend: any causal LM from a directory, a GGUF file or the hub, under any policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from backends.base import (
    PROTOCOLS,
    BackendError,
    Capabilities,
    GenerationRequest,
    OnBatch,
    SamplingParams,
    SequenceResult,
    check_schedules,
)
from backends.hf import loading
from backends.hf.compiled import check_compile, compile_parts
from backends.hf.decode import ModelParts, generate_batch
from backends.hf.tokenizer import TokenizerText, eos_ids_of
from zoo.base import OBSERVATIONS, ModelInfo, Policy
from zoo.schedule import EvictionSchedule


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Exact bytes one token occupies in the KV cache of every layer: keys and values."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * torch.empty((), dtype=dtype).element_size()


class TransformersBackend(TokenizerText):
    """Runs the project's decode loop (``backends.hf.decode``) on a transformers model: every observation and
    every protocol. Code that needs more than the backend contract (the decode loop's parts, the model itself:
    replay, bench, the predictor pipeline) is typed against this class."""

    name = "transformers"
    capabilities = Capabilities(observations=OBSERVATIONS, protocols=PROTOCOLS)

    def __init__(self, model: str, dtype: str = "float32", device: str = "cpu", batch_size: int = 8,
                 compile: bool = False) -> None:
        """``compile``: the decode step as CUDA graphs (``backends.hf.compiled``; refused off CUDA)."""
        if batch_size < 1:
            raise BackendError(f"--batch-size must be >= 1, got {batch_size}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"--device {device} asked for, but no CUDA GPU is visible: use --device cpu")
        if compile:
            check_compile(torch.device(device))
        self.model, self.tokenizer, self.source = loading.load(model, dtype=dtype, device=device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dtype = dtype
        config = self.model.config
        self.parts = ModelParts(
            decoder=self.model.get_decoder(),
            lm_head=self.model.get_output_embeddings(),
            num_layers=config.num_hidden_layers,
            kv_bytes_per_token=kv_bytes_per_token(config, self.model.dtype),
            eos_ids=self._eos_ids(),
            pad_id=self._pad_id(),
            think_end_id=self._token_id("</think>"),
            decode_text=lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
        )
        self.compiled = compile
        if compile:
            self.parts = compile_parts(self.parts, self.device)

    # ------------------------------------------------------------------ model facts
    def _eos_ids(self) -> frozenset[int]:
        return eos_ids_of(self.model.generation_config, self.model.config, self.tokenizer)

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else min(self._eos_ids(), default=0)

    def _token_id(self, text: str) -> int | None:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    def model_info(self) -> ModelInfo:
        config = self.model.config
        tokenizer = self.tokenizer
        return ModelInfo(
            model_id=self.source.spec,
            name_or_path=str(getattr(config, "_name_or_path", "") or self.source.path),
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            token_texts=lambda: [tokenizer.decode([i]) for i in range(len(tokenizer))],
            think_end_id=self.parts.think_end_id,
            kv_bytes_per_token=self.parts.kv_bytes_per_token,
            eos_ids=self.parts.eos_ids,
            vocab_size=len(tokenizer),
        )

    def describe(self) -> dict[str, Any]:
        config = self.model.config
        return {
            "backend": self.name,
            "model": self.source.spec,
            "model_source": self.source.kind,
            "model_path": self.source.path,
            "architecture": type(self.model).__name__,
            "dtype": self.dtype,
            "device": str(self.device),
            "num_layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "kv_bytes_per_token": self.parts.kv_bytes_per_token,
            "batch_size": self.batch_size,
        }

    # ------------------------------------------------------------------ generation
    def prepare(self, policy: Policy) -> None:
        if self.compiled:
            check_compile(self.device, policy)
        policy.prepare(self.model_info())

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        policy: Policy,
        schedule: EvictionSchedule | None,
        sampling: SamplingParams,
        on_batch: OnBatch | None = None,
    ) -> list[SequenceResult]:
        """Generate in batches of ``batch_size``; ``on_batch`` sees each batch's results as soon as it is done."""
        check_schedules(requests, policy, schedule)
        results: list[SequenceResult] = []
        for start in range(0, len(requests), self.batch_size):
            batch = list(requests[start : start + self.batch_size])
            done = generate_batch(self.parts, batch, policy, schedule, sampling, self.device)
            results.extend(done)
            if on_batch is not None:
                on_batch(done)
        return results

    def close(self) -> None:
        """Drop the model; on a GPU its memory goes back to the caching allocator's free pool."""
        self.model = None  # type: ignore[assignment]
        self.parts = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
