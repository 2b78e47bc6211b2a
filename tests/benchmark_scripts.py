"""Load a ``benchmarks/`` script as a module, for the tests of its functions (the scripts are not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py``, executed once and registered under ``name`` (dataclasses look their module up)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_smoke(backend: str, tmp_path: Path, *extra: str) -> tuple[dict, list[str]]:
    """``benchmarks/engine_gpu_smoke.py`` on the CPU engine at small scale, in a process of its own; (its JSON, its
    verdict lines). A failed gate exits 1: the JSON still says which."""
    import json
    import os
    import subprocess

    out = tmp_path / "smoke.json"
    root = BENCHMARKS.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "engine_gpu_smoke.py"), "--backend", backend, "--device", "cpu",
         "--problems", "3", "--batch-size", "3", "--throughput-model", "tiny-reasoner", "--throughput-requests", "2",
         "--throughput-tokens", "160", "--throughput-budget", "86", "--json", str(out), *extra],
        capture_output=True, text=True, timeout=1500, env=env, cwd=root)
    assert out.exists(), done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.split(" ", 1)[0] in ("PASS", "FAIL", "INFO")]
    return json.loads(out.read_text()), lines
