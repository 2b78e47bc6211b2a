"""Benchmarks: scripts that measure, each runnable as ``python -m benchmarks.<name>`` or as a file."""
