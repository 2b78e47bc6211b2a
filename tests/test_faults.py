"""Fault injection on real tiny-reasoner runs: each fault must be caught, and each bad input must give one
line and exit 2 (never a traceback, never exit 1, which is the gate's "regression")."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.results.rundir import ResultsError, RunDir

runner = CliRunner()
GRID = """name: faults
base: {model: tiny-reasoner, limit: 8, batch_size: 8, window: 32, interval: 16}
grid: {policy: [full, window, dynts], budget: [80], seed: [0]}
speed: {limit: 8, max_new_tokens: 64, rounds: 3}
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
    return runner.invoke(app, ["check", str(sweep), "--baseline", str(baseline), *extra])


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


def _grow_traces(run: Path, factor: float) -> None:
    def grow(rows):
        for row in rows:
            row["generated_tokens"] = round(row["generated_tokens"] * factor)

    _rewrite(run / "samples.jsonl", grow)


def _length_rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if "length vs full" in line or "mean generated tokens" in line]


def test_a_policy_whose_traces_grew_20_percent_fails_the_length_check(gate, tmp_path) -> None:
    sweep = _copy(gate, tmp_path)
    _grow_traces(_run_dir(sweep, "window"), 1.2)
    result = _check(sweep, gate[1])
    assert result.exit_code == 1, result.output
    failed = [line for line in _length_rows(result.output) if "FAIL" in line]
    assert len(failed) == 1 and "window" in failed[0] and "traces longer" in failed[0], result.output


def test_traces_grown_5_percent_stay_within_the_length_tolerance(gate, tmp_path) -> None:
    sweep = _copy(gate, tmp_path)
    _grow_traces(_run_dir(sweep, "dynts"), 1.05)
    result = _check(sweep, gate[1])
    assert result.exit_code == 0, result.output
    assert len(_length_rows(result.output)) == 3 and "FAIL" not in result.output


def test_the_full_cache_growing_fails_its_own_length_check(gate, tmp_path) -> None:
    sweep = _copy(gate, tmp_path)
    _grow_traces(_run_dir(sweep, "full"), 1.2)
    result = _check(sweep, gate[1])
    failed = [line for line in _length_rows(result.output) if "FAIL" in line]
    assert result.exit_code == 1 and len(failed) == 1 and "mean generated tokens" in failed[0], result.output


def _baseline_without_lengths(gate, tmp_path) -> Path:
    """The gate's baseline as one made before lengths were recorded (no per-sample token counts)."""
    old = json.loads(gate[1].read_text())
    for entry in old["entries"].values():
        for sample in entry["samples"].values():
            del sample["tokens"]
    path = tmp_path / "old-baseline.json"
    path.write_text(json.dumps(old))
    return path


