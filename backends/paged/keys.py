"""Per-layer keys of a batch of paged requests, read from the engine's cache only when a policy reads them.

A policy sees ``CacheView.keys`` as a sequence of ``[B, kv_heads, T, head_dim]`` tensors (left-padded rows, zero
where ``valid`` is False). Many policies never read keys, so nothing is gathered until a layer is indexed; each
layer is read at most once per compaction. An engine says how one layer's ``[B, T, heads, head_dim]`` keys are
gathered (``read``): vLLM from its blocks, SGLang from its token pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class LazyLayerKeys(Sequence):
    """``keys[layer]`` gathered on first use through ``read`` (subclasses), masked by ``valid`` and cached."""

    def __init__(self, num_layers: int, valid: torch.Tensor) -> None:
        self.num_layers, self.valid = num_layers, valid
        self._cache: dict[int, torch.Tensor] = {}

    def read(self, index: int) -> torch.Tensor:
        """``[B, T, kv_heads, head_dim]`` keys of layer ``index`` at every slot of the batch."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_layers

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index not in self._cache:
            keys = self.read(index)
            keys = keys.masked_fill(~self.valid.to(keys.device)[:, :, None, None], 0)
            self._cache[index] = keys.permute(0, 2, 1, 3)
        return self._cache[index]
