"""A load generator for ``dynts-bench serve``: ``python -m benchmarks.serve_load --help``."""
