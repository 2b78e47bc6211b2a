"""Reasoning-model answer extraction: drop the thinking, take the last ``\\boxed{...}`` or choice letter.

Only what follows ``</think>`` is the answer. A trace that never closed its thinking was truncated (or the
model does not think in tags): we still look for a boxed answer after the last ``<think>`` content, but the
sample is flagged so that a report can count truncations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_END = "</think>"
_CHOICE = re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([A-D])\)?\b|\(([A-D])\)|\b([A-D])\b", re.I)


@dataclass(frozen=True)
class Extracted:
    answer: str | None  # None: nothing usable, counted wrong
    closed_thinking: bool  # False: no </think> in the output (truncated or untagged)
    reason: str  # "ok" | "no_answer" | "no_box"


def answer_part(output: str) -> tuple[str, bool]:
    """The text after the last ``</think>``, and whether the thinking was closed at all."""
    if THINK_END in output:
        return output.rsplit(THINK_END, 1)[1], True
    return output, False


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None when there is none."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            return text[start : i - 1].strip()
    return None


def extract_math(output: str) -> Extracted:
    """The boxed answer only: a model that never boxes gets no credit (no guessing from loose numbers)."""
    text, closed = answer_part(output)
    boxed = last_boxed(text)
    if boxed is None or not boxed:
        return Extracted(None, closed, "no_box")
    return Extracted(boxed, closed, "ok")


def extract_choice(output: str, letters: str = "ABCD") -> Extracted:
    """A multiple-choice letter: a boxed letter first, else the last "answer is X" / "(X)" / lone letter."""
    text, closed = answer_part(output)
    boxed = last_boxed(text)
    if boxed:
        letter = re.sub(r"[^A-Za-z]", "", boxed.replace("\\text", "")).upper()
        if len(letter) == 1 and letter in letters:
            return Extracted(letter, closed, "ok")
    found = [next(g for g in m.groups() if g) for m in _CHOICE.finditer(text)]
    found = [f.upper() for f in found if f.upper() in letters]
    if not found:
        return Extracted(None, closed, "no_answer")
    return Extracted(found[-1], closed, "ok")
