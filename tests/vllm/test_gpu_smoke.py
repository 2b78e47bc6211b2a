"""``benchmarks/engine_gpu_smoke.py --backend vllm`` end to end on the CPU engine, at small scale, as a user runs
it: every check runs and the gated ones pass. In a process of its own: closing an in-process vLLM engine tears
down this process's distributed groups, which the session's engine still uses."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tests.smoke_runs import run_smoke  # noqa: E402


def test_the_smoke_checks_pass_on_the_cpu_engine(tmp_path):
    out, lines = run_smoke("vllm", tmp_path)
    assert [v["check"].split()[0] for v in out["verdicts"]] == ["a", "b", "c", "d"], lines
    assert all(v["passed"] for v in out["verdicts"][:3]), lines
    pool = out["verdicts"][2]["detail"]
    assert "free before" in pool and "0 with a free count that did not rise" in pool
    assert set(out["throughput"]) == {"full", "window", "dynts"} and out["throughput"]["window"]["compactions"] > 0
    assert lines[-1].startswith("INFO d throughput") and len(lines) == 4
