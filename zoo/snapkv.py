"""SnapKV, decode-time: attention from the last queries, pooled so that clusters survive together."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoo.base import CacheView, QueryWindowPolicy, option, query_attention


@dataclass
class SnapKV(QueryWindowPolicy):
    """Scores each token by the attention it gets from the last ``obs_window`` queries (the observation
    window), pooled over neighbouring positions (kernel ``kernel_size``) so that the context around an
    important token is kept with it. Li et al., 2024, "SnapKV: LLM Knows What You are Looking for Before
    Generation", arXiv 2404.14469. SnapKV compresses the prompt once; like R-KV we re-apply it at every
    compression during decoding. Heads and layers are averaged so that every layer keeps the same set."""

    name = "snapkv"
    family = "attention-based"
    step_cost = "stores the step's query in every layer (the last obs_window kept)"
    compression_cost = "attention of obs_window queries over every cached key, per layer"
    kvpress = "SnapKVPress"
    needs = frozenset({"queries"})
    obs_window: int = option(32, "last queries whose attention scores the cache (observation window)")
    kernel_size: int = option(7, "positions pooled together, so a token's neighbours are kept with it")
    pooling: str = option("avgpool", "avgpool | maxpool: how the kernel pools")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._one_of("pooling", ("avgpool", "maxpool"))

    def score(self, view: CacheView) -> torch.Tensor:
        votes = torch.stack([probs.sum(dim=2).mean(dim=1) for probs in query_attention(view)]).mean(0)
        pad = self.kernel_size // 2
        pool = F.avg_pool1d if self.pooling == "avgpool" else F.max_pool1d
        return pool(votes.unsqueeze(1), self.kernel_size, stride=1, padding=pad).squeeze(1)
