"""Answer extraction, for every workload: only what follows ``</think>`` is the answer.

Plain prompt files (the tiny reasoner's problems) are scored by the last number after ``</think>``
(``is_correct``); benchmark tasks by the last ``\\boxed{...}`` or choice letter, checked with math-verify.
A trace that never closed its thinking was truncated (or the
model does not think in tags): we still look for a boxed answer after the last ``<think>`` content, but the
sample is flagged so that a report can count truncations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.scoring.verifier import verify

_NUMBER = re.compile(r"-?\d+(?:[.:]\d+)?")


def _normal(token: str) -> str:
    token = token.replace(",", "")
    if "." in token:
        token = token.rstrip("0").rstrip(".")
    return token


def last_number(text: str) -> str | None:
    found = _NUMBER.findall(text.replace(",", ""))
    return _normal(found[-1]) if found else None


def final_answer(output: str, thinking: bool = False) -> str | None:
    """The last number after ``</think>`` (or anywhere, for models that do not think). A thinking model whose
    trace never closed gave no answer: a digit inside an unfinished trace must not count."""
    if "</think>" in output:
        output = output.rsplit("</think>", 1)[1]
    elif thinking:
        return None
    return last_number(output)


def is_correct(answer: str, output: str, thinking: bool = False) -> bool:
    """Whether the final number of ``output`` equals ``answer`` (``1,200`` = ``1200``, ``3.50`` = ``3.5``)."""
    got = final_answer(output, thinking)
    return got is not None and got == _normal(answer.strip())


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


def extract_number(output: str) -> Extracted:
    """The last number after ``</think>``: the tiny reasoner's ``answer 7``, compared exactly."""
    text, closed = answer_part(output)
    found = last_number(text) if closed else None
    return Extracted(found, closed, "ok" if found is not None else "no_answer")


def verify_math(gold: str, answer: str, timeout_s: float = 10.0) -> bool:
    """Symbolic equivalence with math-verify, in a worker process that a time-out kills (``scoring.verifier``)."""
    return verify(gold, answer, timeout_s)


@dataclass(frozen=True)
class Scored:
    extracted: str | None
    correct: bool
    thinking_closed: bool  # False: no </think> (truncated trace, or a model that does not tag its thinking)
    reason: str  # "ok" | "wrong" | "no_box" | "no_answer" | "unclosed_thinking"

    def to_dict(self) -> dict:
        return {"extracted": self.extracted, "correct": self.correct, "thinking_closed": self.thinking_closed,
                "score_reason": self.reason}


class GeneratedText(str):
    """A generated output that remembers why it ended, so that scorers downstream of lm-eval's filters can
    tell a trace cut by the length limit from a finished one."""

    finish_reason: str | None = None

    @classmethod
    def of(cls, text: str, finish_reason: str | None) -> GeneratedText:
        out = cls(text)
        out.finish_reason = finish_reason
        return out


def score(kind: str, gold: str, output: str, require_think_close: bool = False) -> Scored:
    """Score one output. ``kind`` is ``math`` (boxed + symbolic check), ``choice`` (letter) or ``number`` (the
    last number after ``</think>``, exactly; a trace that never closed has no answer).

    A trace cut by the length limit (``GeneratedText.finish_reason == "length"``) is wrong and flagged
    ``truncated``, whatever it boxed on the way. With ``require_think_close`` a trace that never reached
    ``</think>`` is wrong too; otherwise that is only recorded (``thinking_closed``).
    """
    got = {"math": extract_math, "choice": extract_choice, "number": extract_number}[kind](output)
    closed = got.closed_thinking
    if getattr(output, "finish_reason", None) == "length":
        return Scored(got.answer, False, closed, "truncated")
    if got.answer is None or (not closed and require_think_close):
        return Scored(got.answer, False, closed, got.reason if got.answer is None else "unclosed_thinking")
    if kind == "math":
        ok = verify_math(gold, got.answer)
    else:
        ok = got.answer == (gold.strip().upper() if kind == "choice" else last_number(gold))
    return Scored(got.answer, ok, closed, "ok" if ok else "wrong")
