"""``dynts-bench serve --backend vllm --tensor-parallel 2``: vLLM's server with two worker ranks, the policy rebuilt
in every rank from the served spec. Its own module so that no other multi-rank engine is alive beside it."""

from __future__ import annotations

import json
import math
import os

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: backends/vllm/install_cpu_env.sh makes its venv")

from backends.base import SamplingParams  # noqa: E402
from tests.served import completion, running_server  # noqa: E402
from tests.vllm.test_engine import BUDGET, make_policy, requests_for  # noqa: E402

if len(os.sched_getaffinity(0)) < 2:
    pytest.skip("tensor parallelism over 2 ranks needs 2 CPUs", allow_module_level=True)


def test_served_with_two_ranks_compacts_and_answers(tmp_path, vllm_backend, problems):
    """Answers as the one-rank backend does (tensor parallelism changes float reduction order, so the same
    thresholds as the in-process 2-rank test) and frees blocks in every request."""
    requests = requests_for(vllm_backend, problems, n=4)
    policy = make_policy("dynts")
    vllm_backend.prepare(policy)
    expected = vllm_backend.generate(requests, policy, BUDGET, SamplingParams(max_new_tokens=600))
    with running_server(tmp_path, "--backend", "vllm", "-p", "dynts", "--budget", str(BUDGET.budget), "--window",
                        str(BUDGET.window), "--interval", str(BUDGET.interval), "--batch-size", "4",
                        "--tensor-parallel", "2") as (port, stats, log):
        served = [completion(port, r.prompt_ids, vllm_backend.eos_ids) for r in requests]
        rows = [json.loads(line) for line in stats.read_text().splitlines()]
        assert "tensor_parallel_size': 2" in log.read_text()
    correct = sum(s["text"].strip().endswith(f"answer {p['answer']}") for s, p in zip(served, problems))
    same = sum(s["token_ids"] == e.output_ids for s, e in zip(served, expected))
    assert correct >= 3 and same >= 2, (correct, same)
    bound = math.ceil((BUDGET.budget + BUDGET.interval) / 32) + 1
    assert len(rows) == 4 and all(r["compactions"] > 0 and r["freed_blocks"] > 0 and r["peak_blocks"] <= bound
                                  for r in rows)
