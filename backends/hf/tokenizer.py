"""The text side of the contract for any backend that tokenizes with a transformers tokenizer (the transformers
and vLLM backends): one implementation, so both encode prompts byte-identically."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase


def eos_ids_of(*sources: Any) -> frozenset[int]:
    """Every ``eos_token_id`` (an int or a list) of the given configs / tokenizer; ``None`` sources skipped."""
    ids: set[int] = set()
    for source in sources:
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(i) for i in eos)
    return frozenset(ids)


class TokenizerText:
    """``encode_prompt`` / ``encode`` / ``decode`` / ``chat_template`` / ``render_chat`` over ``self.tokenizer``."""

    tokenizer: PreTrainedTokenizerBase

    def encode_prompt(self, text: str, chat: bool = True) -> list[int]:
        """Token ids of a prompt; with ``chat`` the tokenizer's chat template wraps it as a user turn."""
        if chat and self.tokenizer.chat_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        return self.tokenizer.encode(text)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
