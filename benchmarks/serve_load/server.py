"""Start ``dynts-bench serve`` as a user would (its own process group, loopback), wait until it answers, read its
KV pool gauges from ``/metrics``, and stop it with everything it started."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.serve_load.client import get

STARTUP_S = 600  # the engine process loads the model and warms up: 1-3 minutes on 2 busy cores

#: per engine, the Prometheus gauges of KV use: (name, what it counts)
KV_GAUGES = {
    "vllm": ("vllm:kv_cache_usage_perc", "fraction of KV blocks in use"),
    "sglang": ("sglang:num_used_tokens", "KV slots in use"),
}
RUNNING_GAUGES = {"vllm": "vllm:num_requests_running", "sglang": "sglang:num_running_reqs"}


class ServerError(RuntimeError):
    """The server did not start, or died."""


@dataclass
class Server:
    backend: str
    port: int
    stats: Path
    log: Path
    process: subprocess.Popen
    api_key: str | None = None

    def kv_in_use(self) -> float | None:
        """The engine's KV-in-use gauge now (``KV_GAUGES``), or None when it does not publish one."""
        return gauge(self._metrics(), KV_GAUGES[self.backend][0])

    def pool_state(self) -> tuple[float | None, float | None]:
        """(requests running, KV in use) from one read of ``/metrics``."""
        metrics = self._metrics()
        return gauge(metrics, RUNNING_GAUGES[self.backend]), gauge(metrics, KV_GAUGES[self.backend][0])

    def _metrics(self) -> str:
        status, text = get(self.port, "/metrics", api_key=self.api_key)
        return text if status == 200 else ""

    def alive(self) -> bool:
        return self.process.poll() is None


def gauge(metrics: str, name: str) -> float | None:
    """Sum of a Prometheus gauge's samples over its label sets (one engine = one set here), or None if absent."""
    values = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})?\s+(\S+)$", metrics, re.M)]
    return sum(values) if values else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(workdir: Path, backend: str, serve_args: list[str], api_key: str | None = None) -> Iterator[Server]:
    """``dynts-bench serve --backend BACKEND SERVE_ARGS`` on a free loopback port, with per-request stats."""
    port, stats, log = free_port(), workdir / f"stats-{backend}.jsonl", workdir / f"server-{backend}.log"
    stats.unlink(missing_ok=True)
    command = [sys.executable, "-m", "harness.cli", "serve", "--backend", backend, *serve_args,
               "--host", "127.0.0.1", "--port", str(port), "--stats", str(stats)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if api_key is not None:
        env["DYNTS_BENCH_API_KEY"] = api_key
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(backend, port, stats, log, process, api_key)
    try:
        _wait_healthy(server)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after a minute."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerError(f"the server exited with {server.process.returncode}: see {server.log}\n"
                              + server.log.read_text()[-2000:])
        try:
            if get(server.port, "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(2)
    raise ServerError(f"the server did not answer /health within {STARTUP_S} s: see {server.log}")


class PeakSampler:
    """Samples the KV-in-use gauge every ``period`` seconds in a thread; ``peak`` is the largest value seen."""

    def __init__(self, server: Server, period: float = 0.5) -> None:
        self.server, self.period = server, period
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                value = self.server.kv_in_use()
            except OSError:
                continue
            if value is not None:
                self.peak = value if self.peak is None else max(self.peak, value)
