"""The tiny reasoners' word-level tokenizers: every word of a task is one token.

Values are single tokens, so retrieving a value is copying one token (an induction head), not re-assembling
digits. Saved as a standard ``tokenizer.json`` + chat template, so ``AutoTokenizer.from_pretrained`` loads it.
Each embedded task has its own vocabulary (:data:`SUM_VOCABULARY`, :data:`PROGRAM_VOCABULARY`); the module-level
names (``VOCAB``, ``TOKEN_ID``, ``encode``, ...) are the first task's, which the shipped tiny reasoner uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.tinyreasoner import program
from harness.tinyreasoner.problems import DIGITS, PROMPT_NAMES, RESULT_NAMES, THINK_CLOSE, THINK_OPEN, WORDS

PAD, EOS, UNK, USER, ASSISTANT = "<pad>", "<eos>", "<unk>", "<user>", "<assistant>"
SPECIALS = (PAD, EOS, UNK, USER, ASSISTANT)

# The generation prompt opens the thinking section, as R1-style chat templates do.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}<user> {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}<assistant> {{ message['content'] }} <eos> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant> <think>{% endif %}"
)


@dataclass(frozen=True)
class Vocabulary:
    """A task's tokens (specials first, so ``<pad>`` is 0 and ``<eos>`` 1 in every task) and their ids."""

    tokens: tuple[str, ...]
    token_id: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("a vocabulary lists every token once")
        object.__setattr__(self, "token_id", {token: i for i, token in enumerate(self.tokens)})

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.token_id.get(t, self.token_id[UNK]) for t in tokens]

    def build_tokenizer(self):
        """A ``PreTrainedTokenizerFast`` over the tokens (whitespace-split words, decoded with spaces)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        core = Tokenizer(models.WordLevel(vocab=self.token_id, unk_token=UNK))
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
            additional_special_tokens=[USER, ASSISTANT],
        )
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.padding_side = "left"
        return tokenizer

    def save_tokenizer(self, directory: Path) -> None:
        self.build_tokenizer().save_pretrained(directory)


SUM_VOCABULARY = Vocabulary((*SPECIALS, THINK_OPEN, THINK_CLOSE, *WORDS, *DIGITS, *PROMPT_NAMES, *RESULT_NAMES))
PROGRAM_VOCABULARY = Vocabulary((*SPECIALS, THINK_OPEN, THINK_CLOSE, *program.WORDS, *DIGITS, *program.NAMES))

VOCAB: tuple[str, ...] = SUM_VOCABULARY.tokens
TOKEN_ID = SUM_VOCABULARY.token_id
encode = SUM_VOCABULARY.encode
build_tokenizer = SUM_VOCABULARY.build_tokenizer
save_tokenizer = SUM_VOCABULARY.save_tokenizer


def prompt_tokens(prompt: str) -> list[str]:
    """The chat-formatted prompt, ending with the opened ``<think>`` (what the tokenizer's template produces)."""
    return [USER, *prompt.split(), ASSISTANT, THINK_OPEN]
