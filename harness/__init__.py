"""Benchmark harness: environment capture, metrics and result storage for KV-cache eviction runs."""
