"""The prepared GPU check's CPU-side logic: argument handling and the side-by-side table (on a tiny model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_latency  # noqa: E402


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


def test_side_by_side_table_on_a_tiny_model(tmp_path) -> None:
    out = tmp_path / "latency.json"
    assert gpu_latency.main(["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--batch", "2",
                             "--prompt", "16", "--new-tokens", "160", "--trigger", "96", "--window", "32",
                             "--out", str(out)]) == 0
    import json

    rows = {r["policy"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["full", "window", "dynts"]
    assert rows["full"]["speedup_vs_full"] == 1.0 and rows["full"]["compressions"] == 0
    # the paper schedule compresses from 96 to prompt + window + 40% of the rest, so less is allocated
    for name in ("window", "dynts"):
        assert rows[name]["compressions"] >= 1 and rows[name]["kv_peak_tokens"] <= 96
        assert rows[name]["kv_allocated_bytes"] < rows["full"]["kv_allocated_bytes"]
    assert rows["dynts"]["compaction_share"] > 0


def test_the_check_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0
