"""The workload a run's options ask for."""

from __future__ import annotations

from harness.runs.options import RunOptions
from harness.workloads.interface import Workload
from harness.workloads.prompts import PromptWorkload
from harness.workloads.replay import ReplayWorkload


def build_workload(options: RunOptions) -> Workload:
    """The workload the options ask for, its data read and validated (no model needed)."""
    if options.protocol == "replay":
        return ReplayWorkload(options.prompts, options.limit, options.chat)
    if options.task is not None:
        from harness.workloads.lmeval_workload import TaskWorkload  # lm-eval: seconds to import

        return TaskWorkload(options)
    return PromptWorkload(options.prompts, options.limit, options.chat)
