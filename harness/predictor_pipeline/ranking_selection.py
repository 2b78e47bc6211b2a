"""Choosing a DynTS head's ranking options (``pool_next``, ``recency``) on a validation split, by running DynTS
with each combination through the same run lifecycle as ``dynts-bench run`` and keeping the best.

Objective per protocol: ``generate`` -- accuracy, mean over the budgets (higher is better); ``replay`` (models
that do not think, e.g. SmolLM2) -- mean KL(full || dynts) over the forced traces, mean over the budgets (lower
is better). Per budget (``--per-budget``) each budget's own metric chooses that budget's options as well, stored
as a table DynTS looks a run's budget up in (``zoo.dynts.stored_selection``).

Tie rule (exact ties of the objective): the combination nearest the paper's ranking wins -- smaller
``pool_next`` first, then smaller ``recency`` -- so ``(0, 0)`` wins every tie it is part of.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.results.rundir import atomic_write_json
from harness.runs.config import file_sha256
from harness.runs.environment import environment
from harness.runs.fingerprints import predictor_fingerprint
from harness.runs.grid import engine_for
from harness.runs.options import RunOptions
from harness.runs.runplan import RunPlan, execute_plan, prepare
from harness.workloads.prompt_file import default_prompts_path, load_prompts
from zoo.errors import UserError
from zoo.predictor import CONFIG, WEIGHTS

#: (pool_next, recency): the two DynTS ranking options a head stores in ``predictor.json``'s ``selection``
Combination = tuple[int, float]
PAPER: Combination = (0, 0.0)
TIE_RULE = ("exact ties of the objective go to the combination nearest the paper's ranking: smaller pool_next "
            "first, then smaller recency ((0, 0) wins every tie it is part of)")
COMMAND = "dynts-bench select-ranking"


class SelectionError(UserError, ValueError):
    """The selection cannot run as asked; the message names the flag and the fix."""


@dataclass(frozen=True)
class Objective:
    metric: str  # the key of a run's summary metrics
    higher_is_better: bool
    description: str


OBJECTIVES = {
    "generate": Objective("accuracy", True, "accuracy, mean over the budgets (higher is better)"),
    "replay": Objective("kl_mean", False, "mean KL(full || dynts) over the forced traces, mean over the budgets "
                        "(lower is better)"),
}


@dataclass(frozen=True)
class CellResult:
    """One combination at one budget: the objective's metric and where the run lies."""

    value: float
    run_dir: str = ""
    config_hash: str = ""
    reused: bool = False


#: runs one cell (its ``RunOptions``) and returns its result; the real one is ``CellRunner``
RunCell = Callable[[RunOptions], CellResult]


# ---------------------------------------------------------------------------------------------------- input
def parse_pool_next(text: str) -> list[int]:
    """``--pool-next 0,1`` as distinct integers >= 0, in the order given."""
    values = _split(text, "--pool-next")
    try:
        parsed = [int(v) for v in values]
    except ValueError:
        raise SelectionError(f"--pool-next {text!r}: give integers >= 0 separated by commas, e.g. 0,1") from None
    if any(v < 0 for v in parsed):
        raise SelectionError(f"--pool-next {text!r}: every value must be >= 0")
    return list(dict.fromkeys(parsed))


def parse_recency(text: str) -> list[float]:
    """``--recency 0,0.5,1`` as distinct numbers >= 0, in the order given."""
    values = _split(text, "--recency")
    try:
        parsed = [float(v) for v in values]
    except ValueError:
        raise SelectionError(f"--recency {text!r}: give numbers >= 0 separated by commas, e.g. 0,0.5,1,2") from None
    if any(not v >= 0 or v == float("inf") for v in parsed):
        raise SelectionError(f"--recency {text!r}: every value must be a finite number >= 0")
    return list(dict.fromkeys(parsed))


