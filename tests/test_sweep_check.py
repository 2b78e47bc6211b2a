"""Sweeps (local and Ray executors) and the regression gate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.runs.grid import expand, load_grid
from harness.workloads.prompt_file import DataError
from tests.test_report import _run

runner = CliRunner()
GRIDS = Path(__file__).parents[1] / "harness" / "grids"


def _grid(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_grid_expansion_dedupes_full_cells(tmp_path):
    path = _grid(tmp_path, "name: g\nbase: {max_new_tokens: 8}\ngrid: {policy: [full, window], budget: [64, 96], "
                           "seed: [0, 1]}\n")
    cells = expand(load_grid(path), tmp_path)
    labels = sorted((c.policy[0], c.budget if c.policy != ("full",) else None, c.seed) for c in cells)
    assert len(cells) == 6 and labels.count(("full", None, 0)) == 1
    assert all(c.max_new_tokens == 8 and c.out == tmp_path for c in cells)


@pytest.mark.parametrize(
    "text,message",
    [("grid: {}\n", "non-empty 'grid:'"), ("grid: {colour: [red]}\n", "unknown option 'colour'"),
     ("grid: {policy: []}\n", "axis 'policy' has no values"), ("grid: [unclosed\n", "cannot read grid"),
     ("base: {limit: abc}\ngrid: {policy: [window]}\n", "option limit must be an integer, got 'abc'"),
     ("name: ../../x\ngrid: {policy: [window]}\n", "must be a single directory name"),
     ("name: /abs\ngrid: {policy: [window]}\n", "must be a single directory name")],
)
def test_bad_grids_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        load_grid(_grid(tmp_path, text))


def test_shipped_grids_are_valid():
    for path in GRIDS.glob("*.yaml"):
        assert expand(load_grid(path), Path("out")), path


def _rows(root: Path) -> dict[str, list]:
    found = {}
    for samples in sorted(root.rglob("samples.jsonl")):
        found[samples.parent.name] = [(r["sample_id"], r["output_ids"], r["kv_peak_bytes"], r["compressions"])
                                      for r in map(json.loads, samples.read_text().splitlines())]
    return found


@pytest.mark.slow
def test_local_and_ray_sweeps_give_identical_rows_and_skip_done_cells(tmp_path):
    """The #6 acceptance on the default workload (tiny reasoner, its held-out problems), sampled so that the
    seeds matter: 2 policies x 2 budgets x 2 seeds, identical rows from both executors."""
    grid = _grid(tmp_path, "name: tiny\nbase: {model: tiny-reasoner, limit: 6, batch_size: 6, window: 32, "
                           "interval: 16, temperature: 0.7}\n"
                           "grid: {policy: [window, h2o], budget: [80, 128], seed: [0, 1]}\nresources: {num_cpus: 1}\n")
    local = runner.invoke(app, ["sweep", str(grid), "--out", str(tmp_path / "local")], catch_exceptions=False)
    assert local.exit_code == 0, local.output
    ray = runner.invoke(app, ["sweep", str(grid), "--executor", "ray", "--out", str(tmp_path / "ray")],
                        catch_exceptions=False)
    assert ray.exit_code == 0, ray.output
    a, b = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert len(a) == 8 and a == b
    again = runner.invoke(app, ["sweep", str(grid), "--out", str(tmp_path / "local")], catch_exceptions=False)
    cells = json.loads((tmp_path / "local" / "tiny" / "sweep.json").read_text())["cells"]
    assert again.exit_code == 0 and all(c["reused"] for c in cells)
    # the Ray rerun of the same configs matches a gate made from the local sweep on everything but the power
    # check: 12 sampled trials per cell cannot see a 5-point drop, and the gate says so instead of passing
    baseline = str(tmp_path / "baseline.json")
    assert runner.invoke(app, ["check", str(tmp_path / "local"), "--baseline", baseline, "--update"]).exit_code == 0
    gate = runner.invoke(app, ["check", str(tmp_path / "ray"), "--baseline", baseline])
    text = " ".join(gate.output.split())
    failed = [line for line in gate.output.splitlines() if "FAIL" in line]
    assert gate.exit_code == 1 and "underpowered" in text and all("accuracy power" in line for line in failed), text


def _synthetic(root: Path, policy: str, budget: int | None, quality: float, allocated: int, tps: float,
               predictor: str = "sha256:aaaa") -> None:
    """A finished sampled run of 2000 trials (enough power to see a 5-point drop) without generating it."""
    from harness.results.rundir import RunDir

    schedule = None if budget is None else {"mode": "budget", "budget": budget, "interval": 8, "window": 16,
                                            "trigger_len": None, "ratio": 0.4, "protect_prompt": True}
    config = {"backend": "transformers", "model": "m", "policy": policy, "policy_options": {}, "schedule": schedule,
              "sampling": {"seed": 0, "temperature": 0.7}, "prompts_name": "p.jsonl", "prompts_sha256": "x",
              "limit": None, "dtype": "float32", "device": "cpu", "batch_size": 8, "chat": True, "extra": {},
              "artefacts": {"model": "sha256:mmmm", **({"predictor": predictor} if policy == "dynts" else {})}}
    run = RunDir.open(root, f"{policy}-{budget}", config)
    run.write_summary({"run_id": run.path.name, "config": config, "config_hash": run.config_hash, "metrics": {
        "accuracy": quality, "n_samples": 2000, "decode_mean_tokens_per_s": tps, "kv_peak_max_bytes": allocated,
        "kv_batch_allocated_max_bytes": allocated}})


def _sweep(root: Path, quality: dict[str, float], kv: dict[str, int], predictor: str = "sha256:aaaa") -> None:
    _synthetic(root, "full", None, quality["full"], 4000, 10.0)
    for policy in ("window", "dynts"):
        _synthetic(root, policy, 64, quality[policy], kv[policy], 15.0, predictor)


def test_check_passes_a_rerun_and_fails_a_degraded_run(tmp_path):
    good = {"full": 0.8, "window": 0.3, "dynts": 0.7}
    _sweep(tmp_path / "base", good, {"window": 1000, "dynts": 1000})
    baseline = tmp_path / "baselines" / "b.json"
    assert runner.invoke(app, ["check", str(tmp_path / "base"), "--baseline", str(baseline), "--update"]).exit_code == 0

    _sweep(tmp_path / "rerun", good, {"window": 1000, "dynts": 1000})
    ok = runner.invoke(app, ["check", str(tmp_path / "rerun"), "--baseline", str(baseline)])
    assert ok.exit_code == 0 and "all 6 checks passed" in ok.output, ok.output  # accuracy and KV, 3 entries

    # a 5-point drop of dynts on 2000 sampled trials is significant
    _sweep(tmp_path / "degraded", {**good, "dynts": 0.65}, {"window": 1000, "dynts": 1000})
    bad = runner.invoke(app, ["check", str(tmp_path / "degraded"), "--baseline", str(baseline)])
    assert bad.exit_code == 1 and "1 of 6 checks failed" in " ".join(bad.output.split())

    # a policy that quietly holds more KV than before
    _sweep(tmp_path / "fat", good, {"window": 1000, "dynts": 1500})
    assert runner.invoke(app, ["check", str(tmp_path / "fat"), "--baseline", str(baseline)]).exit_code == 1

    # other predictor weights: the same numbers, but not the baseline's run -- named, never silently compared
    _sweep(tmp_path / "retrained", good, {"window": 1000, "dynts": 1000}, predictor="sha256:bbbb")
    other = runner.invoke(app, ["check", str(tmp_path / "retrained"), "--baseline", str(baseline)])
    text = " ".join(other.output.split())
    assert other.exit_code == 1 and "artefacts.predictor: 'sha256:aaaa' -> 'sha256:bbbb'" in text, text


def test_check_input_errors(tmp_path):
    result = runner.invoke(app, ["check", str(tmp_path), "--baseline", str(tmp_path / "b.json")])
    assert result.exit_code == 2 and "no finished runs" in result.output
    _run(tmp_path, "full", None, 0.5, 100, 1.0)
    result = runner.invoke(app, ["check", str(tmp_path), "--baseline", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "create one with --update" in result.output


@pytest.mark.slow
def test_gate_on_real_runs_fails_when_dynts_degrades_to_a_window(tmp_path, monkeypatch):
    """The #6 acceptance on real tiny-reasoner runs: a rerun of the baseline config passes; the same grid with
    the ``dynts`` policy's ranking inverted in the code (a regression) fails the accuracy check."""
    from zoo.dynts import DynTS

    grid = _grid(tmp_path, "name: gate\nbase: {model: tiny-reasoner, limit: 32, batch_size: 32, window: 32}\n"
                           "grid: {policy: [full, dynts], budget: [96], seed: [0]}\n")
    baseline = str(tmp_path / "baseline.json")

    def sweep_and_check(out: str, *extra: str):
        swept = runner.invoke(app, ["sweep", str(grid), "--out", str(tmp_path / out)], catch_exceptions=False)
        assert swept.exit_code == 0, swept.output
        return runner.invoke(app, ["check", str(tmp_path / out / "gate"), "--baseline", baseline, *extra])

    assert sweep_and_check("base", "--update").exit_code == 0
    rerun = sweep_and_check("rerun")
    assert rerun.exit_code == 0, rerun.output

    ranked = DynTS.score
    monkeypatch.setattr(DynTS, "score", lambda self, view: -ranked(self, view))  # the ranking inverted
    degraded = sweep_and_check("degraded")
    text = " ".join(degraded.output.split())
    assert degraded.exit_code == 1, degraded.output
    assert re.search(r"regression: 1 of \d+ checks failed", text) and "flipped" in text  # KV and full hold


