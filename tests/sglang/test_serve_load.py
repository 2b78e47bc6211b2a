"""``dynts-bench serve --backend sglang`` under a small load behind an API key (``tests/served_load.py``)."""

from __future__ import annotations

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed here: backends/sglang/install_cpu_env.sh makes its venv")

from benchmarks.serve_load.server import gauge  # noqa: E402
from tests.served_load import assert_held, check_a_loaded_server  # noqa: E402


def test_a_loaded_server_holds_drains_and_answers_like_offline(tmp_path, sglang_backend):
    summary = check_a_loaded_server("sglang", tmp_path, kv_tokens=4096, engine=sglang_backend)
    assert_held(summary)
    assert gauge(summary["metrics"], "sglang:max_total_num_tokens") == 4096  # --kv-tokens reached the pool
