"""The tiny reasoner's word-level tokenizer: every word of the task is one token.

Values are single tokens, so retrieving a value is copying one token (an induction head), not re-assembling
digits. Saved as a standard ``tokenizer.json`` + chat template, so ``AutoTokenizer.from_pretrained`` loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harness.tinyreasoner.problems import DIGITS, PROMPT_NAMES, RESULT_NAMES, THINK_CLOSE, THINK_OPEN, WORDS

PAD, EOS, UNK, USER, ASSISTANT = "<pad>", "<eos>", "<unk>", "<user>", "<assistant>"
SPECIALS = (PAD, EOS, UNK, USER, ASSISTANT)
VOCAB: tuple[str, ...] = (*SPECIALS, THINK_OPEN, THINK_CLOSE, *WORDS, *DIGITS, *PROMPT_NAMES, *RESULT_NAMES)
TOKEN_ID = {token: i for i, token in enumerate(VOCAB)}

# The generation prompt opens the thinking section, as R1-style chat templates do.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}<user> {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}<assistant> {{ message['content'] }} <eos> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant> <think>{% endif %}"
)


def prompt_tokens(prompt: str) -> list[str]:
    """The chat-formatted prompt, ending with the opened ``<think>`` (what the tokenizer's template produces)."""
    return [USER, *prompt.split(), ASSISTANT, THINK_OPEN]


def encode(tokens: Sequence[str]) -> list[int]:
    return [TOKEN_ID.get(t, TOKEN_ID[UNK]) for t in tokens]


def build_tokenizer():
    """A ``PreTrainedTokenizerFast`` over :data:`VOCAB` (whitespace-split words, decoded with spaces)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab=TOKEN_ID, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def save_tokenizer(directory: Path) -> None:
    build_tokenizer().save_pretrained(directory)
