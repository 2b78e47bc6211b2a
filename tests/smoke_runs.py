"""Run ``benchmarks/engine_gpu_smoke.py`` as a user does, in a process of its own (closing an in-process engine
would tear down the distributed groups the test session's own engine uses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_smoke(backend: str, tmp_path: Path, *extra: str) -> tuple[dict, list[str]]:
    """The smoke check on the CPU engine at small scale: (its JSON, its verdict lines). A failed gate exits 1: the
    JSON still says which."""
    out = tmp_path / "smoke.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.engine_gpu_smoke", "--backend", backend, "--device", "cpu",
         "--problems", "3", "--batch-size", "3", "--throughput-model", "tiny-reasoner", "--throughput-requests", "2",
         "--throughput-tokens", "160", "--throughput-budget", "86", "--json", str(out), *extra],
        capture_output=True, text=True, timeout=1500, env=env, cwd=ROOT)
    assert out.exists(), done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.split(" ", 1)[0] in ("PASS", "FAIL", "INFO")]
    return json.loads(out.read_text()), lines
