"""``dynts-bench check``: the regression gate, finished runs held against a baseline."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from harness.cli.app import console, fail, say
from harness.results.leaderboard import load_runs
from harness.results.regression import LENGTH_TOLERANCE, compare, load_speed, make_baseline, validate_gate
from harness.results.rundir import ResultsError, atomic_write_json
from harness.results.tables import check_table
from harness.runs.environment import hardware

#: the gate's speed tolerance: several times the probe's run-to-run noise (results/bench/speed-noise-cpu.txt)
SPEED_TOLERANCE = 0.25


def check(
    results_dir: Path = typer.Argument(..., help="Runs to check (searched recursively)."),
    baseline: Path = typer.Option(..., help="Baseline JSON, e.g. results/baselines/cpu-default.json."),
    update: bool = typer.Option(False, "--update", help="Write RESULTS_DIR's runs as the new baseline instead."),
    alpha: float = typer.Option(0.05, help="Significance level of the accuracy test."),
    kv_tolerance: float = typer.Option(0.02, help="Allowed relative rise of the KV ratio to full."),
    speed_tolerance: float = typer.Option(SPEED_TOLERANCE, help=(
        "Allowed relative rise of the probe's decode time (vs the reference, vs full): fail when every repeat rose "
        "more, pass when the median did not, else 'inconclusive' (a warning, exit 0).")),
    length_tolerance: float = typer.Option(LENGTH_TOLERANCE, help=(
        "Allowed relative rise of a policy's length vs full (mean generated tokens over the full cache's), and of "
        "full's own mean length.")),
) -> None:
    """Regression gate: exit 0 when every baseline entry holds (inconclusive speed checks warn), 1 on a regression,
    2 on bad input."""
    validate_gate(alpha, kv_tolerance, speed_tolerance, length_tolerance)
    records = load_runs(results_dir) if results_dir.is_dir() else []
    if not records:
        raise ResultsError(f"no finished runs (summary.json) under {results_dir}")
    if update:
        baseline.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(baseline, make_baseline(records, baseline.stem, hardware(), load_speed(results_dir)))
        say(f"baseline written: {baseline} ({len(records)} runs)", style="")
        return
    try:
        reference = json.loads(baseline.read_text())
        reference["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ResultsError(f"cannot read baseline {baseline}: create one with --update") from None
    findings = compare(reference, records, alpha, kv_tolerance, speed_tolerance, load_speed(results_dir), hardware(),
                       length_tolerance)
    console.print(check_table(baseline.name, findings))
    made_on, here = reference.get("hardware", {}).get("cpu_model"), hardware().get("cpu_model")
    if made_on != here:
        say(f"note: the baseline was made on {made_on}, this is {here}; greedy outputs can differ across CPUs")
    failed = [f for f in findings if f.failed]
    unsure = [f for f in findings if f.inconclusive]
    if unsure:
        say(f"warning: {len(unsure)} checks inconclusive (not failed; the table says why: median above the "
            "limit but not every repeat -> rerun on a quieter machine; another CPU than the baseline's, or a baseline "
            "without lengths -> re-baseline here)", style="yellow")
    if failed:
        fail(f"regression: {len(failed)} of {len(findings)} checks failed", code=1)
    if unsure:
        say(f"all {len(findings) - len(unsure)} decided checks passed, {len(unsure)} inconclusive", style="green")
    else:
        say(f"all {len(findings)} checks passed", style="green")
