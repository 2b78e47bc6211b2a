"""``dynts-bench sweep grid.yaml``: the cross product of a grid of ``run`` options, one run per cell.

A grid file is data::

    name: cpu-default
    base: {model: smollm2-135m, max_new_tokens: 64, window: 16, interval: 8}
    grid: {policy: [full, window, snapkv], budget: [96, 128], seed: [0, 1]}
    resources: {num_cpus: 1, num_gpus: 0}      # per cell, for the ray executor
    speed: {limit: 8, max_new_tokens: 128, rounds: 5}   # optional: the speed probe (harness.timing.speed_probe)

Option names are those of ``dynts-bench run`` (underscores): the fields of ``RunOptions``, whose types every
cell is checked against before anything runs. ``full`` ignores budgets, so its cells are
deduplicated. Cells land in the usual result layout (``out/<policy>-<config hash>/``): a complete cell is
skipped, an interrupted one resumes, whichever executor ran it. Executors: ``local`` (sequential, in this
process, the model loaded once per model/dtype/device) and ``ray`` (one Ray task per cell, with the cell's
CPU/GPU resources; ``--address`` joins an existing cluster). With a ``speed:`` section the sweep then times
every cell on that short workload, interleaved with a fixed reference computation, into ``OUT/<name>/speed.json``
(rerun every time: it measures this code on this machine now).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from backends import Backend, build_backend
from harness.runs.options import PLACEMENT, RunOptions
from harness.runs.runplan import execute_plan, prepare
from harness.timing.speed_probe import ProbeSpec
from harness.workloads.prompt_file import DataError

SCHEDULE_KEYS = ("mode", "budget", "interval", "window", "trigger_len", "ratio", "evict_prompt")


@dataclass
class Grid:
    name: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    resources: dict[str, float]
    speed: ProbeSpec | None = None


def load_grid(path: Path) -> Grid:
    """Read and validate a grid file against ``RunOptions`` (names and types; one-line errors naming the fix)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read grid {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("grid"), dict) or not raw["grid"]:
        raise DataError(f"{path}: a grid file needs a non-empty 'grid:' mapping of option -> list of values")
    base = raw.get("base") or {}
    if not isinstance(base, dict):
        raise DataError(f"{path}: 'base:' must be a mapping of option -> value")
    axes = {k: v if isinstance(v, list) else [v] for k, v in raw["grid"].items()}
    options = [f.name for f in fields(RunOptions) if f.name not in PLACEMENT]
    for key in [*base, *axes]:
        if key not in options:
            raise DataError(f"{path}: unknown option {key!r} (use `run` option names: {', '.join(options)})")
    for key, values in axes.items():
        if not values:
            raise DataError(f"{path}: grid axis {key!r} has no values")
    name = str(raw.get("name") or path.stem)
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise DataError(f"{path}: grid name {name!r} must be a single directory name (it becomes OUT/<name>)")
    resources = {"num_cpus": 1.0, "num_gpus": 0.0, **(raw.get("resources") or {})}
    speed = ProbeSpec.from_mapping(raw["speed"], str(path)) if "speed" in raw else None
    if speed is not None and any(k in [*base, *axes] for k in ("task", "protocol")):
        raise DataError(f"{path}: the speed probe decodes a prompt file; drop 'speed:' for task or replay grids")
    grid = Grid(name, base, axes, resources, speed)
    expand(grid, Path("."), where=str(path))  # every cell's option types, before anything runs
    return grid


def expand(grid: Grid, out: Path, where: str = "grid") -> list[RunOptions]:
    """One ``RunOptions`` per cell (a single policy each) writing under ``out``, full-cache duplicates removed."""
    cells: list[RunOptions] = []
    keys = list(grid.axes)
    defaults = RunOptions()
    for values in itertools.product(*(grid.axes[k] for k in keys)):
        options = RunOptions.from_mapping({**grid.base, **dict(zip(keys, values))}, where=where)
        options = options.replace(out=out)
        if options.policy == ("full",):  # no schedule: one cell whatever the budget axes say
            options = options.replace(**{k: getattr(defaults, k) for k in SCHEDULE_KEYS})
        if options not in cells:
            cells.append(options)
    return cells


def cell_label(options: RunOptions) -> str:
    parts = [",".join(options.policy)]
    if options.policy != ("full",):
        parts.append(f"B={options.budget}" if options.mode == "budget" else f"T={options.trigger_len}")
    parts.append(f"seed={options.seed}")
    return " ".join(parts)


def engine_for(options: RunOptions, engines: dict | None = None) -> Backend:
    """The engine ``options`` describe: the one in ``engines`` built for the same key, else a new one (kept
    there, so cells that differ only in policy or schedule load the model once)."""
    key = options.engine_key
    engine = engines.get(key) if engines is not None else None
    if engine is None:
        engine = build_backend(options.backend, **options.backend_kwargs())
        if engines is not None:
            engines[key] = engine
    return engine


def run_cell(options: RunOptions, engines: dict | None = None) -> dict[str, Any]:
    """Run one cell and return its row (run directory, config hash, headline metrics)."""
    plan = prepare(options)
    options.apply_threads()
    (name, outcome), = execute_plan(plan, engine_for(options, engines)).items()
    m = outcome.summary
    return {
        "cell": cell_label(options),
        "policy": name,
        "budget": options.budget if name != "full" else None,
        "seed": options.seed,
        "run_dir": str(outcome.run_dir.path),
        "config_hash": outcome.run_dir.config_hash,
        "reused": outcome.reused,
        "quality": m.get("pass@1", m.get("accuracy")),
        "kv_peak_max_bytes": m.get("kv_peak_max_bytes"),
        "generated_tokens": m.get("total_generated_tokens"),
    }


def run_local(cells: list[RunOptions], on_done: Callable[[dict], None] | None = None,
              engines: dict | None = None) -> list[dict[str, Any]]:
    engines = {} if engines is None else engines
    rows = []
    for options in cells:
        row = run_cell(options, engines)
        rows.append(row)
        if on_done is not None:
            on_done(row)
    return rows


def run_ray(
    cells: list[RunOptions],
    resources: dict[str, float],
    address: str | None = None,
    on_done: Callable[[dict], None] | None = None,
) -> list[dict[str, Any]]:
    """One Ray task per cell. Results are written by the workers into the same result layout."""
    try:
        import ray
    except ImportError:
        raise DataError("the ray executor needs Ray: pip install 'dynts-bench[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        remote = ray.remote(num_cpus=resources["num_cpus"], num_gpus=resources["num_gpus"])(run_cell)
        pending = {remote.remote(options): i for i, options in enumerate(cells)}
        rows: list[dict[str, Any] | None] = [None] * len(cells)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(done[0])
            rows[index] = ray.get(done[0])
            if on_done is not None:
                on_done(rows[index])
        return [row for row in rows if row is not None]
    finally:
        if started_here:
            ray.shutdown()
