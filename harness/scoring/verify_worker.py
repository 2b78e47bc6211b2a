"""The math-verify worker process's code (``harness.scoring.verifier``): light imports only, it is what a fresh worker
imports before its first check."""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import Connection


def check_pair(gold: str, answer: str) -> bool:
    """Symbolic equivalence with math-verify (gold first: ``verify`` is not symmetric)."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    g = parse(f"${gold}$")
    p = parse(f"${answer}$")
    return bool(g and p and verify(g, p))


def serve(conn: Connection, check: Callable[[str, str], bool] = check_pair) -> None:
    """The worker's loop: says ``ready`` once math-verify is imported (slow: sympy), then one (gold, answer) in,
    one bool out; an exception is a wrong answer."""
    import math_verify  # noqa: F401 - imported before the first time-out starts counting

    conn.send("ready")
    while True:
        try:
            gold, answer = conn.recv()
        except EOFError:
            return
        try:
            conn.send(bool(check(gold, answer)))
        except Exception:  # noqa: BLE001 - an unparseable answer is a wrong answer, never a crash
            conn.send(False)
