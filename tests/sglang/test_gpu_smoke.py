"""``benchmarks/engine_gpu_smoke.py --backend sglang`` end to end on the CPU engine, at small scale, as a user runs
it (its own process): every check runs and the gated ones pass."""

from __future__ import annotations

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed here: backends/sglang/install_cpu_env.sh makes its venv")

from tests.smoke_runs import run_smoke  # noqa: E402


def test_the_smoke_checks_pass_on_the_cpu_engine(tmp_path):
    out, lines = run_smoke("sglang", tmp_path, "--kv-tokens", "4096")
    assert [v["check"].split()[0] for v in out["verdicts"]] == ["a", "b", "c", "d"], lines
    assert all(v["passed"] for v in out["verdicts"][:3]), lines
    assert "idle leak check" in out["verdicts"][2]["detail"]
    assert out["throughput"]["window"]["compactions"] > 0
