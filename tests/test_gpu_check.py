"""The prepared GPU check's CPU-side logic: argument handling and the side-by-side table (on a tiny model)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks import gpu_latency

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("args,message", [
    (["--trigger", "64", "--window", "64"], "must be larger than --window"),
    (["--prompt", "100", "--trigger", "128", "--window", "32"], "must stay below --trigger"),
    (["--batch", "0"], "--batch must be >= 1"),
])
def test_bad_settings_are_refused(args, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_latency.parse(["--device", "cpu", *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cuda_without_a_gpu_is_refused(capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit):
        gpu_latency.parse([])
    assert "needs an NVIDIA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_side_by_side_table_on_a_tiny_model(tmp_path, capsys) -> None:
    out = tmp_path / "latency.json"
    assert gpu_latency.main(["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--batch", "2",
                             "--prompt", "16", "--new-tokens", "160", "--trigger", "96", "--window", "32",
                             "--repeats", "2", "--out", str(out)]) == 0
    import json

    written = json.loads(out.read_text())
    assert written["complete"] and not out.with_suffix(".partial").exists()
    rows = {r["policy"]: r for r in written["rows"]}
    assert list(rows) == ["full", "window", "dynts"]
    assert all(r["repeats"] == 2 and len(r["runs"]) == 2 for r in rows.values())
    assert rows["full"]["speedup_vs_full"] == 1.0 and rows["full"]["compressions"] == 0
    # the paper schedule compresses from 96 to prompt + window + 40% of the rest, so less is allocated
    for name in ("window", "dynts"):
        assert rows[name]["compressions"] >= 1 and rows[name]["kv_peak_tokens"] <= 96
        assert rows[name]["kv_allocated_bytes"] < rows["full"]["kv_allocated_bytes"]
        low, high = rows[name]["speedup_vs_full_range"]
        assert low <= rows[name]["speedup_vs_full"] <= high
    assert rows["dynts"]["compaction_share"] > 0
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("run ")]
    assert [line.split(" done")[0] for line in progress] == [f"run {i}/6" for i in range(1, 7)]


def test_the_bandwidth_limit_reads_weights_and_held_kv_once() -> None:
    # 3 GB of weights and 1.8 GB of KV at 4.8 TB/s: 1 ms
    assert gpu_latency.limit_ms(3_000_000_000, 1.8e9, 4800.0) == pytest.approx(1.0)


def test_the_limit_and_the_ratio_to_it_on_a_tiny_model(capsys) -> None:
    rows = gpu_latency.measure(gpu_latency.Setting(shape="tiny", dtype="float32", device="cpu", batch=2, prompt=8,
                                                   new_tokens=40, trigger=32, window=8, bandwidth_gbs=10.0))
    for row in rows:
        run = row["runs"][0]
        kv = 2 * run["mean_held_tokens"] * (2 * 2 * 2 * 16 * 4)  # batch x held x (K, V x layers x heads x dim x 4 B)
        model = gpu_latency.build_model(gpu_latency.Setting(shape="tiny", dtype="float32", device="cpu"))
        weights = sum(p.numel() * 4 for p in model.parameters())
        assert run["limit_ms"] == pytest.approx(1000 * (weights + kv) / 10e9)
        assert row["x_limit"] == pytest.approx(row["ms_per_step_median"] / row["limit_ms"])
    assert rows[0]["runs"][0]["mean_held_tokens"] > rows[1]["runs"][0]["mean_held_tokens"]  # full holds more


def test_capture_is_refused_off_cuda(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_latency.parse(["--device", "cpu", "--capture", "both"])
    assert exit_info.value.code == 2 and "needs --device cuda" in capsys.readouterr().err


def test_capture_both_runs_every_policy_eagerly_and_captured() -> None:
    setting = gpu_latency.Setting(capture="both")
    assert setting.variants() == ("full", "window", "dynts", "full+graphs", "window+graphs", "dynts+graphs")
    assert sorted(o[0] for o in gpu_latency.orders(6, setting.variants())) == sorted(setting.variants())


def test_repeats_rotate_the_policy_order() -> None:
    firsts = [order[0] for order in gpu_latency.orders(3)]
    assert sorted(firsts) == sorted(gpu_latency.POLICIES)
    assert all(sorted(order) == sorted(gpu_latency.POLICIES) for order in gpu_latency.orders(5))


def test_ratios_wait_for_full() -> None:
    """A run cut off before ``full`` finished has rows but no ratios (there is nothing to divide by)."""
    run = {"ms_per_step_median": 2.0, "ms_per_step_excl_policy_median": 2.0, "compaction_share": 0.0,
           "tokens_per_s": 1.0, "wall_s": 1.0, "kv_allocated_bytes": 10, "kv_peak_tokens": 5, "compressions": 1}
    rows = gpu_latency.summarise({"window": [run]})
    assert rows[0]["policy"] == "window" and "speedup_vs_full" not in rows[0]


def test_the_check_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0
