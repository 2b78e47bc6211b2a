"""Workloads: what a run generates and how its rows are judged (``base.Workload``), one small file each.

* ``prompts`` -- a JSONL prompt file, the model writes its own answer (default: the tiny reasoner's problems);
* ``task`` -- a benchmark task through lm-eval (``--task``);
* ``replay`` -- reference traces forced through the decode loop (``--protocol replay``).

A new workload is a class meeting ``Workload`` plus one branch in ``build_workload``.
"""

from __future__ import annotations

from harness.options import RunOptions
from harness.workloads.base import Workload, request_seed


def build_workload(options: RunOptions) -> Workload:
    """The workload the options ask for, its data read and validated (no model needed)."""
    if options.protocol == "replay":
        from harness.workloads.replay import ReplayWorkload

        return ReplayWorkload(options.prompts, options.limit, options.chat)
    if options.task is not None:
        from harness.workloads.task import TaskWorkload

        return TaskWorkload(options)
    from harness.workloads.prompts import PromptWorkload

    return PromptWorkload(options.prompts, options.limit, options.chat)


__all__ = ["Workload", "build_workload", "request_seed"]
