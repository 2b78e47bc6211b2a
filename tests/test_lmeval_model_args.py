"""lm-eval builds our model from ``--model_args`` alone: its ``simple_evaluate`` and its own CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.lmeval import DyntsLM
from harness.workloads.lmeval_tasks import TASKS_DIR, TaskError
from harness.workloads.prompt_file import DataError

ARGS = "model=tiny-reasoner,policy=window,budget=96,window=32,interval=16,batch_size=4"


def _task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@pytest.mark.slow
def test_simple_evaluate_builds_dynts_bench_from_model_args() -> None:
    from lm_eval.evaluator import simple_evaluate

    results = {}
    for policy in ("full", "oracle"):
        out = simple_evaluate(model="dynts-bench", model_args=ARGS.replace("policy=window", f"policy={policy}"),
                              tasks=["tiny_reasoner"], task_manager=_task_manager(), limit=4,
                              apply_chat_template=True, bootstrap_iters=0)
        results[policy] = out["results"]["tiny_reasoner"]
    # the shipped reasoner solves its own problems with the full cache; the oracle keeps what they need
    assert results["full"]["pass_at_1,all_samples"] == 1.0
    assert results["oracle"]["pass_at_1,all_samples"] >= 0.75


def test_model_args_are_checked_like_cli_options() -> None:
    with pytest.raises(DataError, match="option budget must be an integer, got 'lots'"):
        DyntsLM.create_from_arg_string("model=tiny-reasoner,policy=window,budget=lots")
    with pytest.raises(DataError, match="unknown option 'colour'"):
        DyntsLM.create_from_arg_string("colour=red")
    with pytest.raises(TaskError, match="lm-eval runs one, pass policy=NAME"):
        DyntsLM.create_from_arg_string("model=tiny-reasoner")


@pytest.mark.slow
def test_lm_evals_own_cli_runs_our_model(tmp_path: Path) -> None:
    """``python -m harness.lmeval`` is lm-eval's ``cli_evaluate`` with ``dynts-bench`` registered."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "harness.lmeval", "run", "--model", "dynts-bench", "--model_args",
         ARGS.replace("policy=window", "policy=full"), "--tasks", "tiny_reasoner", "--include_path", str(TASKS_DIR),
         "--limit", "2", "--apply_chat_template", "--output_path", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    written = list(tmp_path.rglob("results_*.json"))
    assert written, done.stdout[-2000:]
    assert json.loads(written[0].read_text())["results"]["tiny_reasoner"]["pass_at_1,all_samples"] == 1.0
