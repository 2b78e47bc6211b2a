"""The ``dynts-bench`` command line (typer): one module per command; this file only wires them, in the order
``--help`` lists them. Every command runs inside one error boundary (``app.BoundedTyper``)."""

from __future__ import annotations

from harness.cli import (
    analyze,
    bench,
    collect_traces,
    eval_predictor,
    gate,
    label_traces,
    list_backends,
    list_policies,
    list_tasks,
    make_task,
    make_tiny_reasoner,
    report,
    run,
    select_ranking,
    serve_policy,
    sweep,
    train_predictor,
)
from harness.cli.app import BoundedTyper

app = BoundedTyper(add_completion=False, no_args_is_help=True, help="Run, compare and deploy KV-cache eviction.")
app.command()(run.run)
app.command()(list_tasks.tasks)
app.command()(sweep.sweep)
app.command()(gate.check)
app.command()(report.report)
app.command()(list_policies.policies)
app.command()(list_backends.backends)
app.command()(bench.bench)
app.command("make-task")(make_task.make_task)
app.command("make-tiny-reasoner")(make_tiny_reasoner.make_tiny_reasoner)
# the DynTS predictor pipeline: collect-traces -> label -> train-predictor -> eval-predictor -> select-ranking,
# and analyze
app.command("collect-traces")(collect_traces.collect_traces)
app.command()(label_traces.label)
app.command("train-predictor")(train_predictor.train_predictor)
app.command("eval-predictor")(eval_predictor.eval_predictor)
app.command("select-ranking")(select_ranking.select_ranking)
app.command()(analyze.analyze)
app.command()(serve_policy.serve)


def main() -> None:
    app()
