"""math-verify in one reused worker process that can be killed: a symbolic check that runs away (sympy on
``9^{9^{9^9}}``) is bounded by a time-out and leaves nothing running behind it.

A thread cannot be stopped, so the old in-thread time-out left every runaway check spinning for the rest of the
run. Here the worker is started on first use (``spawn``: no copy of the parent's torch threads), answers one
request at a time over a pipe, and is killed and forgotten on a time-out; the next check starts a fresh one.
Inside the worker math-verify runs in the main thread, so its own ``signal.alarm`` time-outs work too. The
worker's code is ``harness.scoring.verify_worker``, which imports nothing heavy (no torch) so that it starts fast.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from harness.scoring.verify_worker import serve
from zoo.errors import UserError

#: how long a fresh worker may take to import math-verify (not counted in a check's time-out)
STARTUP_S = 120.0


class VerifierError(UserError, RuntimeError):
    """The verification worker cannot run."""


class Verifier:
    """One worker process running ``target(conn)`` (``serve`` by default); thread-safe."""

    def __init__(self, target: Callable[[Connection], None] = serve) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Connection | None = None

    def _start(self) -> Connection:
        if self._conn is None:
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            self._proc = ctx.Process(target=self.target, args=(child,), daemon=True, name="dynts-math-verify")
            self._proc.start()
            child.close()
            if not parent.poll(STARTUP_S) or parent.recv() != "ready":
                self._proc.kill()
                raise VerifierError(f"the math-verify worker did not start within {STARTUP_S} s: is math-verify "
                                    "installed (pip install math-verify)?")
            self._conn = parent
        return self._conn

    def check(self, gold: str, answer: str, timeout_s: float) -> bool:
        """Whether ``answer`` equals ``gold``; False when the check takes longer than ``timeout_s`` (the worker
        is then killed)."""
        with self._lock:
            conn = self._start()
            try:
                conn.send((gold, answer))
                if conn.poll(timeout_s):
                    return bool(conn.recv())
            except (EOFError, OSError, BrokenPipeError):
                pass  # the worker died: a wrong answer, and a fresh worker next time
            self.stop()
            return False

    def stop(self) -> None:
        """Kill the worker (if any) and wait for it."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()


_default = Verifier()


def verify(gold: str, answer: str, timeout_s: float = 10.0) -> bool:
    return _default.check(gold, answer, timeout_s)
