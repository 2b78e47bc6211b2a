"""Random eviction: the floor any informed policy must beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.base import CacheView, Policy, option

_MASK = (1 << 31) - 1


def _hash(x: torch.Tensor) -> torch.Tensor:
    """A cheap integer mix (xorshift-multiply rounds, kept in 31 bits so int64 never overflows)."""
    for _ in range(3):
        x = ((x >> 15) ^ x) * 0x2C1B3C6D & _MASK
        x = ((x >> 12) ^ x) * 0x297A2D39 & _MASK
    return (x >> 15) ^ x


@dataclass
class RandomEviction(Policy):
    """Keeps a uniformly random subset of the evictable tokens (prompt and window stay protected).

    The draw is a hash of (seed, token position, tokens held), not a shared generator, so a sequence gets the
    same draws whatever else shares its batch and however often it was compressed before."""

    name = "random"
    kvpress = "RandomPress"
    seed: int = option(0, "seed of the draw (hashed with the token's position and the tokens held)")

    def score(self, view: CacheView) -> torch.Tensor:
        held = view.valid.sum(-1, keepdim=True)
        key = (view.positions.clamp(min=0) * 1_000_003 + held * 7_919 + self.seed * 104_729) & _MASK
        return _hash(key).float() / _MASK
