"""The vllm backend end to end on the shipped tiny reasoner, white-box where it matters: vLLM's own block pool,
scheduler and runner are read after every engine step."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: backends/vllm/install_cpu_env.sh makes its venv")

from backends.base import BackendError, GenerationRequest, SamplingParams
from backends.vllm.checks import check_engine_config, check_version
from zoo import build_policy
from zoo.schedule import EvictionSchedule

BUDGET = EvictionSchedule(budget=86, window=32, interval=16)
PAPER = EvictionSchedule(mode="paper", trigger_len=140, window=32, ratio=0.4)
GREEDY = SamplingParams(max_new_tokens=600)
VANILLA = Path(__file__).with_name("vanilla_vllm.py")


def make_policy(name: str):
    """A fresh policy; DynTS gets the predictor shipped for the tiny reasoner (the harness passes it the same)."""
    if name == "dynts":
        from harness.runs.catalog import shipped_predictor

        return build_policy(name, predictor=str(shipped_predictor("tiny-reasoner")))
    return build_policy(name)


def requests_for(backend, problems, n=8) -> list[GenerationRequest]:
    return [GenerationRequest(p["id"], backend.encode_prompt(p["prompt"])) for p in problems[:n]]


def free_blocks(backend) -> int:
    return backend.block_pool.get_num_free_blocks()


def check_consistency(backend) -> int:
    """Scheduler and runner agree on every running request's physical length and block table; returns how
    many requests hold dropped tokens."""
    from vllm.v1.request import RequestStatus

    scheduler, runner = backend.scheduler, backend.model_runner
    manager, runtime = scheduler.manager, runner.dynts
    table = runner.input_batch.block_table[0]
    compacted = 0
    for rid, request in scheduler.requests.items():
        if request.status != RequestStatus.RUNNING:
            continue
        blocks = [b.block_id for b in manager.req_to_blocks.get(rid, [])]
        dropped = manager.dropped.get(rid, 0)
        physical = request.num_computed_tokens - dropped
        compacted += dropped > 0
        assert len(blocks) == math.ceil(physical / backend.block_size), rid
        assert runner.requests[rid].block_ids[0] == blocks, rid
        row = runner.input_batch.req_id_to_index.get(rid)
        if row is not None:
            assert int(table.num_blocks_per_row[row]) == len(blocks)
            assert table.block_table.np[row, : len(blocks)].tolist() == blocks
        if runtime is not None and rid in runtime.requests:
            assert runtime.requests[rid].physical == physical, rid
            assert runtime.requests[rid].dropped == dropped, rid
    return compacted


def drive(backend, requests, policy, schedule, sampling, on_step: Callable[[int], None] | None = None) -> dict:
    """Submit ``requests`` and step the engine by hand, checking consistency (and calling ``on_step``) each step."""
    backend.prepare(policy)
    backend._configure(policy)
    engine = backend.llm.llm_engine
    keys = {}
    for r in requests:
        key = f"{r.request_id}#drive{time.monotonic_ns()}"
        keys[key] = r.request_id
        engine.add_request(key, {"prompt_token_ids": list(r.prompt_ids)},
                           backend._params(r, schedule if policy.evicts else None, sampling, key))
    outputs, step = {}, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished and out.request_id in keys:
                outputs[out.request_id] = list(out.outputs[0].token_ids)
        check_consistency(backend)
        if on_step is not None:
            on_step(step)
        step += 1
    for key in keys:
        backend.scheduler.kv_stats.pop(key, None)
    return {keys[k]: v for k, v in outputs.items()}


def test_no_eviction_is_byte_identical_to_vanilla_vllm(vllm_backend, problems, tmp_path):
    requests = requests_for(vllm_backend, problems)
    ours = vllm_backend.generate(requests, build_policy("full"), None, GREEDY)
    spec = tmp_path / "prompts.json"
    spec.write_text(json.dumps({"prompts": [r.prompt_ids for r in requests], "max_tokens": GREEDY.max_new_tokens,
                                "stop_token_ids": sorted(vllm_backend.eos_ids), "model": vllm_backend.path}))
    done = subprocess.run([sys.executable, str(VANILLA), str(spec)], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    vanilla = json.loads(spec.with_suffix(".out.json").read_text())
    assert [r.output_ids for r in ours] == vanilla
    assert all(r.compressions == 0 and r.extra["kv_freed_blocks"] == 0 for r in ours)


def test_compaction_returns_blocks_to_the_pool(vllm_backend, problems):
    """Every compaction frees whole blocks (the pool's free count rises by exactly that many) and no request
    ever holds more than ceil((budget + interval) / block_size) + 1 blocks."""
    manager = vllm_backend.scheduler.manager
    events = []
    release = manager.release_tail

    def spy(request_id, kept_blocks, dropped):
        before = free_blocks(vllm_backend)
        freed = release(request_id, kept_blocks, dropped)
        events.append((before, free_blocks(vllm_backend), freed))
        return freed

    idle = free_blocks(vllm_backend)
    manager.release_tail = spy
    try:
        results = vllm_backend.generate(requests_for(vllm_backend, problems), build_policy("window"), BUDGET, GREEDY)
    finally:
        del manager.release_tail
    assert events and len(events) == sum(r.compressions for r in results)
    assert all(freed >= 1 and after == before + freed for before, after, freed in events)
    bound = math.ceil((BUDGET.budget + BUDGET.interval) / vllm_backend.block_size) + 1
    assert max(r.extra["kv_peak_blocks"] for r in results) <= bound
    assert max(r.kv_peak_tokens for r in results) == BUDGET.budget + BUDGET.interval
    assert free_blocks(vllm_backend) == idle  # everything back once the requests finished
    assert not manager.dropped and not manager.req_to_blocks


@pytest.mark.parametrize("policy_name,schedule", [("window", BUDGET), ("dynts", BUDGET), ("snapkv", BUDGET),
                                                  ("dynts", PAPER)])
def test_same_kept_sets_as_the_transformers_backend(vllm_backend, problems, policy_name, schedule):
    """Same schedule semantics (budget and paper modes), same policy code: the same greedy tokens as the
    transformers backend's own decode loop, compression for compression."""
    from backends.hf.backend import TransformersBackend

    requests = requests_for(vllm_backend, problems, 4)
    hf = TransformersBackend("tiny-reasoner", batch_size=4)
    try:
        policy = make_policy(policy_name)
        hf.prepare(policy)
        expected = hf.generate(requests, policy, schedule, GREEDY)
    finally:
        hf.close() if hasattr(hf, "close") else None
    policy = make_policy(policy_name)
    vllm_backend.prepare(policy)
    got = vllm_backend.generate(requests, policy, schedule, GREEDY)
    assert [r.compressions for r in got] == [r.compressions for r in expected]
    assert [r.output_ids for r in got] == [r.output_ids for r in expected]
    assert [r.kv_peak_tokens for r in got] == [r.kv_peak_tokens for r in expected]


def test_consistency_through_compaction_preemption_and_abort(vllm_backend, problems):
    scheduler, manager = vllm_backend.scheduler, vllm_backend.scheduler.manager
    actions: dict[str, str] = {}

    def on_step(step: int) -> None:
        running = [r for r in scheduler.running if manager.dropped.get(r.request_id, 0) > 0]
        if running and "preempted" not in actions:
            victim = running[0]
            scheduler.running.remove(victim)
            scheduler._preempt_request(victim, time.monotonic())
            assert victim.request_id not in manager.dropped  # preemption forgets the compaction
            actions["preempted"] = victim.request_id
        elif len(running) > 1 and "aborted" not in actions:
            victim = next(r for r in running if r.request_id != actions["preempted"])
            before = free_blocks(vllm_backend)
            held = len(manager.req_to_blocks[victim.request_id])
            vllm_backend.llm.llm_engine.abort_request([victim.request_id], internal=True)
            assert free_blocks(vllm_backend) == before + held
            assert victim.request_id not in manager.dropped
            actions["aborted"] = victim.request_id
        elif "aborted" in actions and "after_abort" not in actions:
            # the runner learnt about the abort in this step's scheduler output and dropped its state
            assert actions["aborted"] not in vllm_backend.model_runner.dynts.requests
            actions["after_abort"] = "checked"

    idle = free_blocks(vllm_backend)
    outputs = drive(vllm_backend, requests_for(vllm_backend, problems, 6), build_policy("window"), BUDGET, GREEDY,
                    on_step)
    assert set(actions) == {"preempted", "aborted", "after_abort"}
    assert len(outputs) == 5  # the aborted request never finishes; the preempted one resumed and did
    preempted = next(k for k in outputs if actions["preempted"].startswith(k + "#"))
    assert outputs[preempted][-1] in vllm_backend.eos_ids or len(outputs[preempted]) == GREEDY.max_new_tokens
    assert free_blocks(vllm_backend) == idle and not manager.dropped and not manager.req_to_blocks


def test_unsupported_configurations_fail_closed_with_one_line(vllm_backend):
    bad = [{"enable_prefix_caching": True}, {"async_scheduling": True}, {"speculative_config": {"method": "ngram"}},
           {"pipeline_parallel_size": 2}, {"kv_cache_dtype": "fp8"}]
    for options in bad:
        with pytest.raises(BackendError) as err:
            check_engine_config(options)
        assert "\n" not in str(err.value)
    with pytest.raises(BackendError, match="verified against vLLM 0.32.0, found 0.33.0"):
        check_version("0.33.0")
    with pytest.raises(BackendError, match="policy h2o needs the observation 'attention'"):
        vllm_backend.prepare(build_policy("h2o"))
    request = GenerationRequest("r", vllm_backend.encode_prompt("a 1"), forced_ids=[3, 4])
    with pytest.raises(BackendError, match="--protocol replay needs forced tokens"):
        vllm_backend.generate([request], build_policy("full"), None, GREEDY)
