"""The project's benchmark tasks: lm-eval task YAMLs in ``harness/tasks``, listed and loaded through lm-eval's
``TaskManager`` (imported when a task is first needed: lm-eval is slow to import)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from harness.workloads.prompt_file import DataError
from zoo.errors import UserError

TASKS_DIR = Path(__file__).parents[1] / "tasks"


class TaskError(UserError, ValueError):
    """A benchmark task cannot be loaded; the message says which and how to fix it."""


def _manager():
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notices are not for our users
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def task_names() -> list[str]:
    """The shipped tasks' names, read from their YAML files' ``task:`` lines (no lm-eval import: for help text)."""
    found = (re.search(r"^task:\s*(\S+)", path.read_text(), re.MULTILINE) for path in TASKS_DIR.glob("*.yaml"))
    return sorted(m.group(1) for m in found if m)


def shipped_tasks() -> dict[str, dict[str, Any]]:
    """The project's task YAMLs: name -> {kind, hub_path, hub_name, embedded_task, yaml}; ``embedded_task`` names
    the tiny-reasoner task whose shipped held-out problems a task without a hub dataset reads."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out = {}
    for name, entry in sorted(_manager().task_index.items()):
        cfg = load_yaml(entry.yaml_path, resolve_func=False)
        kwargs = cfg.get("dataset_kwargs", {})
        out[name] = {"kind": kwargs.get("kind", "math"), "hub_path": kwargs.get("hub_path"),
                     "hub_name": kwargs.get("hub_name"), "embedded_task": kwargs.get("embedded_task"),
                     "yaml": str(entry.yaml_path)}
    return out


def build_task(name: str, data_dir: Path | None, samples: int) -> tuple[Any, str]:
    """The lm-eval task ``name`` with ``samples`` responses per problem, reading ``data_dir`` when given."""
    from lm_eval.tasks._yaml_loader import load_yaml

    manager = _manager()
    if name not in manager.task_index:
        raise TaskError(f"unknown task {name!r}: choose one of {', '.join(sorted(manager.task_index))}")
    if samples < 1:
        raise TaskError(f"--samples must be >= 1, got {samples}")
    cfg = load_yaml(manager.task_index[name].yaml_path, resolve_func=True)
    kwargs = dict(cfg.get("dataset_kwargs", {}))
    if data_dir is not None:
        kwargs["data_dir"] = str(data_dir)
    cfg.update(
        repeats=samples,
        filter_list=[{"name": "all_samples", "filter": [{"function": "take_first_k", "k": samples}]}],
        dataset_kwargs=kwargs,
    )
    try:
        task = manager.load([cfg])["tasks"][name]
    except DataError as exc:
        raise TaskError(str(exc)) from None
    return task, kwargs.get("kind", "math")
