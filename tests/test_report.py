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


def _run(root: Path, policy: str, budget: int | None, quality: float, kv: int, tps: float,
         lengths: list[int] | None = None) -> None:
    schedule = None if budget is None else {"mode": "budget", "budget": budget, "interval": 8, "window": 16,
                                            "trigger_len": None, "ratio": 0.4, "protect_prompt": True}
    config = {"backend": "transformers", "model": "m", "policy": policy, "policy_options": {}, "schedule": schedule,
              "sampling": {"seed": 0}, "prompts_name": "p.jsonl", "prompts_sha256": "x", "limit": None,
              "dtype": "float32", "device": "cpu", "batch_size": 8, "chat": True, "extra": {},
              "artefacts": {"model": "sha256:11", **({"predictor": "sha256:22"} if policy == "dynts" else {})}}
    run = RunDir.open(root, f"{policy}-{budget}", config)
    run.write_summary({"run_id": run.path.name, "config": config, "config_hash": run.config_hash, "metrics": {
        "accuracy": quality, "n_samples": 10, "decode_mean_tokens_per_s": tps, "kv_peak_max_bytes": kv,
        **({"generated_tokens_by_sample": {str(i): n for i, n in enumerate(lengths)},
            "total_generated_tokens": sum(lengths)} if lengths else {}),
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


def _board(root: Path) -> None:
    """A small leaderboard: the full cache and three policies at three budgets, with per-sample lengths."""
    _run(root, "full", None, 0.9, 4000, 10.0, lengths=[100, 120, 140, 160, 180, 200, 220, 240, 260, 280])
    for budget, share in ((32, 0.25), (64, 0.5), (128, 0.75)):
        for policy, quality, grow in (("window", 0.2 + share / 2, 1.3), ("h2o", 0.3 + share / 2, 1.1),
                                      ("dynts", 0.5 + share / 3, 1.0)):
            lengths = [round(n * grow) for n in (100, 120, 140, 160, 180, 200, 220, 240, 260, 280)]
            _run(root, policy, budget, quality, int(4000 * share), 12.0, lengths=lengths)


def test_the_report_tracks_length_vs_full_and_what_made_it(tmp_path):
    _board(tmp_path / "runs")
    assert CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r")]).exit_code == 0
    md = (tmp_path / "r" / "report.md").read_text()
    matrix = md.split("## Accuracy by KV budget")[1].split("##")[0]
    assert [line.split("|")[1].strip() for line in matrix.splitlines() if line.startswith("| ")][1:] == [
        "full", "dynts", "h2o", "window"]  # by mean accuracy
    assert "| window | 32.5% | 45.0% | 57.5% | 1.30x [1.30, 1.30] |" in matrix
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["made_with"] == {"m": {"model": ["sha256:11"], "predictor": ["sha256:22"]}}
    window = [r for r in data["runs"] if r["policy"] == "window" and r["budget"] == 64][0]
    assert window["length_vs_full"]["ratio"] == pytest.approx(1.3, abs=0.01) and window["length_vs_full"]["n"] == 10


def _screenshot(page: Path, shot: Path, profile: Path, width: int, height: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         f"--screenshot={shot}", f"--window-size={width},{height}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_html_as_a_person_sees_it_in_headless_chromium(tmp_path):
    """The page renders without errors, its overview tables come first and the plots show as images (coloured
    policy lines, not broken-image boxes). DYNTS_SCREENSHOT_DIR keeps the screenshot for a person to look at."""
    import os

    _board(tmp_path / "runs")
    assert CliRunner().invoke(app, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "r")]).exit_code == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.index("Made with") < page.index("Accuracy by KV budget") < page.index("<img") < page.index("rank")
    shot = tmp_path / "shot.png"
    result = _screenshot(tmp_path / "r" / "report.html", shot, tmp_path / "profile", 1500, 2200)
    assert result.returncode == 0 and mpimg.imread(shot).shape[:2] == (2200, 1500)
    assert "Uncaught" not in result.stderr and "CONSOLE" not in result.stderr
    keep = os.environ.get("DYNTS_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "report-screenshot.png")
    pixels = mpimg.imread(shot)[..., :3]
    coloured = (pixels.max(-1) - pixels.min(-1)) > 0.3  # saturated pixels: plot lines and markers
    assert coloured.mean() > 0.001, "no coloured plot pixels: the plots did not render"


def test_report_without_runs_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no finished runs" in result.output


def test_ratios_need_a_full_run_in_the_same_sweep(tmp_path):
    _run(tmp_path, "window", 64, 0.3, 1000, 20.0)
    (record,) = load_runs(tmp_path)
    assert record.kv_ratio_vs_full is None and "no full-cache run" in record.notes[0]


def test_pareto_front():
    assert pareto_front([(1, 0.3), (1, 0.6), (2, 0.5), (3, 0.9), (4, 0.9)]) == [(1, 0.6), (3, 0.9)]
