"""Observed attention at decode time: the current query's attention, per query that could have given it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.base import CacheView, Policy, last_query_attention, valid_to_newest


def later_tokens(valid: torch.Tensor) -> torch.Tensor:
    """``[B, T]``: how many valid slots, itself included, each slot has from it to the newest (>= 1)."""
    return valid_to_newest(valid).clamp(min=1)


@dataclass
class ObservedAttention(Policy):
    """Keeps the tokens with the most attention from the latest query, each divided by the number of tokens
    from it to the newest: kvpress's ``ObservedAttentionPress`` as a ``DecodingPress`` base, which sees only the
    step's attention and keeps its prefill normalisation (the count of queries that could attend to a token),
    so older tokens need more attention to stay than under ``tova``. Related to H2O (Zhang et al., 2023,
    arXiv 2306.14048), which accumulates every step's attention instead (``h2o``). Averaged over heads and
    layers so that every layer keeps the same set."""

    name = "observed"
    needs = frozenset({"queries"})
    family = "attention-based"
    step_cost = "stores the step's query in every layer (the last one kept)"
    compression_cost = "attention of the last query over every cached key, per layer"
    kvpress = "ObservedAttentionPress"

    @property
    def query_window(self) -> int:
        return 1

    def score(self, view: CacheView) -> torch.Tensor:
        return last_query_attention(view) / later_tokens(view.valid)
