"""SGLang backend tests: run only where SGLang 0.5.23 is installed (``backends/sglang/install_cpu_env.sh``),
skip cleanly elsewhere (every module starts with ``pytest.importorskip``).

On a CPU machine the CPU shim (``backends/sglang/cpu_shim``) is activated before SGLang is imported, and the CPU
platform is selected (``SGLANG_USE_CPU_ENGINE=1``). Importing SGLang takes ~20-40 s on 2 busy cores: one
import per session. Run with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
if importlib.util.find_spec("sglang") is not None:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
        from backends.sglang.cpu_shim import activate

        activate()


import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

HELDOUT = Path(__file__).resolve().parents[2] / "harness" / "data" / "tiny_reasoner_heldout.jsonl"


@pytest.fixture(scope="session")
def sglang_backend():
    """One in-process ``sglang.Engine`` (the shipped tiny reasoner) for the whole session: starting one takes
    1-3 minutes on 2 busy cores."""
    from backends.sglang.checks import PINNED_SGLANG, installed_sglang

    if installed_sglang() != PINNED_SGLANG:
        pytest.skip(f"the sglang backend is pinned to SGLang {PINNED_SGLANG}, found {installed_sglang()}")
    from backends.sglang.backend import SGLangBackend

    built = SGLangBackend("tiny-reasoner", batch_size=8)
    yield built
    built.close()


@pytest.fixture()
def backend(sglang_backend):
    """What ``tests/test_backend_contract.py``'s checks take."""
    return sglang_backend


@pytest.fixture(scope="session")
def problems() -> list[dict]:
    return [json.loads(line) for line in HELDOUT.read_text().splitlines()[:8]]
