"""Local window: keep only the most recent tokens (plus the prompt unless prompt eviction is allowed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.base import CacheView, Policy


@dataclass
class LocalWindow(Policy):
    """Keeps the most recent tokens: sliding-window attention as in Longformer (Beltagy et al., 2020,
    arXiv 2004.05150). The simplest baseline; everything older than the budget is forgotten."""

    name = "window"

    def score(self, view: CacheView) -> torch.Tensor:
        return view.positions.float()
