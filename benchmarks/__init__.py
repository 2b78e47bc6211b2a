"""Benchmarks and measurement scripts, each run from the repository root as ``python -m benchmarks.NAME``
(ratios side by side in one run, with their spread); the tests import their functions as ``benchmarks.NAME``."""
