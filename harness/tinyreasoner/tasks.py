"""The embedded reasoning tasks a tiny reasoner is trained on, each with what training and evaluation need.

``sum`` (``problems.py``): values stated once and read once, by a pairwise reduction -- the shipped tiny
reasoner's task. ``program`` (``program.py``): registers overwritten in a loop, a counter, and one value
written first and read last -- live statements must be told from stale ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from harness.tinyreasoner import problems as sum_task
from harness.tinyreasoner import program
from harness.tinyreasoner.problems import Problem, TaskConfigError
from harness.tinyreasoner.vocab import PROGRAM_VOCABULARY, SUM_VOCABULARY, Vocabulary


@dataclass(frozen=True)
class EmbeddedTask:
    """One task: its vocabulary, generator, curriculum and the role rules context drop-out and the oracle use."""

    name: str
    summary: str  # one sentence for model cards and help
    vocabulary: Vocabulary
    knobs: Callable[..., Any]  # the knobs dataclass; ``knobs()`` is the training distribution
    generate: Callable[..., Problem]  # (index, seed, split, knobs) -> Problem
    token_roles: Callable[[Sequence[str]], list[int]]
    #: per token of a trace: where a statement stops being needed (``len`` if never), -1 for other tokens
    statement_dead_at: Callable[[Sequence[str], Sequence[int]], list[int]]
    line_starts: tuple[str, ...]  # words that open a line of the task's work (anything else opens filler)
    task_facts: Callable[[Sequence[Problem]], dict[str, float]]
    warmup_stage: Callable[[], Any]  # the curriculum's first 20%
    middle_stage: Callable[[], Any]  # the curriculum's 20-35%
    stage_size: Callable[[Any], dict[str, str]]  # how big a stage's problems are, for the training log
    heldout_file: str  # the shipped held-out problems in ``harness/data`` (make-task --task NAME, 500, seed 0)
    #: a generation limit above the longest trace of the training distribution plus the answer line
    max_new_tokens: int

    def problems(self, count: int, seed: int = 0, split: str = "heldout", knobs: Any = None) -> Iterator[Problem]:
        for index in range(count):
            yield self.generate(index, seed, split, knobs)


SUM = EmbeddedTask(
    name="sum",
    summary="the sum of prompt variables by a pairwise reduction: results stated once, read once, far later",
    vocabulary=SUM_VOCABULARY,
    knobs=sum_task.Knobs,
    generate=sum_task.generate,
    token_roles=sum_task.token_roles,
    statement_dead_at=sum_task.statement_spent_at,
    line_starts=("step",),
    task_facts=sum_task.task_facts,
    warmup_stage=lambda: sum_task.Knobs(min_vars=4, max_vars=8, gap_lines=0, random_filler=True, filler_ratio=1.0),
    middle_stage=lambda: sum_task.Knobs(min_vars=6, max_vars=sum_task.Knobs().max_vars, filler_lines=1,
                                        gap_lines=1),
    stage_size=lambda knobs: {"n_vars": f"{knobs.min_vars}-{knobs.max_vars}"},
    heldout_file="tiny_reasoner_heldout.jsonl",
    max_new_tokens=512,
)

PROGRAM = EmbeddedTask(
    name="program",
    summary="a register program run in a loop: registers overwritten every iteration, a loop counter, and one "
            "value written first and read last",
    vocabulary=PROGRAM_VOCABULARY,
    knobs=program.ProgramKnobs,
    generate=program.generate,
    token_roles=program.token_roles,
    statement_dead_at=program.statement_dead_at,
    line_starts=program.LINE_STARTS,
    task_facts=program.task_facts,
    warmup_stage=lambda: program.ProgramKnobs(min_iterations=1, max_iterations=4, filler_lines=1),
    middle_stage=lambda: program.ProgramKnobs(min_iterations=3, max_iterations=7, filler_lines=2),
    stage_size=lambda knobs: {"iterations": f"{knobs.min_iterations}-{knobs.max_iterations}"},
    heldout_file="tiny_program_heldout.jsonl",
    max_new_tokens=640,
)

TASKS = {task.name: task for task in (SUM, PROGRAM)}


def embedded_task(name: str) -> EmbeddedTask:
    if name not in TASKS:
        raise TaskConfigError(f"unknown embedded task {name!r}: choose one of {', '.join(TASKS)}")
    return TASKS[name]
