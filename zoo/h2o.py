"""H2O: heavy hitters by accumulated attention + recent window."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.base import CacheView, Policy


@dataclass
class HeavyHitterOracle(Policy):
    """Keeps the "heavy hitters": tokens with the largest attention accumulated over every decoding step
    (summed over heads and queries, averaged over layers), next to the recent window. Zhang et al., 2023,
    "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models", arXiv 2306.14048.
    The only policy that needs attention at every step, so it costs an extra attention pass per layer."""

    name = "h2o"
    family = "attention-based"
    step_cost = "an extra attention pass per layer, accumulating what every cached token receives"
    needs = frozenset({"attention"})

    def score(self, view: CacheView) -> torch.Tensor:
        return view.state["attention"]
