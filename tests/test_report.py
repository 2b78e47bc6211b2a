"""Leaderboard report over run directories: markdown ranking, self-contained HTML, readable PNG plots."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.results.leaderboard import load_runs
from harness.results.plots import pareto_front
from harness.results.rundir import RunDir


def _run(root: Path, policy: str, budget: int | None, quality: float, kv: int, tps: float) -> None:
    schedule = None if budget is None else {"mode": "budget", "budget": budget, "interval": 8, "window": 16,
                                            "trigger_len": None, "ratio": 0.4, "protect_prompt": True}
    config = {"backend": "transformers", "model": "m", "policy": policy, "policy_options": {}, "schedule": schedule,
              "sampling": {"seed": 0}, "prompts_name": "p.jsonl", "prompts_sha256": "x", "limit": None,
              "dtype": "float32", "device": "cpu", "batch_size": 8, "chat": True, "extra": {}}
    run = RunDir.open(root, f"{policy}-{budget}", config)
    run.write_summary({"run_id": run.path.name, "config": config, "config_hash": run.config_hash, "metrics": {
        "accuracy": quality, "n_samples": 10, "decode_mean_tokens_per_s": tps, "kv_peak_max_bytes": kv,
    }})


def test_report_ranks_and_renders(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "full", None, 0.8, 4000, 10.0)
    _run(runs, "window", 64, 0.3, 1000, 20.0)
    _run(runs, "h2o", 64, 0.6, 1000, 15.0)
    _run(runs, "window", 128, 0.5, 2000, 18.0)
    (runs / "bench.json").write_text(json.dumps({"rows": [
        {"context": c, "policy": p, "step_ms_median": ms} for c, p, ms in
        [(1024, "full", 50), (2048, "full", 70), (1024, "window", 45), (2048, "window", 46)]]}))
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", str(runs), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    md = (out / "report.md").read_text()
    section = md.split("## p.jsonl (10 samples) · m · budget 64 (+8), window 16")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "rank" not in line]
    ranked = [line.split("|")[2].strip() for line in rows]
    assert ranked == ["full", "h2o", "window"]
    assert "window-64" in section and "0.25x" in section and "2.00x" in section  # KV and speed vs full
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "<script" not in page
    for png in (out / "plots").glob("*.png"):
        assert mpimg.imread(png).shape[0] > 100


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_html_loads_in_headless_chromium(tmp_path):
    _run(tmp_path / "runs", "full", None, 0.8, 4000, 10.0)
    _run(tmp_path / "runs", "window", 64, 0.3, 1000, 20.0)
    assert CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r")]).exit_code == 0
    shot = tmp_path / "shot.png"
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         f"--screenshot={shot}", "--window-size=1200,1400", (tmp_path / "r" / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0 and mpimg.imread(shot).shape[:2] == (1400, 1200)
    assert "Uncaught" not in result.stderr and "CONSOLE" not in result.stderr


def test_report_without_runs_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no finished runs" in result.output


def test_ratios_need_a_full_run_in_the_same_sweep(tmp_path):
    _run(tmp_path, "window", 64, 0.3, 1000, 20.0)
    (record,) = load_runs(tmp_path)
    assert record.kv_ratio_vs_full is None and "no full-cache run" in record.notes[0]


def test_pareto_front():
    assert pareto_front([(1, 0.3), (1, 0.6), (2, 0.5), (3, 0.9), (4, 0.9)]) == [(1, 0.6), (3, 0.9)]
