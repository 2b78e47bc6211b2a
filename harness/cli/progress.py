"""Progress for long work: a rich bar on a terminal, plain timestamped lines in a log (CI, ``nohup``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

#: a plain line at most this often per task, and at every 10% step
LINE_EVERY_S = 30.0


class _LineProgress:
    """The subset of ``rich.progress.Progress`` the harness uses, printing one line per notable advance."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._tasks: dict[int, dict] = {}
        self._started = time.monotonic()

    def add_task(self, description: str, total: float | None = None, completed: float = 0) -> int:
        task_id = len(self._tasks)
        self._tasks[task_id] = {"description": description, "total": total, "completed": completed,
                                "last_line": time.monotonic(), "last_decile": -1}
        self._line(task_id)
        return task_id

    def update(self, task_id: int, advance: float = 0, completed: float | None = None,
               description: str | None = None, total: float | None = None) -> None:
        task = self._tasks[task_id]
        if description is not None:
            task["description"] = description
        if total is not None:
            task["total"] = total
        task["completed"] = completed if completed is not None else task["completed"] + advance
        decile = int(10 * task["completed"] / task["total"]) if task["total"] else -1
        if decile != task["last_decile"] or time.monotonic() - task["last_line"] >= LINE_EVERY_S:
            task["last_decile"] = decile
            self._line(task_id)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def _line(self, task_id: int) -> None:
        task = self._tasks[task_id]
        task["last_line"] = time.monotonic()
        total = f"/{task['total']:.0f}" if task["total"] else ""
        elapsed = time.monotonic() - self._started
        self.console.print(f"{task['description']}: {task['completed']:.0f}{total} ({elapsed:.0f} s)",
                           markup=False, highlight=False)

    def finish(self) -> None:
        for task_id, task in self._tasks.items():
            if task["total"] and task["completed"] < task["total"]:
                self.update(task_id, completed=task["total"])


@contextmanager
def progress_for(console: Console, label: str = "") -> Iterator[Progress | _LineProgress]:
    """A rich progress bar when ``console`` is a terminal, else plain progress lines."""
    if not console.is_terminal:
        yield _LineProgress(console)
        return
    columns = (TextColumn(f"[bold]{label}" if label else "[bold]{task.description:<12}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        yield progress


def per_policy(progress: Progress | _LineProgress) -> Callable[[str, int], Callable[[], None]]:
    """An ``on_start(policy, n_items)`` for ``execute_plan``: one bar (or line stream) per policy."""

    def on_start(name: str, total: int) -> Callable[[], None]:
        task_id = progress.add_task(name, total=total)
        return lambda: progress.advance(task_id)

    return on_start
