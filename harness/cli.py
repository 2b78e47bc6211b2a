"""The ``dynts-bench`` command line (typer). User mistakes print one red line and exit 2, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from backends import BACKENDS, BackendError, build_backend
from harness.importance.traces import TraceStoreError
from harness.predictor_cli import register as register_predictor_commands
from harness.prompts import DataError, PromptFileError, TaskError
from harness.results import ResultsError
from harness.tinyreasoner.task import TaskConfigError
from zoo import describe, policy_options, registry
from zoo.base import PolicyError
from zoo.schedule import ScheduleError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Run, compare and deploy KV-cache eviction.")
console = Console()
if not console.is_terminal:  # logs and CI: wide enough that the result table is not folded
    console = Console(width=200)
err_console = Console(stderr=True)

USER_ERRORS = (PolicyError, ScheduleError, BackendError, PromptFileError, ResultsError, DataError, TaskError,
               TraceStoreError, TaskConfigError)
DEFAULT_MODEL = "tiny-reasoner"
BENCH_MODEL = "smollm2-135m"  # long contexts: the tiny reasoner's positions end at 1024


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def guard(action) -> None:
    """Run ``action``; a user mistake becomes one red line and exit 2."""
    try:
        action()
    except USER_ERRORS as exc:
        fail(str(exc))


@app.command()
def run(
    policy: list[str] = typer.Option(
        [], "--policy", "-p", help="Policy to run; repeat to compare. Default: every baseline (+ oracle, and dynts "
        "with its shipped predictor, on the tiny reasoner)."),
    backend: str = typer.Option("transformers", help="transformers | vllm | sglang (see `dynts-bench backends`)."),
    model: str = typer.Option(DEFAULT_MODEL, help="Alias, local directory, .gguf file or hub id."),
    prompts: Optional[Path] = typer.Option(
        None, help="JSONL of {id, prompt, answer} (+ trace for replay); default: the tiny reasoner's held-out set."),
    protocol: str = typer.Option(
        "generate", help="generate: the model writes its own trace. replay: force the prompts' reference traces "
        "(any model), then let it answer; reports KL / top-1 agreement with the full cache."),
    task: Optional[str] = typer.Option(None, help="A benchmark task (see `dynts-bench tasks`), run through lm-eval."),
    data_dir: Optional[Path] = typer.Option(None, help="Read the task's data from DIR/<task>.jsonl (offline)."),
    samples: int = typer.Option(1, min=1, help="Samples per problem (Pass@k, Maj@k); use with --temperature."),
    limit: Optional[int] = typer.Option(None, min=1, help="N prompts / problems (tasks: a seeded subset)."),
    mode: str = typer.Option("budget", help="Schedule: 'budget' (fixed KV budget) or 'paper' (trigger + ratio)."),
    budget: Optional[int] = typer.Option(96, help="KV budget in tokens, prompt included (budget mode)."),
    interval: int = typer.Option(16, help="Compress when the cache reaches budget + interval (budget mode)."),
    window: int = typer.Option(32, help="Most recent tokens that are always kept."),
    trigger_len: Optional[int] = typer.Option(None, help="KV length that triggers compression (paper mode)."),
    ratio: float = typer.Option(0.4, help="Fraction of thinking tokens kept at each compression (paper mode)."),
    evict_prompt: bool = typer.Option(False, "--evict-prompt", help="Allow prompt tokens to be evicted."),
    predictor: Optional[Path] = typer.Option(None, help="DynTS importance predictor directory (for --policy dynts)."),
    policy_arg: list[str] = typer.Option([], "--policy-arg", help="Policy option key=value or policy.key=value."),
    max_new_tokens: Optional[int] = typer.Option(None, help="Generation limit (default 512; tasks: their YAML's)."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0),
    top_k: int = typer.Option(0, help="0 = off."),
    seed: int = typer.Option(0, help="Run seed; each sample's seed derives from it and the sample id."),
    stop: list[str] = typer.Option([], "--stop", help="Stop string; repeatable."),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
    batch_size: int = typer.Option(32, help="Sequences decoded together."),
    chat: bool = typer.Option(True, help="Wrap prompts in the tokenizer's chat template."),
    out: Path = typer.Option(Path("results/runs"), help="Root of the result directories."),
    run_id: Optional[str] = typer.Option(None, help="Directory name (default: policy + config hash); one policy only."),
) -> None:
    """Generate under one or more policies and print a comparison. Reruns resume unfinished runs."""
    try:
        _run(**locals())
    except USER_ERRORS as exc:
        fail(str(exc))


def _run(**o: Any) -> None:
    from harness.report import comparison_table
    from harness.runplan import execute_plan, prepare

    with console.status("checking options ..."):
        plan = prepare(o)
    with console.status(f"loading {o['model']} ..."):
        engine = build_backend(o["backend"], model=o["model"], dtype=o["dtype"], device=o["device"],
                               batch_size=o["batch_size"])
    progress = Progress(
        TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )

    def on_start(name: str, total: int):
        bar = progress.add_task(name, total=total)
        return lambda: progress.advance(bar)

    with progress:
        outcomes = execute_plan(plan, engine, on_start)
        for bar in progress.task_ids:
            progress.update(bar, completed=progress.tasks[bar].total)
    console.print(comparison_table(outcomes))
    for name, outcome in outcomes.items():
        note = " (already complete, reused)" if outcome.reused else ""
        if outcome.resumed_samples and not outcome.reused:
            note = f" (resumed: {outcome.resumed_samples} samples were already done)"
        console.print(f"[dim]{name}: {outcome.run_dir.path}{note}[/]")


@app.command()
def tasks(data_dir: Optional[Path] = typer.Option(None, help="Show which tasks DIR holds data for.")) -> None:
    """List the benchmark tasks with their data source (shipped YAML, local file, hub dataset)."""
    from harness.lmeval import shipped_tasks

    table = Table(title="Tasks")
    for col in ("name", "kind", "hub dataset", "local data", "yaml"):
        table.add_column(col)
    for name, info in shipped_tasks().items():
        if info["hub_path"] is None:
            hub = "- (problems shipped with the package)"
        else:
            hub = info["hub_path"] + (f" ({info['hub_name']})" if info["hub_name"] else "")
        local = "-"
        if data_dir is not None:
            path = data_dir / f"{name}.jsonl"
            local = str(path) if path.is_file() else f"[yellow]missing {path.name}[/]"
        table.add_row(name, info["kind"], hub, local, "shipped")
    console.print(table)


def run_defaults() -> dict[str, Any]:
    """Every ``run`` option with its default, by parameter name (what grid files may set)."""
    import inspect

    return {name: param.default.default for name, param in inspect.signature(run).parameters.items()}


@app.command()
def sweep(
    grid_file: Path = typer.Argument(..., help="Grid YAML: base options + axes (see harness/grids/)."),
    executor: str = typer.Option("local", help="local (sequential) or ray (one task per cell)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: a local Ray)."),
    out: Path = typer.Option(Path("results/sweeps"), help="Sweep results go to OUT/<grid name>/."),
) -> None:
    """Run every cell of a grid; complete cells are skipped, interrupted ones resume."""
    try:
        _sweep(grid_file, executor, address, out)
    except USER_ERRORS as exc:
        fail(str(exc))


def _sweep(grid_file: Path, executor: str, address: Optional[str], out: Path) -> None:
    from harness.report import human_bytes
    from harness.results import atomic_write_json
    from harness.runplan import prepare
    from harness.sweep import cell_label, expand, load_grid, run_local, run_ray

    if executor not in ("local", "ray"):
        raise DataError(f"unknown --executor {executor!r}: use local or ray")
    defaults = run_defaults()
    grid = load_grid(grid_file, defaults)
    target = out / grid.name
    cells = expand(grid, {**defaults, "out": str(target)})
    with console.status(f"checking {len(cells)} cells ..."):
        for cell in cells:  # every option error before any model is loaded
            prepare(cell)
    rows: list[dict[str, Any]] = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        bar = progress.add_task(f"sweep {grid.name} ({executor})", total=len(cells))

        def done(row: dict[str, Any]) -> None:
            progress.update(bar, advance=1, description=f"sweep {grid.name}: {row['cell']}")

        if executor == "local":
            rows = run_local(cells, done)
        else:
            rows = run_ray(cells, grid.resources, address, done)
    atomic_write_json(target / "sweep.json", {"grid": grid.__dict__, "executor": executor, "cells": rows})
    table = Table(title=f"sweep {grid.name}: {len(rows)} cells")
    for col in ("cell", "quality", "peak KV", "run", "status"):
        table.add_column(col)
    for row, cell in zip(rows, cells):
        quality = "-" if row["quality"] is None else f"{row['quality']:.1%}"
        kv = human_bytes(row["kv_peak_max_bytes"])
        table.add_row(cell_label(cell), quality, kv, Path(row["run_dir"]).name, "reused" if row["reused"] else "ran")
    console.print(table)
    console.print(f"[dim]written {target / 'sweep.json'}[/]")


@app.command()
def check(
    results_dir: Path = typer.Argument(..., help="Runs to check (searched recursively)."),
    baseline: Path = typer.Option(..., help="Baseline JSON, e.g. results/baselines/cpu-default.json."),
    update: bool = typer.Option(False, "--update", help="Write RESULTS_DIR's runs as the new baseline instead."),
    alpha: float = typer.Option(0.05, help="Significance level of the accuracy test."),
    kv_tolerance: float = typer.Option(0.02, help="Allowed relative rise of the KV ratio to full."),
    speed_tolerance: float = typer.Option(0.25, help="Allowed relative drop of the speed ratio to full."),
) -> None:
    """Regression gate: exit 0 when every baseline entry holds, 1 on a regression, 2 on bad input."""
    try:
        _check(results_dir, baseline, update, alpha, kv_tolerance, speed_tolerance)
    except USER_ERRORS as exc:
        fail(str(exc))


def _check(results_dir: Path, baseline: Path, update: bool, alpha: float, kv_tol: float, speed_tol: float) -> None:
    import json

    from harness.check import compare, make_baseline
    from harness.leaderboard import load_runs
    from harness.results import atomic_write_json

    records = load_runs(results_dir) if results_dir.is_dir() else []
    if not records:
        raise ResultsError(f"no finished runs (summary.json) under {results_dir}")
    if update:
        baseline.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(baseline, make_baseline(records, baseline.stem))
        console.print(f"baseline written: {baseline} ({len(records)} runs)")
        return
    try:
        reference = json.loads(baseline.read_text())
        reference["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ResultsError(f"cannot read baseline {baseline}: create one with --update") from None
    findings = compare(reference, records, alpha, kv_tol, speed_tol)
    table = Table(title=f"check against {baseline.name}")
    for col in ("entry", "metric", "baseline", "current", "rule", "result"):
        table.add_column(col)
    for f in findings:
        table.add_row(f.key, f.metric, f.baseline, f.current, f.detail, "[red]FAIL[/]" if f.failed else "[green]ok[/]")
    console.print(table)
    failed = [f for f in findings if f.failed]
    if failed:
        err_console.print(f"[bold red]regression:[/] {len(failed)} of {len(findings)} checks failed")
        raise typer.Exit(1)
    console.print(f"[green]all {len(findings)} checks passed[/]")


@app.command()
def report(
    results_dir: Path = typer.Argument(..., help="Directory holding run directories (searched recursively)."),
    out: Path = typer.Option(Path("report"), help="Where report.md, report.html and plots/ go."),
) -> None:
    """Leaderboard of finished runs: markdown, a self-contained HTML page and PNG plots."""
    try:
        _report(results_dir, out)
    except USER_ERRORS as exc:
        fail(str(exc))


def _report(results_dir: Path, out: Path) -> None:
    import json

    from harness.leaderboard import html_page as page
    from harness.leaderboard import load_runs, markdown
    from harness.plots import all_plots
    from harness.results import atomic_write_text

    if not results_dir.is_dir():
        raise ResultsError(f"results directory not found: {results_dir}")
    records = load_runs(results_dir)
    if not records:
        raise ResultsError(f"no finished runs (summary.json) under {results_dir}: run `dynts-bench run` first")
    bench = []
    for path in sorted(results_dir.rglob("*.json")):
        if path.name not in ("summary.json", "config.json"):
            try:
                if "rows" in json.loads(path.read_text()):
                    bench.append(path)
            except (ValueError, OSError):
                continue
    with console.status("plotting ..."):
        plots = all_plots(records, bench, out / "plots")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", markdown(records))
    atomic_write_text(out / "report.html", page(records, plots))
    table = Table(title=f"{len(records)} runs from {results_dir}")
    for col in ("workload", "policy", "budget", "quality", "KV vs full", "speed vs full", "run"):
        table.add_column(col)
    for r in sorted(records, key=lambda r: (r.workload, r.budget_tokens or 0, -(r.quality or 0))):
        table.add_row(r.workload, r.policy, r.budget_label, "-" if r.quality is None else f"{r.quality:.1%}",
                      "-" if r.kv_ratio_vs_full is None else f"{r.kv_ratio_vs_full:.2f}x",
                      "-" if r.speed_ratio_vs_full is None else f"{r.speed_ratio_vs_full:.2f}x", r.run_id)
    console.print(table)
    console.print(f"written {out / 'report.md'}, {out / 'report.html'} and {len(plots)} plots in {out / 'plots'}")


@app.command()
def policies() -> None:
    """List the policies with one-line descriptions and their options."""
    table = Table(title="Policies")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("needs")
    table.add_column("options")
    for name, cls in registry().items():
        options = ", ".join(f"{k}={v}" for k, v in policy_options(cls).items())
        table.add_row(name, describe(cls), ", ".join(sorted(cls.needs)) or "-", options or "-")
    console.print(table)


@app.command()
def backends() -> None:
    """List the backends and whether they can run here."""
    table = Table(title="Backends")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("status")
    for entry in BACKENDS.values():
        missing = entry.available()
        table.add_row(entry.name, entry.description, "[green]ready[/]" if missing is None else f"[yellow]{missing}[/]")
    console.print(table)


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
) -> None:
    """Per-step decode latency and KV bytes vs context length: full cache against each policy, one run."""
    try:
        from harness.bench import run_bench

        run_bench(
            console, model, policy, context, budget, interval, window, steps, repeats, dtype, device, predictor, out
        )
    except USER_ERRORS as exc:
        fail(str(exc))


@app.command("make-task")
def make_task(
    out: Path = typer.Option(..., help="JSONL file to write (id, prompt, answer, trace, critical, values)."),
    count: int = typer.Option(500, min=1, help="Number of problems."),
    split: str = typer.Option("heldout", help="Name of the random stream: train, validation, heldout, ..."),
    seed: int = typer.Option(0),
    min_vars: int = typer.Option(9, help="Fewest prompt variables (steps = variables - 1)."),
    max_vars: int = typer.Option(13, help="Most prompt variables."),
    filler_lines: int = typer.Option(2, help="Filler lines after each step (the filler ratio)."),
    gap_lines: int = typer.Option(2, help="Extra filler lines before the first step on results."),
    recheck: bool = typer.Option(True, help="Re-check every step ('wait check ...')."),
) -> None:
    """Generate tiny-reasoner problems with reference traces and ground-truth critical tokens."""
    from harness.results import atomic_write_text
    from harness.tinyreasoner.task import Knobs, problems, task_facts

    try:
        knobs = Knobs(min_vars, max_vars, filler_lines, gap_lines, recheck)
    except TaskConfigError as exc:
        fail(str(exc))
        return
    items = list(problems(count, seed, split, knobs))
    atomic_write_text(out, "".join(json.dumps(p.to_json()) + "\n" for p in items))
    table = Table(title=f"{count} problems -> {out}")
    for column in ("median thinking tokens", "min / max", "critical (result statements)", "step lines"):
        table.add_column(column, justify="right")
    facts = task_facts(items)
    table.add_row(f"{facts['median_thinking_tokens']:.0f}",
                  f"{facts['min_thinking_tokens']:.0f} / {facts['max_thinking_tokens']:.0f}",
                  f"{facts['critical_fraction']:.1%}", f"{facts['step_line_fraction']:.1%}")
    console.print(table)


@app.command("make-tiny-reasoner")
def make_tiny_reasoner(
    out: Path = typer.Option(..., help="Model directory to write (resumes from OUT/checkpoint.pt)."),
    seed: int = typer.Option(0),
    steps: int = typer.Option(8000, min=1, help="Optimiser steps (the shipped model: 8000)."),
    batch_size: int = typer.Option(16, min=1),
    lr: float = typer.Option(2e-3),
    hidden_size: int = typer.Option(128),
    layers: int = typer.Option(4),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    heldout: int = typer.Option(500, min=1, help="Held-out problems for the final exact-match check."),
) -> None:
    """Train the tiny reasoning model from scratch (about an hour on 2 CPU cores) and write its model card."""
    from harness.tinyreasoner.train import TrainConfig
    from harness.tinyreasoner.train import make_tiny_reasoner as make

    cfg = TrainConfig(seed=seed, steps=steps, batch_size=batch_size, lr=lr, hidden_size=hidden_size, layers=layers,
                      threads=threads)
    progress = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    with progress:
        bar = progress.add_task("train", total=steps)
        report = make(out, cfg, heldout, log=progress.console.log,
                      on_step=lambda done: progress.update(bar, completed=done))
    held = report["heldout"]
    console.print(f"held-out exact match {held['exact_match']:.1%} on {held['problems']} problems, median "
                  f"thinking {held['median_thinking_tokens']:.0f} tokens; model card: {out / 'README.md'}")


register_predictor_commands(app, console, guard)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted: finished samples are saved; rerun the same command to resume[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
