"""``dynts-bench tasks``: the benchmark tasks and where their data comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from harness.cli.app import console
from harness.results.tables import tasks_table
from harness.workloads.lmeval_tasks import shipped_tasks


def tasks(data_dir: Optional[Path] = typer.Option(None, help="Show which tasks DIR holds data for.")) -> None:
    """List the benchmark tasks with their data source (shipped YAML, local file, hub dataset)."""
    console.print(tasks_table(shipped_tasks(), data_dir))
