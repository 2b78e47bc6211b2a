"""How far scores fixed at write time can go on the tiny task: statements first, by the task's own rules.

    OMP_NUM_THREADS=2 python -m benchmarks.static_score_bound --limit 200 --budget 72 --budget 86 --budget 176

DynTS scores each token once, when it is written, and never revises the score. This bound keeps that constraint
and replaces the learned head with the task's rules: a token that states a result (``r7 6`` after a step's sum,
``harness.tinyreasoner.problems``) scores 4, every other token its write position (later = higher, below 1). Unlike
the oracle policy it never learns that a statement was read (spent), so spent statements stay as DynTS's would.
Its accuracy is what a predictor that told statements from everything else, at write time, would reach: the gap
to DynTS is then a matter of what the head learns, not of scoring at write time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from backends.hf.backend import TransformersBackend
from benchmarks.dynts_budget_curve import accuracy
from harness.runs.catalog import default_prompts
from harness.scoring.passk import wilson_ci
from harness.tinyreasoner.oracle import ROLE, SPENT, Oracle
from harness.tinyreasoner.problems import DEF_NAME, DEF_VALUE
from harness.workloads.prompt_file import load_prompts
from zoo.base import CacheView


class WriteTimeStatements(Oracle):
    """The oracle's online roles, read as they were when each token was written (a spent statement is still a
    statement), ranked statements first, then by write position."""

    name = "write-time-statements"

    def score(self, view: CacheView) -> torch.Tensor:
        roles = view.state[ROLE]
        statement = (roles == DEF_NAME) | (roles == DEF_VALUE) | (roles == SPENT)
        position = view.positions.float() / view.positions.max().clamp(min=1).float()
        return position + 4.0 * statement.float()


def bound(engine: TransformersBackend, prompts: Path, limit: int, budget: int) -> tuple[int, int]:
    """(correct, problems) of the write-time statement ranking at ``budget`` (window 32, interval 16)."""
    items = load_prompts(prompts, limit)
    return accuracy(engine, items, WriteTimeStatements(), budget, window=32, interval=16), len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-reasoner")
    parser.add_argument("--prompts", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--budget", type=int, action="append", default=None)
    args = parser.parse_args()
    engine = TransformersBackend(args.model, batch_size=50)
    print("| budget | write-time statements first | 95% CI |\n|---|---|---|")
    for budget in args.budget or [72, 86, 88, 96, 112, 128, 176]:
        correct, n = bound(engine, args.prompts or default_prompts(args.model), args.limit, budget)
        low, high = wilson_ci(correct, n)
        print(f"| {budget} | {correct / n:.1%} ({correct}/{n}) | {low:.0%}-{high:.0%} |", flush=True)


if __name__ == "__main__":
    main()