@pytest.mark.parametrize("values, verdict", [
    # CI, 2026-12-04, an unchanged oracle against a baseline median of 0.974: a burst of load on two repeats
    ((1.031, 1.250, 1.313), "inconclusive"),
    ((0.90, 1.00, 1.40), "ok"),  # one repeat disturbed: the median is within 0.974 x 1.25
    ((1.95, 2.00, 2.60), "FAIL"),  # twice as slow, every repeat: noise never makes every repeat slower
    ((1.25, 1.26, 1.27), "FAIL"),  # tightly measured, every repeat just above 1.2175
])
def test_speed_verdict_fails_only_when_every_repeat_is_slower(values, verdict):
    from harness.results.regression import speed_verdict

    low, mid, high = values
    assert speed_verdict(0.974, {"min": low, "median": mid, "max": high}, 0.25)[0] == verdict


def test_modelled_speed_noise_without_bursts_decides_every_check() -> None:
    """benchmarks/speed_noise.py --simulate with no load: an unchanged policy passes every check and a policy twice
    as slow fails every check, under the gate's rule (the model's arithmetic, before its noise is trusted)."""
    from benchmarks import speed_noise

    found, spread = speed_noise.simulate(50, 5, burst_prob=0.0, burst_max=0.5, tolerance=0.25)
    assert spread == 0.0
    for figure in ("vs_reference", "vs_full"):
        assert found[1.0][("gate rule", figure)] == {"ok": 50}
        assert found[2.0][("gate rule", figure)] == {"FAIL": 50}
