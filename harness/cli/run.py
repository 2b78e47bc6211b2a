"""``dynts-bench run``: generate under one or more policies and print a comparison."""

from __future__ import annotations

import inspect
from typing import Any

from backends import build_backend
from harness.cli.app import console, say
from harness.cli.progress import per_policy, progress_for
from harness.results.tables import comparison_table
from harness.runs.options import RunOptions, cli_parameters
from harness.runs.runplan import execute_plan, prepare


def run(**values: Any) -> None:
    """Generate under one or more policies and print a comparison. Reruns resume unfinished runs."""
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
