"""``dynts-bench backends``: the backends and whether they can run here."""
from __future__ import annotations

from backends import BACKENDS
from harness.cli.app import console
from harness.results.tables import backends_table


def backends() -> None:
    """List the backends and whether they can run here."""
    console.print(backends_table(BACKENDS.values()))
