"""Tests for harness.runs.environment, harness.results.summary and harness.results.rundir (CPU only, no GPU needed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from harness.results import rundir as results
from harness.results.rundir import ResultsError, RunDir, atomic_write_json, config_hash, default_run_id
from harness.results.summary import percentile, summarize_samples
from harness.runs import environment as env
from harness.runs import resources as measure
from harness.runs.resources import NvmlSampler, peak_rss_bytes

# --- results: atomic writes and hashing --------------------------------------------------------------------


def test_atomic_write_json_leaves_no_tmp_files(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"b": 1, "a": Path("/x/y")})
    atomic_write_json(target, {"b": 2, "a": [1, 2]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 2}
    assert target.read_text().startswith('{\n  "a"')  # indent=2, sorted keys


def test_atomic_write_json_serialises_paths(tmp_path: Path) -> None:
    target = tmp_path / "c.json"
    atomic_write_json(target, {"model": Path("/models/m")})
    assert json.loads(target.read_text()) == {"model": "/models/m"}


def test_atomic_write_json_failure_keeps_old_file_and_cleans_up(tmp_path: Path, monkeypatch: Any) -> None:
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"v": 1})

    def boom(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_json(target, {"v": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    assert json.loads(target.read_text()) == {"v": 1}


def test_config_hash_stable_under_key_order() -> None:
    a = {"policy": "snapkv", "budget": 512, "nested": {"x": 1, "y": [1, 2]}}
    b = {"nested": {"y": [1, 2], "x": 1}, "budget": 512, "policy": "snapkv"}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 12
    assert all(c in "0123456789abcdef" for c in config_hash(a))
    assert config_hash(a) != config_hash({**a, "budget": 256})


def test_default_run_id_is_deterministic_and_safe() -> None:
    cfg = {"policy": "snapkv", "budget": 512}
    assert default_run_id(cfg) == default_run_id(dict(reversed(list(cfg.items()))))
    assert default_run_id(cfg) == f"snapkv-{config_hash(cfg)}"
    assert default_run_id({"budget": 1}).startswith("run-")
    assert "/" not in default_run_id({"policy": "../evil/x"})


# --- results: RunDir ---------------------------------------------------------------------------------------

CFG = {"policy": "h2o", "budget": 128, "model": "tiny"}


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"sample_id": f"s{i}", "generated_tokens": i + 1} for i in range(n)]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_rundir_open_writes_config(tmp_path: Path) -> None:
    run = RunDir.open(tmp_path, "r1", CFG)
    assert run.path == tmp_path / "r1"
    assert run.config_hash == config_hash(CFG)
    stored = json.loads((run.path / "config.json").read_text())
    assert stored == {"config": CFG, "config_hash": config_hash(CFG), "provenance": {}}
    assert not run.is_complete
    assert run.done_ids() == set()
    assert run.samples() == []


def test_rundir_resume_after_truncated_line(tmp_path: Path) -> None:
    run = RunDir.open(tmp_path, "r1", CFG)
    for row in _rows(3):
        run.append_sample(row)
    with open(run.samples_path, "ab") as fh:  # crash mid-write of the 4th line
        fh.write(b'{"generated_tokens": 4, "sample_id": "s3", "text": "hal')

    again = RunDir.open(tmp_path, "r1", dict(reversed(list(CFG.items()))))
    assert again.done_ids() == {"s0", "s1", "s2"}
    assert _jsonl(again.samples_path) == _rows(3)  # partial line removed from the file itself
    again.append_sample({"sample_id": "s3", "generated_tokens": 4})
    assert _jsonl(again.samples_path) == _rows(4)
    assert [r["sample_id"] for r in again.samples()] == ["s0", "s1", "s2", "s3"]
    assert sorted(p.name for p in again.path.iterdir()) == ["config.json", "samples.jsonl"]


def test_rundir_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    run = RunDir.open(tmp_path, "r1", CFG)
    run.append_sample(_rows(1)[0])
    with open(run.samples_path, "ab") as fh:
        fh.write(b'{"sample_id": "s1", "generated_tokens": 2}')
    again = RunDir.open(tmp_path, "r1", CFG)
    assert again.done_ids() == {"s0", "s1"}
    again.append_sample({"sample_id": "s2", "generated_tokens": 3})
    assert _jsonl(again.samples_path) == _rows(3)


def test_rundir_corrupt_middle_line_raises(tmp_path: Path) -> None:
    run = RunDir.open(tmp_path, "r1", CFG)
    run.samples_path.write_text('{"sample_id": "s0"}\nnot json\n{"sample_id": "s2"}\n')
    with pytest.raises(ResultsError, match="line 2"):
        RunDir.open(tmp_path, "r1", CFG)


def test_rundir_mismatched_config_raises_one_line(tmp_path: Path) -> None:
    RunDir.open(tmp_path, "r1", CFG)
    other = {**CFG, "budget": 256}
    with pytest.raises(ResultsError) as info:
        RunDir.open(tmp_path, "r1", other)
    msg = str(info.value)
    assert "\n" not in msg
    assert config_hash(CFG) in msg and config_hash(other) in msg
    assert "--run-id" in msg and "--out" in msg
    assert isinstance(info.value, ValueError)


def test_rundir_rejects_path_like_run_id(tmp_path: Path) -> None:
    for bad in ("", "..", "a/b"):
        with pytest.raises(ResultsError):
            RunDir.open(tmp_path, bad, CFG)


def test_rundir_duplicate_sample_refused(tmp_path: Path) -> None:
    run = RunDir.open(tmp_path, "r1", CFG)
    run.append_sample({"sample_id": "s0", "generated_tokens": 1})
    with pytest.raises(ResultsError, match="s0"):
        run.append_sample({"sample_id": "s0", "generated_tokens": 9})
    again = RunDir.open(tmp_path, "r1", CFG)
    with pytest.raises(ResultsError):
        again.append_sample({"sample_id": "s0"})
    with pytest.raises(ResultsError):
        again.append_sample({"no_id": 1})
    assert _jsonl(run.samples_path) == [{"sample_id": "s0", "generated_tokens": 1}]


def test_rundir_write_summary_marks_complete(tmp_path: Path) -> None:
    run = RunDir.open(tmp_path, "r1", CFG)
    run.write_summary({"n_samples": 0})
    assert run.is_complete
    assert json.loads((run.path / "summary.json").read_text()) == {"n_samples": 0}


# --- metrics -----------------------------------------------------------------------------------------------


def test_peak_rss_bytes_is_plausible() -> None:
    rss = peak_rss_bytes()
    assert 1 << 20 < rss < 1 << 42  # between 1 MiB and 4 TiB


def test_nvml_sampler_without_gpu_does_not_raise() -> None:
    with NvmlSampler(interval_s=0.01) as sampler:
        time.sleep(0.03)
    summary = sampler.summary()
    if summary["nvml"] == "ok":  # pragma: no cover - only on a GPU machine
        pytest.skip("a GPU is visible here; this test is for the no-GPU path")
    assert summary["nvml"] == "unavailable"
    assert isinstance(summary["reason"], str) and summary["reason"]
    assert not sampler.running


def test_nvml_sampler_without_pynvml(monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with NvmlSampler(interval_s=0.01) as sampler:
        pass
    summary = sampler.summary()
    assert summary["nvml"] == "unavailable"
    assert "pynvml" in summary["reason"]
    assert not sampler.running


class _FakeNvml(types.ModuleType):
    """Just enough of pynvml for the sampler: one GPU whose counters move on each call."""

    def __init__(self, energy: bool) -> None:
        super().__init__("pynvml")
        self.energy = energy
        self.inited = 0
        self.energy_mj = 1_000_000
        self.mem_calls = 0

    def nvmlInit(self) -> None:
        self.inited += 1

    def nvmlShutdown(self) -> None:
        self.inited -= 1

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        assert i == 0
        return "h0"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        raise RuntimeError("unknown uuid")

    def nvmlDeviceGetName(self, h: str) -> bytes:
        return b"Fake GPU"

    def nvmlDeviceGetMemoryInfo(self, h: str) -> Any:
        self.mem_calls += 1
        return types.SimpleNamespace(used=1000 * self.mem_calls if self.mem_calls <= 3 else 500)

    def nvmlDeviceGetUtilizationRates(self, h: str) -> Any:
        return types.SimpleNamespace(gpu=50)

    def nvmlDeviceGetPowerUsage(self, h: str) -> int:
        return 100_000  # mW

    def nvmlDeviceGetTotalEnergyConsumption(self, h: str) -> int:
        if not self.energy:
            raise RuntimeError("NotSupported")
        self.energy_mj += 2_500
        return self.energy_mj


@pytest.mark.parametrize("energy_counter", [True, False])
def test_nvml_sampler_with_fake_gpu(monkeypatch: Any, energy_counter: bool) -> None:
    fake = _FakeNvml(energy=energy_counter)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with NvmlSampler(interval_s=0.005, device_index=0) as sampler:
        time.sleep(0.05)
    s = sampler.summary()
    assert s["nvml"] == "ok" and s["gpu_name"] == "Fake GPU"
    assert s["memory_used_peak_bytes"] == 3000
    assert s["utilization_mean_pct"] == 50.0 and s["utilization_max_pct"] == 50.0
    assert s["samples"] >= 3
    assert s["duration_s"] >= 0.05
    if energy_counter:
        assert s["energy_j"] == pytest.approx(2.5)  # one 2500 mJ step between the start and end reads
    else:  # 100 W integrated over the sampled span
        assert 0 < s["energy_j"] <= 100.0 * s["duration_s"] + 1e-9
    assert fake.inited == 0  # nvmlShutdown balanced nvmlInit
    assert not sampler.running


def test_cuda_memory_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():  # pragma: no cover
        assert set(measure.cuda_memory()) == {"cuda_max_memory_allocated_bytes", "cuda_max_memory_reserved_bytes"}
    else:
        assert measure.cuda_memory() == {}
    measure.reset_cuda_peak()


def test_percentile_linear_interpolation() -> None:
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0], 90) == pytest.approx(2.8)
    assert percentile([7], 90) == 7
    assert percentile([], 50) is None


def test_summarize_samples_exact_numbers() -> None:
    rows = [
        {"prompt_tokens": 10, "generated_tokens": 4, "ttft_s": 0.5, "decode_s": 1.5, "decode_tokens_per_s": 2.0,
         "kv_peak_bytes": 100, "kv_full_bytes": 400, "compressions": 2, "policy_s": 0.15, "finish_reason": "length"},
        {"prompt_tokens": 20, "generated_tokens": 6, "ttft_s": 1.0, "decode_s": 3.0, "decode_tokens_per_s": 2.0,
         "kv_peak_bytes": 200, "kv_full_bytes": 600, "compressions": 0, "policy_s": 0.0, "finish_reason": "stop"},
        {"prompt_tokens": 30, "generated_tokens": 10, "ttft_s": 1.5, "decode_s": 0.5, "decode_tokens_per_s": 20.0,
         "kv_peak_bytes": 300, "kv_full_bytes": 1100, "compressions": 4, "policy_s": 0.35, "finish_reason": "length"},
    ]  # fmt: skip
    s = summarize_samples(rows)
    # sorted ttft [0.5, 1.0, 1.5]: p90 position (3-1)*0.9 = 1.8 -> 1.0 + 0.8 * 0.5 = 1.4
    # sorted decode [0.5, 1.5, 3.0]: p90 -> 1.5 + 0.8 * 1.5 = 2.7
    # sorted decode tok/s [2, 2, 20]: mean 8, p90 -> 2 + 0.8 * 18 = 16.4
    # tokens_per_s = 20 tokens / (3.0 s ttft + 5.0 s decode) = 2.5
    # kv_saving_ratio = mean full 700 / mean peak 200 = 3.5; policy overhead = 100 * 0.5 / 5.0 = 10 %
    expected = {
        "n_samples": 3,
        "total_prompt_tokens": 60,
        "total_generated_tokens": 20,
        "ttft_mean_s": 1.0, "ttft_p50_s": 1.0, "ttft_p90_s": 1.4,
        "decode_mean_s": 5.0 / 3, "decode_p50_s": 1.5, "decode_p90_s": 2.7,
        "decode_mean_tokens_per_s": 8.0, "decode_p50_tokens_per_s": 2.0, "decode_p90_tokens_per_s": 16.4,
        "tokens_per_s": 2.5,
        "kv_peak_max_bytes": 300, "kv_peak_mean_bytes": 200.0,
        "kv_full_max_bytes": 1100, "kv_full_mean_bytes": 700.0,
        "kv_saving_ratio": 3.5,
        "total_compressions": 6, "mean_compressions": 2.0,
        "total_policy_s": 0.5, "policy_overhead_pct": 10.0,
        "finish_reasons": {"length": 2, "stop": 1},
        "generated_tokens_by_sample": {},  # the rows carry no sample_id to pair by
    }  # fmt: skip
    assert set(s) == set(expected)
    for key, want in expected.items():
        assert s[key] == pytest.approx(want), key
    json.dumps(s)  # serialisable as-is


def test_summarize_samples_edge_cases() -> None:
    assert summarize_samples([]) == {"n_samples": 0}
    s = summarize_samples([{"sample_id": "a", "generated_tokens": 0, "ttft_s": 0.0, "decode_s": 0.0,
                            "kv_peak_bytes": 0, "kv_full_bytes": 10, "policy_s": 0.0}])  # fmt: skip
    assert s["kv_saving_ratio"] is None
    assert s["policy_overhead_pct"] is None
    assert s["tokens_per_s"] is None
    assert "finish_reasons" not in s


# --- env ---------------------------------------------------------------------------------------------------


def test_environment_has_required_keys() -> None:
    e = env.environment()
    assert set(e) == {"git_sha", "versions", "hardware"}
    v = e["versions"]
    for key in ("python", "torch", "transformers", "typer", "rich", "safetensors", "numpy", "vllm", "sglang",
                "lm_eval", "dynts-bench"):  # fmt: skip
        assert key in v
    assert isinstance(v["torch"], str)
    assert isinstance(v["python"], str)
    hw = e["hardware"]
    for key in ("platform", "machine", "cpu_model", "cpu_count_logical", "ram_total_bytes", "torch_threads",
                "cuda", "gpus"):  # fmt: skip
        assert key in hw
    assert isinstance(hw["gpus"], list)
    if not hw["cuda"]:
        assert hw["gpus"] == []
    assert hw["ram_total_bytes"] > 0
    json.dumps(e)


def test_git_sha_none_outside_repo(tmp_path: Path) -> None:
    assert env.git_sha(tmp_path) is None
    assert env.git_sha(tmp_path / "missing") is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_sha_clean_and_dirty(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        cmd = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
        return subprocess.run([*cmd, *args], check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    assert env.git_sha(tmp_path) is None  # no commits yet
    (tmp_path / "f.txt").write_text("a\n")
    git("add", "f.txt")
    git("commit", "-q", "-m", "init")
    head = git("rev-parse", "HEAD")
    assert env.git_sha(tmp_path) == head
    (tmp_path / "untracked.txt").write_text("x\n")
    assert env.git_sha(tmp_path) == head  # untracked files are not "dirty"
    (tmp_path / "f.txt").write_text("b\n")
    assert env.git_sha(tmp_path) == f"{head}-dirty"
