"""SepLLM: sinks + separator tokens + recent window."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zoo.base import CacheView, ModelInfo, PolicyError, SinkPolicy

SEPARATORS = frozenset(".,;:!?\n")


@dataclass
class SepLLM(SinkPolicy):
    """Keeps attention sinks, separator tokens (punctuation and line breaks, which SepLLM shows condense the
    segment before them) and the recent window; among separators the most recent win when the budget is
    short. Chen et al., 2024, "SepLLM: Accelerate Large Language Models by Compressing One Segment into One
    Separator", arXiv 2412.12094."""

    name = "sepllm"
    _separator_ids: torch.Tensor | None = field(default=None, init=False, repr=False)

    def prepare(self, model: ModelInfo) -> None:
        texts = (text.strip(" ") for text in model.token_texts())
        ids = [i for i, text in enumerate(texts) if text and set(text) <= SEPARATORS]
        self._separator_ids = torch.tensor(ids, dtype=torch.long)

    def score(self, view: CacheView) -> torch.Tensor:
        if self._separator_ids is None:
            raise PolicyError("sepllm needs the tokenizer's separator tokens: the backend did not call prepare()")
        is_sep = torch.isin(view.token_ids, self._separator_ids.to(view.token_ids.device))
        # separators outrank every non-separator; recency breaks ties inside each group. The offset is the
        # longest position + 1, not a huge constant: float32 represents these sums exactly, so no two slots tie
        offset = view.positions.max().clamp(min=0) + 1
        return view.positions.float() + is_sep.float() * offset.float()

