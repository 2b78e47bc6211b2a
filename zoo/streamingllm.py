"""StreamingLLM: attention sinks + recent window."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.base import CacheView, Policy, PolicyError


@dataclass
class StreamingLLM(Policy):
    """Keeps the first ``sinks`` tokens (attention sinks) and the most recent ones. Xiao et al., 2023,
    "Efficient Streaming Language Models with Attention Sinks", arXiv 2309.17453 (4 sink tokens by default)."""

    name = "streamingllm"
    sinks: int = 4

    def __post_init__(self) -> None:
        if self.sinks < 0:
            raise PolicyError(f"streamingllm sinks must be >= 0, got {self.sinks}")

    def reserved_tokens(self) -> int:
        return self.sinks

    def protected(self, view: CacheView) -> torch.Tensor:
        return view.first_tokens(self.sinks)

    def score(self, view: CacheView) -> torch.Tensor:
        return view.positions.float()
