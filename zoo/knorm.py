"""K-norm: keys with a small L2 norm draw the most attention, so they are kept."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.base import CacheView, Policy, over_keys


def key_norm_scores(keys: torch.Tensor) -> torch.Tensor:
    """``[..., B, KVH, T]``: minus each key's L2 norm (RoPE rotates keys, so pre- and post-RoPE norms are equal)."""
    return -keys.float().norm(dim=-1)


@dataclass
class KNorm(Policy):
    """Keeps the tokens whose keys have the smallest L2 norm, which correlates with high attention: no query
    is read, so it costs one norm per cached key. Devoto et al., 2024, "A Simple and Effective L2 Norm-Based
    Strategy for KV Cache Compression", arXiv 2406.11430 (kvpress ``KnormPress``). The score is averaged over
    KV heads and layers so that every layer keeps the same set."""

    name = "knorm"
    family = "key-only"
    compression_cost = "one L2 norm per cached key, per KV head and layer"
    kvpress = "KnormPress"

    def score(self, view: CacheView) -> torch.Tensor:
        norms = over_keys(view, lambda keys, _valid, _rows: key_norm_scores(keys))  # [L, B, KVH, T]
        return norms.mean(dim=2).mean(0)  # over KV heads, then layers
