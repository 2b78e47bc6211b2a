"""``dynts-bench serve --backend vllm`` under a small load behind an API key (``tests/served_load.py``)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: backends/vllm/install_cpu_env.sh makes its venv")

from benchmarks.serve_load.server import gauge  # noqa: E402
from tests.served_load import assert_held, check_a_loaded_server  # noqa: E402


def test_a_loaded_server_holds_drains_and_answers_like_offline(tmp_path, vllm_backend):
    summary = check_a_loaded_server("vllm", tmp_path, kv_tokens=4096, engine=vllm_backend)
    assert_held(summary)
    # --kv-tokens 4096 with 32-token blocks: a pool of exactly 128 blocks
    assert 'num_gpu_blocks="128"' in summary["metrics"]
    assert gauge(summary["metrics"], "vllm:num_requests_running") == 0
