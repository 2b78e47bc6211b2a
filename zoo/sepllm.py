"""SepLLM: sinks + separator tokens + recent window."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zoo.base import CacheView, ModelInfo, Policy, PolicyError

SEPARATORS = frozenset(".,;:!?\n")


@dataclass
class SepLLM(Policy):
    """Keeps attention sinks, separator tokens (punctuation and line breaks, which SepLLM shows condense the
    segment before them) and the recent window; among separators the most recent win when the budget is
    short. Chen et al., 2024, "SepLLM: Accelerate Large Language Models by Compressing One Segment into One
    Separator", arXiv 2412.12094."""

    name = "sepllm"
    sinks: int = 4
    _separator_ids: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.sinks < 0:
            raise PolicyError(f"sepllm sinks must be >= 0, got {self.sinks}")

    def reserved_tokens(self) -> int:
        return self.sinks

    def prepare(self, model: ModelInfo) -> None:
        texts = (text.strip(" ") for text in model.token_texts())
        ids = [i for i, text in enumerate(texts) if text and set(text) <= SEPARATORS]
        self._separator_ids = torch.tensor(ids, dtype=torch.long)

    def protected(self, view: CacheView) -> torch.Tensor:
        return view.first_tokens(self.sinks)

    def score(self, view: CacheView) -> torch.Tensor:
        if self._separator_ids is None:
            raise PolicyError("sepllm needs the tokenizer's separator tokens: the backend did not call prepare()")
        is_sep = torch.isin(view.token_ids, self._separator_ids.to(view.token_ids.device))
        # separators outrank every non-separator; recency breaks ties inside each group
        return view.positions.float() + is_sep.float() * 1e9

