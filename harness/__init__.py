"""The harness: everything above the policies (``zoo``) and the engines (``backends``).

``cli`` (typer wiring) builds ``options.RunOptions``; ``runplan`` turns them into policies, a schedule and a
``workloads`` object (prompt file, lm-eval task, trace replay); ``lifecycle`` runs each policy into a
resumable result directory (``results``), recording the environment (``env``), content fingerprints
(``fingerprints``) and process / GPU measurements (``measure``); ``metrics`` aggregates the rows, ``tables``
prints them, ``leaderboard`` / ``plots`` make reports, ``sweep`` runs grids, ``check`` is the regression gate.
``importance`` is the DynTS predictor pipeline, ``tinyreasoner`` the embedded default workload's task, model
and oracle, ``lmeval`` our lm-eval model and ``tasks`` the benchmark YAMLs.
"""
