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


def is_correct(answer: str, output: str) -> bool:
    """Whether the last number in ``output`` equals ``answer`` (``1,200`` = ``1200``, ``3.50`` = ``3.5``)."""
    got = last_number(output)
    return got is not None and got == _normal(answer.strip())
