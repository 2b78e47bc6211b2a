"""StreamingLLM: attention sinks + recent window."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.base import CacheView, SinkPolicy


@dataclass
class StreamingLLM(SinkPolicy):
    """Keeps the first ``sinks`` tokens (attention sinks) and the most recent ones. Xiao et al., 2023,
    "Efficient Streaming Language Models with Attention Sinks", arXiv 2309.17453 (4 sink tokens by default)."""

    name = "streamingllm"
    kvpress = "StreamingLLMPress"

    def score(self, view: CacheView) -> torch.Tensor:
        return view.positions.float()
