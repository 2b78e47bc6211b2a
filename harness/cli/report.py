"""``dynts-bench report``: the leaderboard of finished runs as markdown, HTML and plots."""

from __future__ import annotations

from pathlib import Path

import typer

from harness.cli.app import console, say
from harness.results.report_writer import write_report
from harness.results.tables import runs_table


def report(
    results_dir: Path = typer.Argument(..., help="Directory holding run directories (searched recursively)."),
    out: Path = typer.Option(Path("report"), help="Where report.md, report.html, report.json and plots/ go."),
) -> None:
    """Leaderboard of finished runs: markdown, a self-contained HTML page, PNG plots and report.json (with the
    content hashes of the models and predictors that made it)."""
    records, plots = write_report(results_dir, out, lambda: console.status("plotting ..."))
    console.print(runs_table(records, results_dir))
    say(f"written {out / 'report.md'}, {out / 'report.html'}, {out / 'report.json'} and {len(plots)} plots in "
        f"{out / 'plots'}", style="")
