"""Fault injection on real tiny-reasoner runs: each fault must be caught, and each bad input must give one
line and exit 2 (never a traceback, never exit 1, which is the gate's "regression")."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.results import ResultsError, RunDir

runner = CliRunner()
GRID = """name: faults
base: {model: tiny-reasoner, limit: 8, batch_size: 8, window: 32, interval: 16}
grid: {policy: [full, window, dynts], budget: [80], seed: [0]}
"""


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> tuple[Path, Path]:
    """A finished sweep and the baseline made from it."""
    root = tmp_path_factory.mktemp("gate")
    grid = root / "faults.yaml"
    grid.write_text(GRID)
    done = runner.invoke(app, ["sweep", str(grid), "--out", str(root / "sweeps")])
    assert done.exit_code == 0, done.output
    baseline = root / "baseline.json"
    done = runner.invoke(app, ["check", str(root / "sweeps" / "faults"), "--baseline", str(baseline), "--update"])
    assert done.exit_code == 0, done.output
    return root / "sweeps" / "faults", baseline


def _copy(gate: tuple[Path, Path], tmp_path: Path) -> Path:
    target = tmp_path / "faults"
    shutil.copytree(gate[0], target)
    return target


def _run_dir(sweep: Path, policy: str) -> Path:
    return next(p for p in sweep.iterdir() if p.name.startswith(f"{policy}-"))


def _check(sweep: Path, baseline: Path, *extra: str):
    return runner.invoke(app, ["check", str(sweep), "--baseline", str(baseline), "--speed-tolerance", "0.9", *extra])


def _rewrite(path: Path, edit) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    edit(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_an_unchanged_rerun_passes(gate) -> None:
    result = _check(*gate)
    assert result.exit_code == 0, result.output
    assert "no sample flipped" in result.output


def test_one_flipped_greedy_sample_fails(gate, tmp_path) -> None:
    sweep = _copy(gate, tmp_path)
    run = _run_dir(sweep, "window")

    def flip(rows):
        rows[0]["correct"] = not rows[0]["correct"]

    _rewrite(run / "samples.jsonl", flip)
    result = _check(sweep, gate[1])
    assert result.exit_code == 1
    assert "1 flipped" in result.output and "regression" in result.output


def test_a_run_without_accuracy_fails_instead_of_losing_its_check(gate, tmp_path) -> None:
    sweep = _copy(gate, tmp_path)
    summary_path = _run_dir(sweep, "dynts") / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["metrics"]["accuracy"] = None
    summary_path.write_text(json.dumps(summary))
    result = _check(sweep, gate[1])
    assert result.exit_code == 1 and "scored no sample" in result.output


def test_a_missing_run_and_a_new_cell_both_fail(gate, tmp_path) -> None:
    sweep = _copy(gate, tmp_path)
    shutil.rmtree(_run_dir(sweep, "window"))
    result = _check(sweep, gate[1])
    assert result.exit_code == 1 and "no matching finished run" in result.output
    baseline = json.loads(gate[1].read_text())
    smaller = tmp_path / "smaller.json"
    baseline["entries"] = {k: v for k, v in baseline["entries"].items() if "| dynts |" not in k}
    smaller.write_text(json.dumps(baseline))
    result = _check(_copy(gate, tmp_path / "again"), smaller)
    assert result.exit_code == 1 and "not in the baseline" in result.output


def test_a_config_mismatch_fails_with_the_difference_named(gate, tmp_path) -> None:
    sweep = _copy(gate, tmp_path)
    config_path = _run_dir(sweep, "window") / "config.json"
    stored = json.loads(config_path.read_text())
    stored["config"]["limit"] = 4
    config_path.write_text(json.dumps(stored))
    result = _check(sweep, gate[1])
    assert result.exit_code == 1 and "limit: 8 -> 4" in result.output


def test_twice_the_allocated_kv_fails(gate, tmp_path) -> None:
    sweep = _copy(gate, tmp_path)
    summary_path = _run_dir(sweep, "full") / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["metrics"]["kv_batch_allocated_max_bytes"] *= 2
    summary_path.write_text(json.dumps(summary))
    result = _check(sweep, gate[1])
    assert result.exit_code == 1 and "KV allocated" in result.output


@pytest.mark.parametrize("flag,value", [("--alpha", "0"), ("--alpha", "0.7"), ("--speed-tolerance", "1"),
                                        ("--kv-tolerance", "-0.1")])
def test_gate_settings_that_switch_a_check_off_are_refused(gate, flag, value) -> None:
    result = runner.invoke(app, ["check", str(gate[0]), "--baseline", str(gate[1]), flag, value])
    assert result.exit_code == 2 and flag in result.output and "Traceback" not in result.output


def test_a_truncated_summary_is_bad_input_not_a_regression(gate, tmp_path) -> None:
    sweep = _copy(gate, tmp_path)
    (_run_dir(sweep, "window") / "summary.json").write_text('{"config": ')
    for command in (["check", str(sweep), "--baseline", str(gate[1])], ["report", str(sweep), "--out",
                                                                         str(tmp_path / "r")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and "summary.json" in result.output, result.output


def test_a_run_made_by_other_code_is_not_reused(gate, tmp_path) -> None:
    sweep = _copy(gate, tmp_path)
    config_path = _run_dir(sweep, "window") / "config.json"
    stored = json.loads(config_path.read_text())
    stored["provenance"] = {"code": "0000000000000000"}
    config_path.write_text(json.dumps(stored))
    grid = tmp_path / "faults.yaml"
    grid.write_text(GRID)
    result = runner.invoke(app, ["sweep", str(grid), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "made by other code" in result.output and "--allow-stale" in result.output


def test_a_changed_predictor_gives_a_new_run_not_a_reused_one(gate, tmp_path) -> None:
    from harness.catalog import shipped_predictor

    predictor = tmp_path / "predictor"
    shutil.copytree(shipped_predictor("tiny-reasoner"), predictor)
    sweep = _copy(gate, tmp_path)
    args = ["run", "-p", "dynts", "--limit", "8", "--batch-size", "8", "--budget", "80", "--out", str(sweep)]
    first = runner.invoke(app, [*args, "--predictor", str(predictor)])
    again = runner.invoke(app, [*args, "--predictor", str(predictor)])
    assert first.exit_code == again.exit_code == 0 and "reused" in again.output  # same content: the same run
    weights = predictor / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    second = runner.invoke(app, [*args, "--predictor", str(predictor)])
    assert second.exit_code == 0 and "reused" not in second.output


def test_a_second_writer_of_one_run_directory_is_refused(tmp_path) -> None:
    config = {"policy": "window", "sampling": {"seed": 0}}
    first = RunDir.open(tmp_path, "r", config)
    first.lock()
    second = RunDir.open(tmp_path, "r", config)
    errors: list[Exception] = []

    def take() -> None:  # from another thread, as a second process would
        try:
            second.lock()
        except ResultsError as exc:
            errors.append(exc)

    worker = threading.Thread(target=take)
    worker.start()
    worker.join()
    assert errors and "another dynts-bench process is writing" in str(errors[0])
    first.unlock()
    second.lock()  # free again once the first writer is done
    second.unlock()


def test_a_predictor_is_refused_for_other_weights_under_the_same_name(random_reasoner, tmp_path) -> None:
    """The shipped predictor records its model's fingerprint: a random model saved as ``.../tiny-reasoner``
    passes the name check but not the weights check."""
    from harness.catalog import shipped_predictor

    impostor = tmp_path / "tiny-reasoner"
    shutil.copytree(random_reasoner, impostor)
    result = runner.invoke(app, ["run", "-p", "dynts", "--model", str(impostor), "--limit", "1",
                                 "--predictor", str(shipped_predictor("tiny-reasoner")), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "trained on model weights" in result.output, result.output


def test_a_truncated_predictor_is_one_line(tmp_path) -> None:
    from harness.catalog import shipped_predictor

    broken = tmp_path / "predictor"
    shutil.copytree(shipped_predictor("tiny-reasoner"), broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = runner.invoke(app, ["run", "-p", "dynts", "--predictor", str(broken), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unreadable" in result.output and "Traceback" not in result.output
    assert not any(tmp_path.glob("dynts-*")), "a refused predictor leaves no run directory behind"


@pytest.mark.parametrize("args,message", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--dtype", "float8"], "unknown --dtype"),
    (["--device", "cuda"], "no CUDA GPU is visible"),
    (["--out", "x[/x]", "--limit", "0"], "--limit must be >= 1"),
    (["--prompts", "missing[/x].jsonl"], "cannot read prompts file missing[/x].jsonl"),
])
def test_bad_run_options_are_one_line_and_exit_2(args, message, tmp_path) -> None:
    result = runner.invoke(app, ["run", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_an_out_path_with_markup_characters_finishes_cleanly(tmp_path) -> None:
    out = tmp_path / "odd[/x]"
    result = runner.invoke(app, ["run", "-p", "window", "--limit", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in " ".join(result.output.split()) or "odd[/x]" in result.output
