"""Workloads: what a run generates and how its rows are judged (``interface.Workload``), one small file each.

* ``prompts`` -- a JSONL prompt file (read by ``prompt_file``), the model writes its own answer (default: the tiny
  reasoner's problems);
* ``lmeval_workload`` -- a benchmark task through lm-eval (``--task``): the tasks in ``lmeval_tasks``, our model
  adapter in ``lmeval_model``;
* ``replay`` -- reference traces forced through the decode loop (``--protocol replay``; mechanics in
  ``replay_traces``).

A new workload is a class meeting ``Workload`` plus one branch in ``selection.build_workload``.
"""
