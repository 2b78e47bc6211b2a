"""KeyDiff: keep the keys least like the average key."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoo.base import CacheView, Policy, key_score_mean


def key_diversity_scores(keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[..., B, KVH, T]`` (keys ``[..., B, KVH, T, D]``, any leading dims such as layers): minus each key's
    cosine similarity to the anchor, the mean of the valid unit keys of its head (padding slots do not pull the
    anchor)."""
    unit = F.normalize(keys.float(), dim=-1)
    mask = valid[:, None, :, None].to(unit.dtype)
    anchor = (unit * mask).sum(dim=-2, keepdim=True) / mask.sum(dim=-2, keepdim=True).clamp(min=1)
    return -F.cosine_similarity(keys.float(), anchor, dim=-1)


@dataclass
class KeyDiff(Policy):
    """Keeps the tokens whose keys point away from the average key direction: evicts the ones most similar
    to it, which carry the least distinct information, with no attention computed. Park et al., 2025,
    "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM Inference in Resource-Constrained
    Environments", arXiv 2504.15364 (kvpress ``KeyDiffPress``; the paper's block-wise prefill is kvpress's
    ``BlockPress``, which the decode-time schedule replaces). Averaged over KV heads and layers so that every
    layer keeps the same set."""

    name = "keydiff"
    family = "key-only"
    compression_cost = "one cosine similarity per cached key to its head's mean key, per layer"
    kvpress = "KeyDiffPress"

    def score(self, view: CacheView) -> torch.Tensor:
        return key_score_mean(view, lambda keys: key_diversity_scores(keys, view.valid))
