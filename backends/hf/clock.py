"""Timing of the decode loop's sections, for the breakdown benchmark; free when nobody asks for it."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch


def sync(device: torch.device | None) -> None:
    """Wait for the device's queued work (a no-op on CPU), so that a host clock reads the device's time."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Does not time anything: the loop's default (one shared, reusable no-op context per section)."""

    _idle = nullcontext()

    def section(self, name: str):
        return self._idle


NO_CLOCK = Clock()


class SectionClock(Clock):
    """Accumulates wall seconds and call counts per named section; waits for the device at each boundary so
    that asynchronous GPU work is charged to the section that queued it. Sections nest: an inner section's
    time is also inside its outer one."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        sync(self.device)
        started = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.seconds[name] += time.perf_counter() - started
            self.calls[name] += 1
