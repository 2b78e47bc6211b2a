"""Decode benchmark, the same as ``dynts-bench bench``: python -m benchmarks.decode_latency [--context 8192 ...]."""

from harness.cli import app

if __name__ == "__main__":
    app(["bench", *__import__("sys").argv[1:]])
