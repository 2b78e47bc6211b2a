"""The report: ``report.md``, ``report.html``, ``report.json`` and ``plots/`` written for a directory of finished
runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from harness.results.leaderboard import RunRecord, bench_files, html_page, load_runs, markdown, report_json
from harness.results.plots import all_plots
from harness.results.rundir import ResultsError, atomic_write_text


def write_report(
    results_dir: Path, out: Path, plotting: Callable[[], AbstractContextManager[Any]] = nullcontext
) -> tuple[list[RunRecord], list[Path]]:
    """``report.md``, ``report.html``, ``report.json`` and ``plots/`` for the finished runs under ``results_dir``."""
    if not results_dir.is_dir():
        raise ResultsError(f"results directory not found: {results_dir}")
    records = load_runs(results_dir)
    if not records:
        raise ResultsError(f"no finished runs (summary.json) under {results_dir}: run `dynts-bench run` first")
    with plotting():
        plots = all_plots(records, bench_files(results_dir), out / "plots")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", markdown(records))
    atomic_write_text(out / "report.html", html_page(records, plots))
    atomic_write_text(out / "report.json", json.dumps(report_json(records), indent=2, sort_keys=True) + "\n")
    return records, plots
