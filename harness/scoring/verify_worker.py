"""The math-verify worker process (``harness.scoring.verifier`` starts it as ``python -m
harness.scoring.verify_worker``): light imports only, it is what a fresh worker imports before its first check.

Protocol, one JSON value per line: the worker writes ``"ready"`` once math-verify is imported, then reads
``[gold, answer]`` and writes ``true`` or ``false`` until its input closes. Anything else the checks print goes to
stderr, so the reply stream holds replies only.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import IO

READY = "ready"


def check_pair(gold: str, answer: str) -> bool:
    """Symbolic equivalence with math-verify (gold first: ``verify`` is not symmetric)."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    g = parse(f"${gold}$")
    p = parse(f"${answer}$")
    return bool(g and p and verify(g, p))


def serve(requests: IO[str], replies: IO[str], check: Callable[[str, str], bool] = check_pair) -> None:
    """The worker's loop: ``ready`` once math-verify is imported (slow: sympy), then one (gold, answer) in, one
    bool out; an exception is a wrong answer."""
    import math_verify  # noqa: F401 - imported before the first time-out starts counting

    def reply(value: object) -> None:
        replies.write(json.dumps(value) + "\n")
        replies.flush()

    reply(READY)
    for line in requests:
        try:
            gold, answer = json.loads(line)
            reply(bool(check(gold, answer)))
        except Exception:  # noqa: BLE001 - an unparseable answer is a wrong answer, never a crash
            reply(False)


def main() -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")  # the reply stream: the real stdout, kept aside
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints (sympy, math-verify) go to stderr
    serve(sys.stdin, replies)


if __name__ == "__main__":
    main()
