"""Answer checking for plain prompt files: the last number in the output against the expected answer.

Benchmark-grade scoring (boxed answers, symbolic equivalence) comes with the lm-eval tasks; this is the
simple check that lets the default prompt set report an accuracy.
"""

from __future__ import annotations

import re

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