def _split(text: str, flag: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise SelectionError(f"{flag} {text!r} is empty: give at least one value (the grid would be empty)")
    return values


def grid(pool_next: Sequence[int], recency: Sequence[float]) -> list[Combination]:
    """Every (pool_next, recency) combination, in the tie rule's order."""
    combos = sorted({(int(p), float(r)) for p in pool_next for r in recency})
    if not combos:
        raise SelectionError("the grid of --pool-next x --recency is empty: give at least one value of each")
    return combos


def check_predictor(directory: Path) -> dict[str, Any]:
    """The predictor's ``predictor.json`` as a dict; a one-line error when ``directory`` holds no predictor."""
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise SelectionError(f"no DynTS predictor at {directory}: expected {CONFIG} and {WEIGHTS} there (pass the "
                             "directory `dynts-bench train-predictor --out` wrote)")
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise SelectionError(f"unreadable {directory / CONFIG}: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("selection", {}), dict):
        raise SelectionError(f"{directory / CONFIG}: expected a JSON object whose 'selection' is an object")
    return config


def check_prompts(path: Path) -> None:
    if not path.is_file():
        raise SelectionError(f"--prompts {path}: no such file (make a validation split with `dynts-bench make-task "
                             "--split validation --seed 7 --out FILE`)")


def heldout_overlap(prompts: Path, limit: int | None) -> str | None:
    """Why ``prompts`` is (part of) the shipped held-out file the results are reported on, or None."""
    heldout = default_prompts_path()
    if file_sha256(prompts) == file_sha256(heldout):
        return f"{prompts} is the shipped held-out file ({heldout.name}, same sha256)"
    shared = {i.prompt for i in load_prompts(prompts, limit)} & {i.prompt for i in load_prompts(heldout)}
    if shared:
        return f"{len(shared)} of the problems in {prompts} are in the shipped held-out file ({heldout.name})"
    return None


# ---------------------------------------------------------------------------------------------------- running
def cell_options(base: RunOptions, combo: Combination, budget: int) -> RunOptions:
    """The ``run`` options of one cell: ``-p dynts`` with the combination as policy options, at ``budget``."""
    pool_next, recency = combo
    return base.replace(policy=("dynts",), budget=budget, mode="budget",
                        policy_arg=(f"dynts.pool_next={pool_next}", f"dynts.recency={recency!r}"))


class CellRunner:
    """Runs cells as ``dynts-bench run`` does (``prepare`` + ``execute_plan``, one result directory each, complete
    ones reused), the model loaded once and one workload shared by every cell: the prompts are read and encoded
    once and, for replay, the full-cache reference log-probabilities are computed once rather than per cell."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.engines: dict = {}
        self._plans: dict[RunOptions, RunPlan] = {}
        self._workload: Any = None

    def check(self, cells: Sequence[RunOptions]) -> None:
        """Every cell's options (no model needed), then every budget against the prompts (the model's tokenizer):
        one-line errors before any cell runs."""
        for options in cells:
            plan = prepare(options)
            if self._workload is None:
                self._workload = plan.workload
            self._plans[options] = dataclasses.replace(plan, workload=self._workload)
        seen: set[int | None] = set()
        for options, plan in self._plans.items():
            if options.budget not in seen:
                seen.add(options.budget)
                options.apply_threads()
                self._workload.check(engine_for(options, self.engines), plan.policies, plan.schedule)

    def __call__(self, options: RunOptions) -> CellResult:
        plan = self._plans.get(options)
        if plan is None:
            self.check([options])
            plan = self._plans[options]
        options.apply_threads()
        (_, outcome), = execute_plan(plan, engine_for(options, self.engines)).items()
        value = outcome.summary.get(self.objective.metric)
        if value is None:
            raise SelectionError(f"the run in {outcome.run_dir.path} has no {self.objective.metric!r}: the prompts "
                                 f"give the {options.protocol} objective nothing to score (answers or traces missing)")
        return CellResult(float(value), str(outcome.run_dir.path), outcome.run_dir.config_hash, outcome.reused)

    @property
    def n_items(self) -> int:
        """Problems each cell runs on (after ``check``)."""
        return self._workload.n_items if self._workload is not None else 0

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()


# ---------------------------------------------------------------------------------------------------- choosing
def choose(scores: dict[Combination, float], objective: Objective) -> Combination:
    """The combination with the best score; ties by ``TIE_RULE`` (a combination sorts nearer the paper's ranking
    the smaller it is). Scores are compared to 12 decimals: equal correct counts summed in another order are a
    tie, not a rounding error's win."""
    if not scores:
        raise SelectionError("no combination was scored: the grid is empty")
    sign = -1.0 if objective.higher_is_better else 1.0
    return min(scores, key=lambda c: (round(sign * scores[c], 12), c))


def select(base: RunOptions, combos: Sequence[Combination], budgets: Sequence[int], run_cell: RunCell,
           objective: Objective, on_cell: Callable[[Combination, int, CellResult], None] | None = None,
           per_budget: bool = False) -> dict[str, Any]:
    """Score every combination (mean of the objective's metric over ``budgets``) and choose one. Returns the
    report's ``rows`` (one per combination, with its cells), ``chosen`` and the paper's ranking's score; with
    ``per_budget`` also ``by_budget``, each budget's own choice (``choose_per_budget``)."""
    rows = []
    scores: dict[Combination, float] = {}
    for combo in combos:
        cells = []
        for budget in budgets:
            result = run_cell(cell_options(base, combo, budget))
            cells.append({"budget": budget, objective.metric: result.value, "run_dir": result.run_dir,
                          "config_hash": result.config_hash, "reused": result.reused})
            if on_cell is not None:
                on_cell(combo, budget, result)
        scores[combo] = sum(c[objective.metric] for c in cells) / len(cells)
        rows.append({"pool_next": combo[0], "recency": combo[1], "score": scores[combo], "cells": cells})
    chosen = choose(scores, objective)
    for row in rows:
        row["chosen"] = (row["pool_next"], row["recency"]) == chosen
    report = {"rows": rows, "chosen": {"pool_next": chosen[0], "recency": chosen[1], "score": scores[chosen]},
              "paper_score": scores.get(PAPER), "per_budget": per_budget}
    if per_budget:
        report["by_budget"] = choose_per_budget(rows, objective)
    return report


def choose_per_budget(rows: Sequence[dict[str, Any]], objective: Objective) -> dict[str, dict[str, Any]]:
    """Each budget's best combination by its cells alone (same ``TIE_RULE``), keyed by the budget as text (the
    form JSON stores): {budget: {pool_next, recency, score}}."""
    cells: dict[int, dict[Combination, float]] = {}
    for row in rows:
        for cell in row["cells"]:
            cells.setdefault(cell["budget"], {})[(row["pool_next"], row["recency"])] = cell[objective.metric]
    out = {}
    for budget in sorted(cells):
        best = choose(cells[budget], objective)
        out[str(budget)] = {"pool_next": best[0], "recency": best[1], "score": cells[budget][best]}
    return out


def selection_record(report: dict[str, Any]) -> dict[str, Any]:
    """What ``--write`` stores in ``predictor.json``'s ``selection``: the options and how they were chosen. Per
    budget, ``by_budget`` holds each budget's choice and ``pool_next`` / ``recency`` the mean's (what DynTS uses in
    a run without a budget)."""
    chosen = report["chosen"]
    by_budget = ({"by_budget": {b: {"pool_next": c["pool_next"], "recency": c["recency"]}
                                for b, c in report["by_budget"].items()}} if report.get("per_budget") else {})
    return {
        "pool_next": chosen["pool_next"],
        "recency": chosen["recency"],
        **by_budget,
        "selected": {
            "by": COMMAND,
            "protocol": report["protocol"],
            "objective": report["objective"]["metric"],
            "score": chosen["score"],
            **({"scores_by_budget": {b: c["score"] for b, c in report["by_budget"].items()}}
               if report.get("per_budget") else {}),
            "prompts": report["prompts"]["name"],
            "prompts_sha256": report["prompts"]["sha256"],
            "limit": report["prompts"]["limit"],
            "problems": report["prompts"]["problems"],
            "budgets": report["budgets"],
            "window": report["window"],
            "interval": report["interval"],
            "grid": {"pool_next": report["grid"]["pool_next"], "recency": report["grid"]["recency"]},
            "date": report["date"],
        },
    }


def write_selection(directory: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Store ``record`` as ``selection`` in ``directory``'s ``predictor.json`` (atomically: readers see the old
    file or the new one); returns the selection it replaced. The weights are untouched."""
    config = check_predictor(directory)
    previous = config.get("selection", {})
    config["selection"] = record
    atomic_write_json(directory / CONFIG, config)
    return previous


def report_header(predictor: Path, base: RunOptions, objective: Objective, budgets: Sequence[int],
                  pool_next: Sequence[int], recency: Sequence[float], n_problems: int) -> dict[str, Any]:
    """Everything that says what the selection runs on, taken before it runs (the git sha and date are those of
    the code that makes the runs); the rows and the choice are added by ``select``."""
    prompts = base.prompts
    assert prompts is not None
    return {
        "command": COMMAND,
        "predictor": str(predictor),
        "predictor_fingerprint": predictor_fingerprint(predictor),
        "model": base.model,
        "protocol": base.protocol,
        "objective": dataclasses.asdict(objective),
        "tie_rule": TIE_RULE,
        "prompts": {"name": prompts.name, "path": str(prompts), "sha256": file_sha256(prompts), "limit": base.limit,
                    "problems": n_problems},
        "budgets": list(budgets),
        "window": base.window,
        "interval": base.interval,
        "grid": {"pool_next": list(pool_next), "recency": list(recency)},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": environment(),
    }
