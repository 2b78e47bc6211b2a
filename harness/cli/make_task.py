"""``dynts-bench make-task``: embedded-task problems with reference traces and ground-truth critical tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from harness.cli.app import console
from harness.results.rundir import atomic_write_text
from harness.results.tables import task_facts_table
from harness.tinyreasoner.problems import TaskConfigError
from harness.tinyreasoner.tasks import TASKS, embedded_task

#: knobs that only one task has, by task (``--filler-lines`` is both tasks')
TASK_KNOBS = {"sum": ("min_vars", "max_vars", "gap_lines", "recheck"),
              "program": ("min_iterations", "max_iterations")}


def task_knobs(task: str, given: dict[str, Any]) -> Any:
    """The task's knobs dataclass from the flags given (``None``: not given, the task's default); a flag of the
    other task is refused in one line."""
    spec = embedded_task(task)
    for other, names in TASK_KNOBS.items():
        stray = [n for n in names if other != task and given.get(n) is not None]
        if stray:
            flag = "--" + stray[0].replace("_", "-")
            own = ", ".join("--" + n.replace("_", "-") for n in (*TASK_KNOBS[task], "filler_lines"))
            raise TaskConfigError(f"{flag} is a knob of the {other} task, not of --task {task}: drop it "
                                  f"(the {task} task's knobs: {own})")
    chosen = {n: given[n] for n in (*TASK_KNOBS[task], "filler_lines") if given.get(n) is not None}
    return spec.knobs(**chosen)


def make_task(
    out: Path = typer.Option(..., help="JSONL file to write (id, prompt, answer, trace, critical, values)."),
    task: str = typer.Option("sum", help=f"Embedded task: {' | '.join(TASKS)} (sum: the tiny reasoner's pairwise "
                             "sum; program: a register program run in a loop)."),
    count: int = typer.Option(500, min=1, help="Number of problems."),
    split: str = typer.Option("heldout", help="Name of the random stream: train, validation, heldout, ..."),
    seed: int = typer.Option(0),
    min_vars: Optional[int] = typer.Option(None, help="sum: fewest prompt variables (steps = variables - 1; "
                                           "default 9)."),
    max_vars: Optional[int] = typer.Option(None, help="sum: most prompt variables (default 13)."),
    gap_lines: Optional[int] = typer.Option(None, help="sum: extra filler lines before the first step on results "
                                            "(default 2)."),
    recheck: Optional[bool] = typer.Option(None, "--recheck/--no-recheck",
                                           help="sum: re-check every step ('wait check ...'; default on)."),
    min_iterations: Optional[int] = typer.Option(None, help="program: fewest loop iterations (default 5)."),
    max_iterations: Optional[int] = typer.Option(None, help="program: most loop iterations (at most 9; default 9)."),
    filler_lines: Optional[int] = typer.Option(None, help="Filler lines after each step (sum, default 2) or "
                                               "iteration (program, default 3): the filler ratio."),
) -> None:
    """Generate embedded-task problems with reference traces and ground-truth critical tokens."""
    spec = embedded_task(task)
    knobs = task_knobs(task, {"min_vars": min_vars, "max_vars": max_vars, "gap_lines": gap_lines,
                              "recheck": recheck, "min_iterations": min_iterations,
                              "max_iterations": max_iterations, "filler_lines": filler_lines})
    items = list(spec.problems(count, seed, split, knobs))
    atomic_write_text(out, "".join(json.dumps(p.to_json()) + "\n" for p in items))
    console.print(task_facts_table(count, out, spec.task_facts(items)))
