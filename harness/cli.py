"""The ``dynts-bench`` command line (typer): wiring only. Every command runs inside one error boundary: a
``UserError`` prints one plain line and exits 2, Ctrl-C says how to resume and exits 130."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.text import Text

from backends import BACKENDS, build_backend
from harness.options import RunOptions, cli_parameters
from harness.predictor_cli import register as register_predictor_commands
from harness.progress import per_policy, progress_for
from harness.serve import register as register_serve_command
from harness.tinyreasoner.cli import register as register_tiny_commands
from zoo.errors import UserError

console = Console()
if not console.is_terminal:  # logs and CI: wide enough that the result table is not folded
    console = Console(width=200)
err_console = Console(stderr=True)
BENCH_MODEL = "smollm2-135m"  # long contexts: the tiny reasoner's positions end at 1024
#: the gate's speed tolerance: several times the probe's run-to-run noise (results/bench/speed-noise-cpu.txt)
SPEED_TOLERANCE = 0.25


def fail(message: str, code: int = 2) -> None:
    err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """The one error boundary: user mistakes become one line (exit 2); an interrupt keeps what was saved."""

    @functools.wraps(command)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            err_console.print(Text("interrupted: finished samples are saved; rerun the same command to resume",
                                   style="yellow"))
            raise typer.Exit(130) from None

    return bounded


class BoundedTyper(typer.Typer):
    """A ``Typer`` whose every command, whoever registers it, runs inside ``user_errors``."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)
        return lambda fn: register(user_errors(fn))


app = BoundedTyper(add_completion=False, no_args_is_help=True, help="Run, compare and deploy KV-cache eviction.")


def say(message: str, style: str = "dim") -> None:
    """A status line whose text (paths included) is printed as is, never parsed as markup."""
    console.print(Text(message, style=style), highlight=False)


def run(**values: Any) -> None:
    """Generate under one or more policies and print a comparison. Reruns resume unfinished runs."""
    from harness.runplan import execute_plan, prepare
    from harness.tables import comparison_table

    options = RunOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    with console.status("checking options ..."):
        plan = prepare(options)
    options.apply_threads()
    with console.status(f"loading {options.model} ..."):
        engine = build_backend(options.backend, **options.backend_kwargs())
    try:
        with progress_for(console) as progress:
            outcomes = execute_plan(plan, engine, per_policy(progress))
    finally:
        engine.close()
    console.print(comparison_table(outcomes))
    for name, outcome in outcomes.items():
        note = " (already complete, reused)" if outcome.reused else ""
        if outcome.resumed_samples and not outcome.reused:
            note = f" (resumed: {outcome.resumed_samples} samples were already done)"
        say(f"{name}: {outcome.run_dir.path}{note}")


run.__signature__ = inspect.Signature(cli_parameters())  # type: ignore[attr-defined]
app.command()(run)


@app.command()
def tasks(data_dir: Optional[Path] = typer.Option(None, help="Show which tasks DIR holds data for.")) -> None:
    """List the benchmark tasks with their data source (shipped YAML, local file, hub dataset)."""
    from harness.lmeval import shipped_tasks
    from harness.tables import tasks_table

    console.print(tasks_table(shipped_tasks(), data_dir))


@app.command()
def sweep(
    grid_file: Path = typer.Argument(..., help="Grid YAML: base options + axes (see harness/grids/)."),
    executor: str = typer.Option("local", help="local (sequential) or ray (one task per cell)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: a local Ray)."),
    out: Path = typer.Option(Path("results/sweeps"), help="Sweep results go to OUT/<grid name>/."),
    allow_stale: bool = typer.Option(False, "--allow-stale", help="Reuse or resume cells that other code made "
                                     "(refused by default); the speed probe always times this code."),
) -> None:
    """Run every cell of a grid; complete cells are skipped, interrupted ones resume."""
    from harness.prompts import DataError
    from harness.results import atomic_write_json
    from harness.runplan import prepare
    from harness.sweep import cell_label, expand, load_grid, run_local, run_ray
    from harness.tables import speed_table, sweep_table

    if executor not in ("local", "ray"):
        raise DataError(f"unknown --executor {executor!r}: use local or ray")
    grid = load_grid(grid_file)
    target = out / grid.name
    cells = [c.replace(allow_stale=allow_stale) for c in expand(grid, target, where=str(grid_file))]
    with console.status(f"checking {len(cells)} cells ..."):
        for cell in cells:  # every option error before any model is loaded
            prepare(cell)
    with progress_for(console) as progress:
        bar = progress.add_task(f"sweep {grid.name} ({executor})", total=len(cells))

        def done(row: dict[str, Any]) -> None:
            progress.update(bar, advance=1, description=f"sweep {grid.name}: {row['cell']}")

        engines: dict = {}
        rows = (run_local(cells, done, engines) if executor == "local"
                else run_ray(cells, grid.resources, address, done))
    record = {**grid.__dict__, "speed": grid.speed and grid.speed.__dict__}
    atomic_write_json(target / "sweep.json", {"grid": record, "executor": executor, "cells": rows})
    console.print(sweep_table(grid.name, rows, [cell_label(c) for c in cells]))
    say(f"written {target / 'sweep.json'}")
    if grid.speed is not None:
        probe = speed_probe(grid.speed, cells, rows, engines)
        atomic_write_json(target / "speed.json", probe)
        console.print(speed_table(grid.name, probe))
        say(f"written {target / 'speed.json'}")


