"""KeyDiff: keep the keys least like the average key."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.base import CacheView, Policy, over_keys

_NORM_EPS, _COSINE_EPS = 1e-12, 1e-8  # F.normalize's and F.cosine_similarity's defaults


def key_diversity_scores(keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[..., B, KVH, T]`` (keys ``[..., B, KVH, T, D]``, any leading dims such as layers, all in one batched
    product): minus each key's cosine similarity to the anchor, the mean of the valid unit keys of its head
    (padding slots do not pull the anchor)."""
    k = keys.float()
    norms = k.norm(dim=-1)  # [B, KVH, T]
    # three passes over the keys (norms, anchor, dot products) instead of materialising the unit keys
    weights = valid[:, None, :] / norms.clamp(min=_NORM_EPS)  # each valid key as a unit vector, padding as 0
    count = valid.sum(-1).clamp(min=1)[:, None, None, None]
    anchor = (weights.unsqueeze(-2) @ k) / count  # [B, KVH, 1, D]
    dots = (k @ anchor.transpose(-1, -2)).squeeze(-1)
    return -dots / (norms * anchor.norm(dim=-1)).clamp(min=_COSINE_EPS)  # F.cosine_similarity's guard


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
        # [L, B, KVH, T]; in one call (a dozen operations each): cheaper than one per run of neighbouring rows
        scores = over_keys(view, lambda keys, valid, _rows: key_diversity_scores(keys, valid), together=True)
        return scores.mean(dim=2).mean(0)  # over KV heads, then layers
