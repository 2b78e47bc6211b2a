"""The harness: everything above the policies (``zoo``) and the engines (``backends``), grouped by concern.

* ``cli`` -- the ``dynts-bench`` command line, one module per command (``cli/__init__`` only wires them);
* ``runs`` -- one run from options to a result directory: ``options.RunOptions`` -> ``runplan`` (policies, schedule,
  a workload) -> ``lifecycle`` (resumable run directory, ``environment``, ``fingerprints``, ``resources``); ``grid``
  expands and runs sweep grids; ``catalog`` says which shipped model and predictor go with which policy;
* ``workloads`` -- what a run generates: prompt files, lm-eval tasks (``lmeval_*``), trace replay;
* ``results`` -- result directories (``rundir``), aggregation (``summary``), console ``tables``, the
  ``leaderboard`` and ``plots`` of a report (``report_writer``), the regression gate (``regression``);
* ``scoring`` -- answer extraction and checking (``answers``, math-verify in a worker), pass@k statistics;
* ``timing`` -- the sweep's speed probe and the per-step latency bench;
* ``predictor_pipeline`` -- the DynTS predictor: traces, labels, fitting, evaluation, eviction analysis;
* ``tinyreasoner`` -- the embedded default workload's task, model and oracle policy;
* ``lmeval`` -- lm-eval's own CLI with our model registered; ``tasks`` -- the benchmark task YAMLs (data, as are
  ``grids``, ``data`` and ``predictors``).
"""
