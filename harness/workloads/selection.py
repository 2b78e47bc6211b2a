"""The workload a run's options ask for."""

from __future__ import annotations

from pathlib import Path

from harness.runs.catalog import default_prompts
from harness.runs.options import RunOptions
from harness.workloads.interface import Workload
from harness.workloads.prompts import PromptWorkload
from harness.workloads.replay import ReplayWorkload


def prompts_path(options: RunOptions) -> Path:
    """``--prompts``, or the held-out problems of the model's embedded task (the first task's for other models)."""
    return options.prompts or default_prompts(options.model)


def build_workload(options: RunOptions) -> Workload:
    """The workload the options ask for, its data read and validated (no model needed)."""
    if options.protocol == "replay":
        return ReplayWorkload(prompts_path(options), options.limit, options.chat)
    if options.task is not None:
        from harness.workloads.lmeval_workload import TaskWorkload  # lm-eval: seconds to import

        return TaskWorkload(options)
    return PromptWorkload(prompts_path(options), options.limit, options.chat)
