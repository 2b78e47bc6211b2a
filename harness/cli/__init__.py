"""The ``dynts-bench`` command line (typer): one module per command; this file only wires them, in the order
``--help`` lists them. Every command runs inside one error boundary (``app.BoundedTyper``)."""

from __future__ import annotations

from harness.cli import bench, gate, list_backends, list_policies, list_tasks, report, run, sweep
from harness.cli.app import BoundedTyper, console
from harness.cli.predictor_commands import register as register_predictor_commands
from harness.cli.serve_policy import register as register_serve_command
from harness.cli.tinyreasoner_commands import register as register_tiny_commands

app = BoundedTyper(add_completion=False, no_args_is_help=True, help="Run, compare and deploy KV-cache eviction.")
app.command()(run.run)
app.command()(list_tasks.tasks)
app.command()(sweep.sweep)
app.command()(gate.check)
app.command()(report.report)
app.command()(list_policies.policies)
app.command()(list_backends.backends)
app.command()(bench.bench)
register_tiny_commands(app, console)
register_predictor_commands(app, console)
register_serve_command(app, console)


def main() -> None:
    app()
