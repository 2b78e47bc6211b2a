"""``benchmarks/engine_gpu_smoke.py --backend sglang`` end to end on the CPU engine, at small scale: every check
runs and the gated ones pass (the script builds its own engines beside the session's)."""

from __future__ import annotations

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed here: backends/sglang/install_cpu_env.sh makes its venv")

from tests.benchmark_scripts import load_benchmark  # noqa: E402


def test_the_smoke_checks_pass_on_the_cpu_engine():
    smoke = load_benchmark("engine_gpu_smoke")
    settings = smoke.Settings(backend="sglang", device="cpu", problems=3, batch_size=3,
                              throughput_model="tiny-reasoner", throughput_requests=2, throughput_tokens=160,
                              throughput_budget=86, kv_tokens=4096)
    verdicts, numbers = smoke.run(settings)
    lines = [v.line() for v in verdicts]
    assert [v.check.split()[0] for v in verdicts] == ["a", "b", "c", "d"], lines
    assert all(v.passed for v in verdicts[:3]), lines
    assert "idle leak check" in verdicts[2].detail
    assert numbers["throughput"]["window"]["compactions"] > 0
