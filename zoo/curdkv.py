"""CurDKV's key leverage: squared key norms, normalised within local windows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.base import CacheView, SinkPolicy, option, over_keys


def squared_key_norms(keys: torch.Tensor) -> torch.Tensor:
    """``[..., T]``: each key's squared L2 norm (keys ``[..., T, D]``), its energy."""
    return keys.float().pow(2).sum(-1)


def local_leverage(energy: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    """``[..., B, KVH, T]`` from key energies ``[..., B, KVH, T]`` (any leading dims such as layers): each
    energy over the sum in its window of ``window`` consecutive valid slots (counted from the oldest; ``window``
    0: over the whole cache), then over the head's total, so the scores of a head sum to 1. Invalid slots
    score 0."""
    energy = energy * valid[:, None, :]
    if window > 0:
        group = ((valid.long().cumsum(-1) - 1).clamp(min=0) // window)[:, None, :].expand_as(energy)
        totals = torch.zeros_like(energy).scatter_add_(-1, group, energy)
        energy = energy / totals.gather(-1, group).clamp(min=torch.finfo(energy.dtype).tiny)
    return energy / energy.sum(-1, keepdim=True).clamp(min=torch.finfo(energy.dtype).tiny)


def local_key_leverage(keys: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    """``local_leverage`` of the keys ``[..., B, KVH, T, D]``."""
    return local_leverage(squared_key_norms(keys), valid, window)


@dataclass
class CurDKV(SinkPolicy):
    """Keeps the tokens with the largest key leverage, approximated by the squared key norm relative to the
    ``local_window`` keys around it (``local_window`` 0: relative to the whole cache), plus ``sinks`` attention
    sinks. Sengupta et al., 2025, "Value-Guided KV Compression for LLMs via Approximated CUR Decomposition",
    arXiv 2509.15038, as kvpress's ``CURPress(leverage_type="key")``. The paper's default multiplies in the value
    leverage, which needs value vectors: no engine hands those to a policy, so only the key leverage is here.
    Averaged over KV heads and layers so that every layer keeps the same set."""

    name = "curdkv"
    family = "key-only"
    compression_cost = "one squared norm per cached key and a sum per window, per KV head and layer"
    kvpress = "CURPress"
    local_window: int = option(16, "keys around each token its leverage is relative to (0: the whole cache)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._at_least("local_window", 0)

    def score(self, view: CacheView) -> torch.Tensor:
        energy = over_keys(view, lambda keys, _valid, _rows: squared_key_norms(keys))  # [L, B, KVH, T]
        return local_leverage(energy, view.valid, self.local_window).mean(dim=2).mean(0)  # over KV heads, layers
