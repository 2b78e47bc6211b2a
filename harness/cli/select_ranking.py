"""``dynts-bench select-ranking``: choose a DynTS head's ranking options on a validation split (and store them)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from harness.cli.app import console, err_console, say
from harness.cli.progress import progress_for
from harness.predictor_pipeline.ranking_selection import (
    OBJECTIVES,
    TIE_RULE,
    CellResult,
    CellRunner,
    Combination,
    SelectionError,
    cell_options,
    check_predictor,
    check_prompts,
    grid,
    heldout_overlap,
    parse_pool_next,
    parse_recency,
    report_header,
    select,
    selection_record,
    write_selection,
)
from harness.results.rundir import atomic_write_json
from harness.results.tables import ranking_selection_table
from harness.runs.options import RunOptions


def select_ranking(
    predictor: Path = typer.Argument(..., help="Predictor directory (predictor.json + model.safetensors)."),
    prompts: Path = typer.Option(..., help="Validation JSONL (`make-task --split validation`), never the file "
                                 "the results are reported on."),
    budget: Optional[list[int]] = typer.Option(None, "--budget", help="KV budget; repeatable: the score is the "
                                               "mean over the budgets."),
    model: Optional[str] = typer.Option(None, help="Model alias or directory (default: the predictor's base "
                                        "model)."),
    pool_next: str = typer.Option("0,1", help="pool_next values to try, comma-separated."),
    recency: str = typer.Option("0,0.5,1,2,4", help="recency values to try, comma-separated."),
    protocol: str = typer.Option("generate", help="generate: score accuracy (higher is better). replay (models "
                                 "that do not think): score KL(full || dynts) on forced traces (lower is better)."),
    limit: Optional[int] = typer.Option(None, help="First N problems of --prompts."),
    window: int = typer.Option(32, help="Most recent tokens that are always kept."),
    interval: int = typer.Option(16, help="Compress when the cache reaches budget + interval."),
    batch_size: int = typer.Option(32, help="Sequences decoded together."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default 1)."),
    out: Path = typer.Option(Path("results/runs"), help="Root of the result directories, as for `run` (complete "
                             "runs are reused, interrupted ones resume)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Report file (default "
                                             "OUT/select-ranking-<predictor directory name>.json)."),
    write: bool = typer.Option(False, "--write", help="Store the chosen options in the predictor's "
                               "predictor.json ('selection', with what they were chosen on)."),
    allow_heldout: bool = typer.Option(False, "--allow-heldout", help="Run even when --prompts holds problems "
                                       "of the shipped held-out file (refused by default)."),
    per_budget: bool = typer.Option(False, "--per-budget", help="Also choose at each --budget alone (its best "
                                    "cell, same tie rule); --write then stores a table by budget. A run at budget B "
                                    "uses B's entry; between two chosen budgets the nearer by ratio (240 takes "
                                    "400's over 100's), a tie to the smaller; below or above all of them the "
                                    "nearest end's (an extrapolation); a run without a budget (--trigger-len) the "
                                    "mean's choice, stored beside the table."),
    allow_stale: bool = typer.Option(False, "--allow-stale", help="Reuse or resume cells that other code made "
                                     "(refused by default; each run directory records the code that made it)."),
) -> None:
    """Run DynTS with every (pool_next, recency) combination on validation prompts, as `run` does, and choose."""
    config = check_predictor(predictor)
    check_prompts(prompts)
    if protocol not in OBJECTIVES:
        raise SelectionError(f"unknown --protocol {protocol!r}: use generate or replay")
    if not budget:
        raise SelectionError("give at least one --budget (e.g. --budget 86 --budget 128)")
    budgets = sorted(set(budget))
    pool_values, recency_values = parse_pool_next(pool_next), parse_recency(recency)
    combos = grid(pool_values, recency_values)
    objective = OBJECTIVES[protocol]
    base = RunOptions(model=model or str(config.get("base_model", "")) or "tiny-reasoner", prompts=prompts,
                      protocol=protocol, limit=limit, window=window, interval=interval, predictor=predictor,
                      batch_size=batch_size, threads=threads, out=out, allow_stale=allow_stale)
    overlap = heldout_overlap(prompts, limit)
    if overlap and not allow_heldout:
        raise SelectionError(f"{overlap}: options chosen on the reported problems overfit the report; pass a "
                             "validation split (`make-task --split validation`) or --allow-heldout")
    if overlap:
        err_console.print(f"warning: {overlap}; the choice is not independent of the held-out results",
                          style="yellow", highlight=False)
    runner = CellRunner(objective)
    try:
        cells = [cell_options(base, c, b) for c in combos for b in budgets]
        with console.status(f"checking {len(cells)} cells ..."):
            runner.check(cells)
        header = report_header(predictor, base, objective, budgets, pool_values, recency_values, runner.n_items)
        with progress_for(console) as progress:
            bar = progress.add_task(f"select-ranking: {len(combos)} combinations x {len(budgets)} budgets",
                                    total=len(cells))

            def done(combo: Combination, b: int, result: CellResult) -> None:
                progress.update(bar, advance=1, description=f"pool_next {combo[0]}, recency {combo[1]:g} @{b}")

            outcome = select(base, combos, budgets, runner, objective, done, per_budget)
    finally:
        runner.close()
    report = {**header, **outcome, "heldout_overlap": overlap, "written": False}
    record = selection_record(report)
    if write:
        report["replaced_selection"] = write_selection(predictor, record)
        report["written"] = True
    report_path = json_path or out / f"select-ranking-{predictor.resolve().name}.json"
    atomic_write_json(report_path, report)
    console.print(ranking_selection_table(report))
    chosen = report["chosen"]
    say(f"tie rule: {TIE_RULE}")
    say(f"chosen: pool_next {chosen['pool_next']}, recency {chosen['recency']:g} ({objective.metric} "
        f"{chosen['score']:.4g}); report -> {report_path}", style="bold")
    for b, best in report.get("by_budget", {}).items():
        say(f"chosen at budget {b}: pool_next {best['pool_next']}, recency {best['recency']:g} ({objective.metric} "
            f"{best['score']:.4g})", style="bold")
    if write:
        table = " and a table by budget" if per_budget else ""
        say(f"stored in {predictor / 'predictor.json'} (selection{table}; the weights are unchanged)")
