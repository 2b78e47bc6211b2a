"""``dynts-bench policies``: the registered policies, what they need and their options."""
from __future__ import annotations

from harness.cli.app import console
from harness.results.tables import policies_table
from zoo import describe, option_help, policy_options, policy_overview, registry


def policies() -> None:
    """List the policies with one-line descriptions, what they need, and each option's default and meaning."""
    console.print(policies_table(registry(), describe, policy_options, option_help))
    console.print(policy_overview(registry()), markup=False, highlight=False)
