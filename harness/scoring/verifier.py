"""math-verify in one reused worker process that can be killed: a symbolic check that runs away (sympy on
``9^{9^{9^9}}``) is bounded by a time-out and leaves nothing running behind it.

A thread cannot be stopped, so an in-thread time-out would leave every runaway check spinning for the rest of the
run. Here the worker is started on first use as its own program (``python -m harness.scoring.verify_worker``: no
copy of the parent's torch threads, and nothing of the caller's ``__main__`` re-imported, so scoring works from a
script piped to Python or a notebook), answers one request at a time over its stdin / stdout, and is killed and
forgotten on a time-out; the next check starts a fresh one. Inside the worker math-verify runs in the main thread,
so its own ``signal.alarm`` time-outs work too.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from harness.scoring.verify_worker import READY
from zoo.errors import UserError

#: how long a fresh worker may take to import math-verify (not counted in a check's time-out)
STARTUP_S = 120.0
WORKER = [sys.executable, "-m", "harness.scoring.verify_worker"]
#: the directory holding the ``harness`` package, so the worker imports this copy of it, installed or not
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class VerifierError(UserError, RuntimeError):
    """The verification worker cannot run."""


def _reply(stream: IO[str], timeout_s: float) -> object:
    """The worker's next reply, or None when none comes within ``timeout_s`` (or the worker is gone)."""
    ready, _, _ = select.select([stream], [], [], timeout_s)
    line = stream.readline() if ready else ""
    return json.loads(line) if line else None


class Verifier:
    """One worker process running ``command`` (``WORKER`` by default); thread-safe."""

    def __init__(self, command: list[str] | None = None) -> None:
        self.command = command or WORKER
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is None:
            path = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
            self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True, env={**os.environ,
                                                                                     "PYTHONPATH": path})
            assert self._proc.stdout is not None
            if _reply(self._proc.stdout, STARTUP_S) != READY:
                self.stop()
                raise VerifierError(f"the math-verify worker did not start within {STARTUP_S} s: is math-verify "
                                    "installed (pip install math-verify)?")
        return self._proc

    def check(self, gold: str, answer: str, timeout_s: float) -> bool:
        """Whether ``answer`` equals ``gold``; False when the check takes longer than ``timeout_s`` (the worker
        is then killed)."""
        with self._lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps([gold, answer]) + "\n")
                proc.stdin.flush()
                result = _reply(proc.stdout, timeout_s)
                if result is not None:
                    return bool(result)
            except (OSError, ValueError):
                pass  # the worker died: a wrong answer, and a fresh worker next time
            self.stop()
            return False

    def stop(self) -> None:
        """Kill the worker (if any) and wait for it."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    stream.close()
        self._proc = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


_default = Verifier()


def verify(gold: str, answer: str, timeout_s: float = 10.0) -> bool:
    return _default.check(gold, answer, timeout_s)
