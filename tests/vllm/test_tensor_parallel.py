"""Tensor parallelism (2 ranks on the CPU engine): every rank holds half the KV heads; each must choose the same
kept set from the same inputs (hidden states replicated, keys and queries gathered over ranks), or the ranks'
caches would stop describing the same tokens. vLLM's workers run in their own processes here."""

from __future__ import annotations

import math
import os

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: backends/vllm/install_cpu_env.sh makes its venv")

from tests.vllm.test_engine import BUDGET, GREEDY, make_policy, requests_for  # noqa: E402

if len(os.sched_getaffinity(0)) < 2:
    pytest.skip("tensor parallelism over 2 ranks needs 2 CPUs", allow_module_level=True)


@pytest.fixture(scope="module")
def tp_backend():
    from backends.vllm.backend import VLLMBackend

    built = VLLMBackend("tiny-reasoner", batch_size=4, tensor_parallel=2)
    yield built
    built.close()


@pytest.mark.parametrize("name", ["dynts", "snapkv", "tova"])
def test_every_rank_keeps_the_same_tokens(tp_backend, vllm_backend, problems, name):
    policy = make_policy(name)
    tp_backend.prepare(policy)
    requests = requests_for(tp_backend, problems, n=4)
    results = tp_backend.generate(requests, policy, BUDGET, GREEDY)
    digests = tp_backend.rpc("dynts_kept_digest")
    assert len(digests) == 2 and digests[0] == digests[1]  # chosen independently, before rank 0's broadcast
    assert all(r.compressions > 0 for r in results)
    bound = math.ceil((BUDGET.budget + BUDGET.interval) / tp_backend.block_size) + 1
    assert all(0 < r.extra["kv_peak_blocks"] <= bound and r.extra["kv_freed_blocks"] > 0 for r in results)
    if name == "dynts":  # the one policy that answers at budget 86: tensor parallelism must not break it
        single = make_policy(name)
        vllm_backend.prepare(single)
        reference = vllm_backend.generate(requests_for(vllm_backend, problems, n=4), single, BUDGET, GREEDY)
        same = sum(a.output_ids == b.output_ids for a, b in zip(results, reference))
        correct = sum(r.text.strip().endswith(f"answer {p['answer']}") for r, p in zip(results, problems))
        assert correct >= 3 and same >= 2, (correct, same)


def test_describe_reports_the_ranks(tp_backend):
    described = tp_backend.describe()
    assert described["tensor_parallel"] == 2 and described["kv_layout"]


def test_run_tensor_parallel_is_recorded_and_one_rank_hashes_do_not_move(tmp_path, problems):
    """``run --backend vllm --tensor-parallel 2`` end to end through the CLI: the rank count is part of the run's
    config (a 2-rank run is never reused as a 1-rank one), and a 1-rank run's config hash is what it was before
    the option existed (no ``tensor_parallel`` key)."""
    import json
    import subprocess
    import sys

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": p["id"], "prompt": p["prompt"], "answer": p["answer"]}) + "\n"
                               for p in problems[:2]))
    command = [sys.executable, "-m", "harness.cli", "run", "--backend", "vllm", "-p", "window", "--prompts",
               str(prompts), "--max-new-tokens", "64", "--batch-size", "2", "--out", str(tmp_path / "runs")]
    done = subprocess.run([*command, "--tensor-parallel", "2"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["extra"]["tensor_parallel"] == 2

    from harness.runs.options import RunOptions
    from harness.runs.runplan import prepare

    one_rank = prepare(RunOptions(backend="vllm", policy=("window",), prompts=prompts, max_new_tokens=64,
                                  batch_size=2)).config_for("window")
    assert "tensor_parallel" not in one_rank.extra
