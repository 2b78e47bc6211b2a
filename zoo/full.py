"""Full cache: the reference every other policy is measured against."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.base import CacheView, Policy


@dataclass
class FullCache(Policy):
    """Keeps every token; never compresses. Its cache grows to prompt + generated tokens."""

    name = "full"
    evicts = False

    def score(self, view: CacheView) -> torch.Tensor:
        return view.positions.float()
