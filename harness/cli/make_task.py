"""``dynts-bench make-task``: tiny-reasoner problems with reference traces and ground-truth critical tokens."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from harness.cli.app import console
from harness.results.rundir import atomic_write_text
from harness.results.tables import task_facts_table
from harness.tinyreasoner.problems import Knobs, problems, task_facts


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
    knobs = Knobs(min_vars, max_vars, filler_lines, gap_lines, recheck)
    items = list(problems(count, seed, split, knobs))
    atomic_write_text(out, "".join(json.dumps(p.to_json()) + "\n" for p in items))
    console.print(task_facts_table(count, out, task_facts(items)))
