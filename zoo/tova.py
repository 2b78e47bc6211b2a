"""TOVA: evict the token the current query attends to least."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.base import CacheView, Policy, last_query_attention


@dataclass
class TOVA(Policy):
    """Token Omission Via Attention: keeps the tokens with the highest attention from the latest query,
    averaged over heads (and here over layers, so every layer keeps the same set). Oren et al., 2024,
    "Transformers are Multi-State RNNs", arXiv 2401.06104."""

    name = "tova"
    family = "attention-based"
    step_cost = "stores the step's query in every layer (the last one kept)"
    compression_cost = "attention of the last query over every cached key, per layer"
    kvpress = "TOVAPress"
    needs = frozenset({"queries"})

    @property
    def query_window(self) -> int:
        return 1

    def score(self, view: CacheView) -> torch.Tensor:
        return last_query_attention(view)