def speed_probe(spec: Any, cells: list[Any], rows: list[dict[str, Any]], engines: dict) -> dict[str, Any]:
    """The grid's speed probe over the finished cells, with a progress bar over its rounds."""
    from harness.leaderboard import load_runs
    from harness.speed import probe_sweep

    keys = [load_runs(Path(row["run_dir"]))[0].gate_key for row in rows]
    with progress_for(console) as progress:
        bar = progress.add_task(f"speed probe: {len(set(keys))} cells x {spec.rounds} rounds", total=spec.rounds)
        return probe_sweep(cells, keys, spec, engines, lambda r: progress.update(bar, advance=1))


@app.command()
def check(
    results_dir: Path = typer.Argument(..., help="Runs to check (searched recursively)."),
    baseline: Path = typer.Option(..., help="Baseline JSON, e.g. results/baselines/cpu-default.json."),
    update: bool = typer.Option(False, "--update", help="Write RESULTS_DIR's runs as the new baseline instead."),
    alpha: float = typer.Option(0.05, help="Significance level of the accuracy test."),
    kv_tolerance: float = typer.Option(0.02, help="Allowed relative rise of the KV ratio to full."),
    speed_tolerance: float = typer.Option(SPEED_TOLERANCE, help=(
        "Allowed relative rise of the probe's decode time (vs the reference, vs full): fail when every repeat rose "
        "more, pass when the median did not, else 'inconclusive' (a warning, exit 0).")),
) -> None:
    """Regression gate: exit 0 when every baseline entry holds (inconclusive speed checks warn), 1 on a regression,
    2 on bad input."""
    from harness.check import compare, load_speed, make_baseline, validate_gate
    from harness.env import hardware
    from harness.leaderboard import load_runs
    from harness.results import ResultsError, atomic_write_json
    from harness.tables import check_table

    validate_gate(alpha, kv_tolerance, speed_tolerance)
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
    findings = compare(reference, records, alpha, kv_tolerance, speed_tolerance, load_speed(results_dir), hardware())
    console.print(check_table(baseline.name, findings))
    made_on, here = reference.get("hardware", {}).get("cpu_model"), hardware().get("cpu_model")
    if made_on != here:
        say(f"note: the baseline was made on {made_on}, this is {here}; greedy outputs can differ across CPUs")
    failed = [f for f in findings if f.failed]
    unsure = [f for f in findings if f.inconclusive]
    if unsure:
        say(f"warning: {len(unsure)} speed checks inconclusive (not failed; the table says why: median above the "
            "limit but not every repeat -> rerun on a quieter machine; another CPU than the baseline's -> re-baseline "
            "here)", style="yellow")
    if failed:
        fail(f"regression: {len(failed)} of {len(findings)} checks failed", code=1)
    if unsure:
        say(f"all {len(findings) - len(unsure)} decided checks passed, {len(unsure)} inconclusive", style="green")
    else:
        say(f"all {len(findings)} checks passed", style="green")


@app.command()
def report(
    results_dir: Path = typer.Argument(..., help="Directory holding run directories (searched recursively)."),
    out: Path = typer.Option(Path("report"), help="Where report.md, report.html and plots/ go."),
) -> None:
    """Leaderboard of finished runs: markdown, a self-contained HTML page and PNG plots."""
    from harness.leaderboard import write_report
    from harness.tables import runs_table

    records, plots = write_report(results_dir, out, lambda: console.status("plotting ..."))
    console.print(runs_table(records, results_dir))
    say(f"written {out / 'report.md'}, {out / 'report.html'} and {len(plots)} plots in {out / 'plots'}", style="")


@app.command()
def policies() -> None:
    """List the policies with one-line descriptions, what they need and their options."""
    from harness.tables import policies_table
    from zoo import describe, policy_options, registry

    console.print(policies_table(registry(), describe, policy_options))


@app.command()
def backends() -> None:
    """List the backends and whether they can run here."""
    from harness.tables import backends_table

    console.print(backends_table(BACKENDS.values()))


@app.command()
def bench(
    model: str = typer.Option(BENCH_MODEL, help="Model to time (alias, directory, .gguf or hub id)."),
    policy: list[str] = typer.Option([], "--policy", "-p", help="Policies to compare with full (default: all "
                                     "baselines)."),
    context: list[int] = typer.Option([1024, 2048, 4096, 8192], help="Context lengths to time at; repeatable."),
    budget: int = typer.Option(1024, help="KV budget of the evicting policies."),
    interval: int = typer.Option(64, help="Compression interval."),
    window: int = typer.Option(128, help="Recent window."),
    steps: int = typer.Option(128, help="Decode steps timed per point (covers two compressions at the default)."),
    repeats: int = typer.Option(3, min=1, help="Timed runs per point, in rotating policy order; the best counts."),
    dtype: str = typer.Option("float32"),
    device: str = typer.Option("cpu"),
    predictor: Optional[Path] = typer.Option(None, help="Predictor directory, to include dynts."),
    out: Optional[Path] = typer.Option(None, help="Also write the measurements to this JSON file."),
    compile: bool = typer.Option(False, "--compile", help="Replay the decode step as CUDA graphs (torch.compile "
                                 "reduce-overhead; CUDA only)."),
) -> None:
    """Per-step decode latency and KV bytes vs context length: full cache against each policy, one run."""
    from harness.bench import run_bench

    run_bench(console, model, policy, context, budget, interval, window, steps, repeats, dtype, device, predictor,
              out, compile=compile)


register_tiny_commands(app, console)
register_predictor_commands(app, console)
register_serve_command(app, console)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
