"""``dynts-bench sweep``: every cell of a grid, then the grid's speed probe."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from harness.cli.app import console, say
from harness.cli.progress import progress_for
from harness.results.leaderboard import load_runs
from harness.results.rundir import atomic_write_json
from harness.results.tables import speed_table, sweep_table
from harness.runs.grid import cell_label, expand, load_grid, run_local, run_ray
from harness.runs.runplan import prepare
from harness.timing.speed_probe import probe_sweep
from harness.workloads.prompt_file import DataError


def sweep(
    grid_file: Path = typer.Argument(..., help="Grid YAML: base options + axes (see harness/grids/)."),
    executor: str = typer.Option("local", help="local (sequential) or ray (one task per cell)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: a local Ray)."),
    out: Path = typer.Option(Path("results/sweeps"), help="Sweep results go to OUT/<grid name>/."),
    allow_stale: bool = typer.Option(False, "--allow-stale", help="Reuse or resume cells that other code made "
                                     "(refused by default); the speed probe always times this code."),
) -> None:
    """Run every cell of a grid; complete cells are skipped, interrupted ones resume."""
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
    keys = [load_runs(Path(row["run_dir"]))[0].gate_key for row in rows]
    with progress_for(console) as progress:
        bar = progress.add_task(f"speed probe: {len(set(keys))} cells x {spec.rounds} rounds", total=spec.rounds)
        return probe_sweep(cells, keys, spec, engines, lambda r: progress.update(bar, advance=1))
