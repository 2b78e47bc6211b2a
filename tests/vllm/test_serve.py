"""``dynts-bench serve --backend vllm`` end to end: vLLM's OpenAI server (engine core in its own process) with
DynTS inside, against the in-process backend running the same policy on the same prompts."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: backends/vllm/install_cpu_env.sh makes its venv")

from backends.base import SamplingParams  # noqa: E402
from tests.served import chat_answer, completion, running_server  # noqa: E402
from tests.vllm.test_engine import BUDGET, make_policy, requests_for  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("serve"), "--backend", "vllm", "-p", "dynts",
                        "--budget", str(BUDGET.budget), "--window", str(BUDGET.window),
                        "--interval", str(BUDGET.interval), "--batch-size", "4") as (port, stats, _):
        yield port, stats


def test_served_dynts_generates_what_the_in_process_backend_does(server, vllm_backend, problems):
    port, stats = server
    requests = requests_for(vllm_backend, problems, n=4)
    sampling = SamplingParams(max_new_tokens=600)
    policy = make_policy("dynts")
    vllm_backend.prepare(policy)
    expected = vllm_backend.generate(requests, policy, BUDGET, sampling)
    served = [completion(port, r.prompt_ids, vllm_backend.eos_ids) for r in requests]
    for want, got in zip(expected, served):
        assert got["token_ids"] == want.output_ids, want.request_id
    rows = [json.loads(line) for line in stats.read_text().splitlines()]
    assert len(rows) == len(requests)
    bound = math.ceil((BUDGET.budget + BUDGET.interval) / 32) + 1
    for row, want in zip(sorted(rows, key=lambda r: r["output_tokens"]),
                         sorted(expected, key=lambda r: r.generated_tokens)):
        assert row["output_tokens"] == want.generated_tokens
        assert row["compactions"] == want.compressions > 0  # the served request was compacted as often
        assert row["freed_blocks"] > 0
        assert row["peak_blocks"] <= bound


def test_chat_requests_get_the_served_policy(server, problems):
    port, stats = server
    before = len(stats.read_text().splitlines())
    problem = problems[0]
    text = chat_answer(port, problem)
    assert text.rstrip().endswith(f"answer {problem['answer']}")
    rows = stats.read_text().splitlines()[before:]
    assert len(rows) == 1 and json.loads(rows[0])["compactions"] > 0
