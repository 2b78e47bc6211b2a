"""Send a request mix to a running server with a bounded number of concurrent clients, then the checks that
follow a load: the pool drains back to where it started, bad requests are refused, a normal request is served."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from benchmarks.serve_load.client import Outcome, post
from benchmarks.serve_load.server import PeakSampler, Server
from benchmarks.serve_load.workload import LoadRequest

DRAIN_S = 60.0  # how long the pool may take to empty after the last reply (aborted requests finish their step)


@dataclass
class LoadResult:
    """Everything one policy's load run observed."""

    policy: str
    replies: list[tuple[LoadRequest, Outcome]] = field(default_factory=list)
    not_sent: int = 0  # requests left when the time bound ran out
    wall_s: float = 0.0
    kv_before: float | None = None
    kv_after: float | None = None
    kv_peak: float | None = None
    running_after: float | None = None
    bad: list[tuple[LoadRequest, Outcome]] = field(default_factory=list)
    after: Outcome | None = None  # a normal request once everything else is done
    stats: list[dict[str, Any]] = field(default_factory=list)  # the server's per-request rows (--stats)


def drive(server: Server, policy: str, mix: list[LoadRequest], concurrency: int, time_limit_s: float) -> LoadResult:
    """Send ``mix`` through ``concurrency`` clients; requests not started within ``time_limit_s`` are not sent."""
    result = LoadResult(policy, kv_before=server.kv_in_use())
    deadline = time.monotonic() + time_limit_s

    def send(request: LoadRequest) -> tuple[LoadRequest, Outcome | None]:
        if time.monotonic() > deadline:
            return request, None
        outcome = post(server.port, request.path, request.body, stream=request.stream,
                       abort_after=request.abort_after, api_key=server.api_key)
        return request, outcome

    start = time.perf_counter()
    with PeakSampler(server) as sampler, ThreadPoolExecutor(concurrency) as pool:
        for request, outcome in pool.map(send, mix):
            if outcome is None:
                result.not_sent += 1
            else:
                result.replies.append((request, outcome))
    result.wall_s = time.perf_counter() - start
    result.kv_peak = sampler.peak
    result.running_after, result.kv_after = _drained(server)
    return result


def _drained(server: Server) -> tuple[float | None, float | None]:
    """(requests running, KV in use) once nothing runs, or as they stand after ``DRAIN_S``."""
    deadline = time.monotonic() + DRAIN_S
    while True:
        running, in_use = server.pool_state()
        if (not running and not in_use) or time.monotonic() > deadline:
            return running, in_use
        time.sleep(1)


def refuse_and_recover(server: Server, result: LoadResult, bad: list[LoadRequest], normal: LoadRequest) -> None:
    """Send each bad request, then one normal request; read the server's stats rows."""
    for request in bad:
        result.bad.append((request, post(server.port, request.path, request.body, stream=False,
                                         api_key=server.api_key)))
    result.after = post(server.port, normal.path, normal.body, stream=normal.stream, api_key=server.api_key)
    if server.stats.exists():
        result.stats = [json.loads(line) for line in server.stats.read_text().splitlines() if line.strip()]


def refusal_names_the_fault(request: LoadRequest, outcome: Outcome) -> bool:
    """A 4xx whose message names what was wrong (one of the request's expected words)."""
    message = (outcome.error or "").lower()
    return outcome.refused and any(word in message for word in request.names)