def test_a_baseline_without_lengths_passes_identical_outputs_and_warns_on_changed_ones(gate, tmp_path) -> None:
    old = _baseline_without_lengths(gate, tmp_path)
    result = _check(gate[0], old)
    assert result.exit_code == 0 and "inconclusive" not in result.output, result.output
    assert len([line for line in _length_rows(result.output) if "same outputs" in line]) == 3
    sweep = _copy(gate, tmp_path)

    def change(rows):
        rows[0]["output_ids"] = rows[0]["output_ids"][:-1]

    _rewrite(_run_dir(sweep, "window") / "samples.jsonl", change)
    result = _check(sweep, old)
    assert result.exit_code == 0 and "1 checks inconclusive" in result.output, result.output
    unsure = [line for line in _length_rows(result.output) if "inconclusive" in line]
    assert len(unsure) == 1 and "window" in unsure[0] and "predates" in unsure[0], result.output


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
    from harness.runs.catalog import shipped_predictor

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
    from harness.runs.catalog import shipped_predictor

    impostor = tmp_path / "tiny-reasoner"
    shutil.copytree(random_reasoner, impostor)
    result = runner.invoke(app, ["run", "-p", "dynts", "--model", str(impostor), "--limit", "1",
                                 "--predictor", str(shipped_predictor("tiny-reasoner")), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "trained on model weights" in result.output, result.output


def test_a_truncated_predictor_is_one_line(tmp_path) -> None:
    from harness.runs.catalog import shipped_predictor

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


# ---------------------------------------------------------------- speed: the probe and its gate


def _slow_decode(monkeypatch, slow_call) -> None:
    """Make the decode loop under ``TransformersBackend.generate`` burn as much CPU again as it used, i.e. take
    twice as long (``slow_call(policy, n)``: whether the policy's n-th batch is slowed); the probe times it."""
    import backends.hf.backend as hf

    real, calls = hf.generate_batch, {}

    def generate_batch(parts, requests, policy, *args, **kwargs):
        n = calls[id(policy)] = calls.get(id(policy), -1) + 1
        start = time.process_time()
        out = real(parts, requests, policy, *args, **kwargs)
        if slow_call(policy, n):
            until = time.process_time() + (time.process_time() - start)
            while time.process_time() < until:
                pass
        return out

    monkeypatch.setattr(hf, "generate_batch", generate_batch)


def _reprobe(tmp_path: Path) -> None:
    """Rerun the sweep over the copied cells: every cell is reused, the speed probe runs again."""
    grid = tmp_path / "faults.yaml"
    grid.write_text(GRID)
    result = runner.invoke(app, ["sweep", str(grid), "--out", str(tmp_path)])
    assert result.exit_code == 0 and "speed probe" in result.output, result.output


def _speed_findings(sweep: Path, baseline: Path) -> dict[str, list[str]]:
    """The gate's speed verdicts by metric kind, from the same code the command ran."""
    from harness.results.leaderboard import load_runs
    from harness.results.regression import compare, load_speed

    found: dict[str, list[str]] = {"reference": [], "full": []}
    for f in compare(json.loads(baseline.read_text()), load_runs(sweep), speed=load_speed(sweep)):
        if f.metric.startswith("decode time vs"):
            kind = "reference" if "reference" in f.metric else "full"
            found[kind].append("FAIL" if f.failed else "inconclusive" if f.inconclusive else "ok")
    return found


@pytest.mark.slow
def test_a_decode_loop_twice_as_slow_for_every_policy_fails_the_speed_gate(gate, tmp_path, monkeypatch) -> None:
    """Every policy, full included, 2x slower: the ratios to full do not move, the reference figure does."""
    sweep = _copy(gate, tmp_path)
    _slow_decode(monkeypatch, lambda policy, n: True)
    _reprobe(tmp_path)
    result = _check(sweep, gate[1])
    assert result.exit_code == 1 and "regression" in result.output, result.output
    found = _speed_findings(sweep, gate[1])
    assert found["reference"] == ["FAIL"] * 3, found  # full, window and dynts
    assert len(found["full"]) == 2 and "FAIL" not in found["full"], found  # a uniform slowdown keeps the ratios


def _slow_rounds(sweep: Path, how_many: int) -> None:
    """Double the decode time of each cell's ``how_many`` slowest rounds (by decode time over the reference) in the
    probe's own record, figures recomputed by ``speed_probe.figures``: bursts of load, made deterministic (the
    baseline sweep's own timings, edited), so the verdict does not depend on how busy this machine is."""
    from harness.timing.speed_probe import figures

    probe = json.loads((sweep / "speed.json").read_text())
    raws = {key: entry["raw"] for key, entry in probe["entries"].items()}
    for raw in raws.values():
        ratio = [d / r for d, r in zip(raw["decode_ms_per_token"], raw["reference_ms_per_step"])]
        for i in sorted(range(len(ratio)), key=ratio.__getitem__)[len(ratio) - how_many:]:
            raw["decode_ms_per_token"][i] *= 2.0
    full = next(raw for key, raw in raws.items() if probe["entries"][key]["policy"] == "full")
    for key, entry in probe["entries"].items():
        entry.update(figures(raws[key], None if entry["policy"] == "full" else full))
    (sweep / "speed.json").write_text(json.dumps(probe))


def test_a_burst_of_load_in_one_round_neither_fails_nor_blocks_the_speed_gate(gate, tmp_path) -> None:
    """One round of every cell 2x slower (its slowest; the others as the baseline measured them): the median
    did not move, so every reference check passes -- one disturbed repeat is noise, not a slowdown."""
    sweep = _copy(gate, tmp_path)
    _slow_rounds(sweep, 1)
    result = _check(sweep, gate[1])
    assert result.exit_code == 0, result.output
    assert _speed_findings(sweep, gate[1])["reference"] == ["ok"] * 3


def test_a_median_slowdown_with_a_fast_repeat_left_is_inconclusive(gate, tmp_path) -> None:
    """Every round of every cell 2x slower but its fastest, which is as the baseline measured it: the median is far
    above the limit but the fastest repeat is the baseline's own -- load and a slowdown look alike, and the gate
    says so (a warning, exit 0), neither a failure nor a silent pass."""
    sweep = _copy(gate, tmp_path)
    rounds = json.loads((sweep / "speed.json").read_text())["spec"]["rounds"]
    _slow_rounds(sweep, rounds - 1)
    result = _check(sweep, gate[1])
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "checks inconclusive" in text, result.output
    assert _speed_findings(sweep, gate[1])["reference"] == ["inconclusive"] * 3


def test_speed_timed_on_another_cpu_is_inconclusive_not_compared(gate, tmp_path) -> None:
    """A baseline timed on another CPU model: the decode and the reference computation need not scale alike there,
    so even a 2x slower probe (every round doubled in the probe record; on this CPU it fails, see above) is
    reported inconclusive with the reason, never failed or passed on figures that do not transfer."""
    from harness.runs.environment import hardware

    sweep = _copy(gate, tmp_path)
    _slow_rounds(sweep, json.loads((sweep / "speed.json").read_text())["spec"]["rounds"])  # every round
    assert "FAIL" in _speed_findings(sweep, gate[1])["reference"]  # on the baseline's own CPU: a regression
    moved = json.loads(gate[1].read_text())
    moved["hardware"] = {**moved["hardware"], "cpu_model": "Other CPU 9000"}
    other = tmp_path / "other-cpu.json"
    other.write_text(json.dumps(moved))
    result = _check(sweep, other)
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and "checks inconclusive" in text, result.output
    assert "another CPU" in text and "Other CPU 9000" in text and str(hardware()["cpu_model"]) in text

    from harness.results.leaderboard import load_runs
    from harness.results.regression import compare, load_speed

    verdicts = [f for f in compare(moved, load_runs(sweep), speed=load_speed(sweep), machine=hardware())
                if f.metric.startswith("decode time vs")]
    assert verdicts and all(f.inconclusive and not f.failed for f in verdicts)


def test_a_missing_speed_probe_other_threads_and_a_truncated_probe(gate, tmp_path) -> None:
    sweep = _copy(gate, tmp_path)
    probe = json.loads((sweep / "speed.json").read_text())
    (sweep / "speed.json").unlink()
    result = _check(sweep, gate[1])
    assert result.exit_code == 1 and "no speed probe timed this entry" in " ".join(result.output.split())
    for entry in probe["entries"].values():
        entry["threads"] = 2
    (sweep / "speed.json").write_text(json.dumps(probe))
    result = _check(sweep, gate[1])
    assert result.exit_code == 1 and "threads: 1 -> 2" in " ".join(result.output.split()), result.output
    (sweep / "speed.json").write_text('{"entries": ')  # an interrupted write is bad input, not a regression
    result = _check(sweep, gate[1])
    assert result.exit_code == 2 and "speed.json is unreadable or truncated" in " ".join(result.output.split())


@pytest.mark.parametrize("speed,message", [("{rounds: 1}", "speed option rounds must be an integer >= 3"),
                                           ("{limit: many}", "speed option limit must be an integer >= 1"),
                                           ("{repeat: 3}", "unknown speed option 'repeat'"),
                                           ("[5]", "'speed:' must be a mapping")])
def test_a_bad_speed_section_is_one_line(speed, message, tmp_path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_text(GRID.replace("speed: {limit: 8, max_new_tokens: 64, rounds: 3}", f"speed: {speed}"))
    result = runner.invoke(app, ["sweep", str(grid), "--out", str(tmp_path)])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- leftovers: verification, traces, hub, plots


def test_a_runaway_math_check_is_killed_and_leaves_no_thread() -> None:
    from harness.scoring.verifier import Verifier

    verifier = Verifier()
    try:
        assert verifier.check("\\frac{1}{2}", "0.5", timeout_s=60)  # starts the worker
        threads = threading.active_count()
        assert not verifier.check("3", "9^{9^{9^{9}}}", timeout_s=1)  # sympy would spin for minutes
        assert not verifier.alive and threading.active_count() == threads  # killed, nothing left running
        assert verifier.check("2", "2", timeout_s=60) and verifier.alive  # a fresh worker afterwards
    finally:
        verifier.stop()


def _collect(out: Path):
    return runner.invoke(app, ["collect-traces", "--out", str(out), "--limit", "3", "--max-new-tokens", "48",
                               "--batch-size", "3"])


def test_a_partial_last_trace_index_line_is_repaired_and_a_bad_line_is_one_line(tmp_path) -> None:
    from harness.predictor_pipeline.traces import TraceStore

    store = tmp_path / "traces"
    assert _collect(store).exit_code == 0
    index = store / "index.jsonl"
    lines = index.read_text().splitlines(keepends=True)
    index.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # an append cut short
    assert len(TraceStore(store).records()) == len(lines) - 1  # the partial line is not a record
    resumed = _collect(store)
    assert resumed.exit_code == 0, resumed.output
    ids = [json.loads(line)["id"] for line in index.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == len(lines) and index.read_text().endswith("\n")  # repaired, none twice
    index.write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
    bad = _collect(store)
    assert bad.exit_code == 2 and "line 2 is not a trace record" in " ".join(bad.output.split()), bad.output
    assert "Traceback" not in bad.output


@pytest.mark.slow
def test_an_offline_hub_task_is_one_line_without_retries(tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--task", "aime24", "--limit", "1", "--out",
                           str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, lines
    assert "cannot load HuggingFaceH4/aime_2024" in lines[0] and "--data-dir" in lines[0]


def _sized_run(root: Path, policy: str, budget: int | None, n: int) -> None:
    """A finished run of ``n`` problems without generating it."""
    schedule = None if budget is None else {"mode": "budget", "budget": budget, "interval": 8, "window": 16,
                                            "trigger_len": None, "ratio": 0.4, "protect_prompt": True}
    config = {"backend": "transformers", "model": "m", "policy": policy, "policy_options": {}, "schedule": schedule,
              "sampling": {"seed": 0}, "prompts_name": "p.jsonl", "prompts_sha256": "x", "limit": n,
              "dtype": "float32", "device": "cpu", "batch_size": 8, "chat": True, "extra": {}}
    run = RunDir.open(root, f"{policy}-{budget}-{n}", config)
    run.write_summary({"run_id": run.path.name, "config": config, "config_hash": run.config_hash, "metrics": {
        "accuracy": 0.5, "n_samples": n, "decode_mean_tokens_per_s": 10.0, "kv_peak_max_bytes": 1000}})


def test_plots_never_join_runs_of_different_sizes(tmp_path) -> None:
    from harness.results.leaderboard import load_runs
    from harness.results.plots import all_plots, plot_groups

    for n in (100, 200):
        for policy, budget in (("full", None), ("window", 64), ("window", 96)):
            _sized_run(tmp_path / "runs", policy, budget, n)
    records = load_runs(tmp_path / "runs")
    groups = plot_groups(records)
    assert sorted(n for _, _, n in groups) == [100, 200]
    assert all({r.n_samples for r in runs} == {n} and len(runs) == 3 for (_, _, n), runs in groups.items())
    made = all_plots(records, [], tmp_path / "plots")
    assert len(made) == len({p.name for p in made}) == 6  # three plots per size, none shared
