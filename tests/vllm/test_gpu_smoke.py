"""``benchmarks/engine_gpu_smoke.py --backend vllm`` end to end on the CPU engine, at small scale: every check
runs and the gated ones pass (the script builds its own engines beside the session's)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from tests.benchmark_scripts import load_benchmark  # noqa: E402


def test_the_smoke_checks_pass_on_the_cpu_engine(vllm_backend):
    smoke = load_benchmark("engine_gpu_smoke")
    settings = smoke.Settings(backend="vllm", device="cpu", problems=3, batch_size=3, throughput_model="tiny-reasoner",
                              throughput_requests=2, throughput_tokens=160, throughput_budget=86)
    verdicts, numbers = smoke.run(settings)
    lines = [v.line() for v in verdicts]
    assert [v.check.split()[0] for v in verdicts] == ["a", "b", "c", "d"], lines
    assert all(v.passed for v in verdicts[:3]), lines
    assert "free before" in verdicts[2].detail and "0 with a free count that did not rise" in verdicts[2].detail
    assert set(numbers["throughput"]) == {"full", "window", "dynts"}
    assert numbers["throughput"]["window"]["compactions"] > 0
