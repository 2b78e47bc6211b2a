"""The sglang backend end to end on the shipped tiny reasoner: SGLang's CPU engine (torch_native attention,
page size 1) against the transformers backend's own decode loop, the reference."""

from __future__ import annotations

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed here: backends/sglang/install_cpu_env.sh makes its venv")

from backends.base import BackendError, GenerationRequest, SamplingParams  # noqa: E402
from zoo import build_policy  # noqa: E402
from zoo.schedule import EvictionSchedule  # noqa: E402

BUDGET = EvictionSchedule(budget=86, window=32, interval=16)
PAPER = EvictionSchedule(mode="paper", trigger_len=140, window=32, ratio=0.4)
GREEDY = SamplingParams(max_new_tokens=600)


def make_policy(name: str):
    """A fresh policy; DynTS gets the predictor shipped for the tiny reasoner (the harness passes it the same)."""
    if name == "dynts":
        from harness.runs.catalog import shipped_predictor

        return build_policy(name, predictor=str(shipped_predictor("tiny-reasoner")))
    return build_policy(name)


def requests_for(backend, problems, n=8) -> list[GenerationRequest]:
    return [GenerationRequest(p["id"], backend.encode_prompt(p["prompt"])) for p in problems[:n]]


def reference(requests, policy_name, schedule):
    from backends.hf.backend import TransformersBackend

    hf = TransformersBackend("tiny-reasoner", batch_size=len(requests))
    policy = make_policy(policy_name)
    hf.prepare(policy)
    return hf.generate(requests, policy, schedule, GREEDY)


def dynts_on_a_new_engine(problems, n: int = 4, **backend_kwargs):
    """(requests, results) of DynTS at ``BUDGET`` on an engine of its own (closed afterwards)."""
    from backends.sglang.backend import SGLangBackend

    engine = SGLangBackend("tiny-reasoner", **backend_kwargs)
    try:
        requests = requests_for(engine, problems, n)
        policy = make_policy("dynts")
        engine.prepare(policy)
        return requests, engine.generate(requests, policy, BUDGET, GREEDY)
    finally:
        engine.close()


def test_no_eviction_gives_the_transformers_backends_greedy_tokens(sglang_backend, problems):
    requests = requests_for(sglang_backend, problems)
    ours = sglang_backend.generate(requests, build_policy("full"), None, GREEDY)
    expected = reference(requests, "full", None)
    assert [r.output_ids for r in ours] == [r.output_ids for r in expected]
    assert all(r.compressions == 0 for r in ours)
    # timings from SGLang's per-request metrics: time to first token, then the decode after it
    assert all(0 < r.ttft_s < r.ttft_s + r.decode_s and r.decode_s > 0 for r in ours)


@pytest.mark.parametrize("policy_name,schedule", [("window", BUDGET), ("dynts", BUDGET), ("snapkv", BUDGET),
                                                  ("dynts", PAPER)])
def test_same_kept_sets_as_the_transformers_backend(sglang_backend, problems, policy_name, schedule):
    """Same schedule semantics (budget and paper modes), same policy code: the same greedy tokens as the
    transformers backend, and SGLang's token pool never holds more than the schedule allows."""
    requests = requests_for(sglang_backend, problems, 4)
    expected = reference(requests, policy_name, schedule)
    policy = make_policy(policy_name)
    sglang_backend.prepare(policy)
    got = sglang_backend.generate(requests, policy, schedule, GREEDY)
    assert [r.output_ids for r in got] == [r.output_ids for r in expected]
    assert sum(r.compressions for r in got) > 0
    assert max(r.kv_peak_tokens for r in got) <= schedule.steady_capacity()
    assert all(r.extra["kv_freed_slots"] > 0 for r in got if r.compressions)


def test_retracted_requests_restart_cleanly_and_free_every_slot(problems):
    """SGLang's own retraction test mode (``SGLANG_TEST_RETRACT``: every 40th step its scheduler retracts a decode
    request, as under memory pressure). A retracted request is released (our state dropped, its compacted slots
    freed), re-prefilled from its whole logical sequence and compacted again: it still finishes, its stats carry
    over the attempts, the others keep the transformers backend's tokens, and SGLang's strict idle leak check
    (on by default) finds every slot back in the allocator -- the engine keeps serving afterwards."""
    import os

    from backends.sglang.backend import SGLangBackend

    forced = {"SGLANG_TEST_RETRACT": "1", "SGLANG_TEST_RETRACT_INTERVAL": "40"}
    saved = {key: os.environ.get(key) for key in forced}
    os.environ.update(forced)  # read by the scheduler process SGLang spawns now
    try:
        engine = SGLangBackend("tiny-reasoner", batch_size=4)
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    try:
        requests = requests_for(engine, problems, 4)
        policy = make_policy("dynts")
        engine.prepare(policy)
        got = engine.generate(requests, policy, BUDGET, GREEDY)
        expected = reference(requests, "dynts", BUDGET)
        retracted = [r for r in got if r.extra["kv_retractions"] > 0]
        assert retracted, "SGLang's retraction test mode retracted nothing"
        for result, want in zip(got, expected):
            assert result.finish_reason == "eos" and " answer " in result.text  # finished, not aborted
            assert result.compressions > 0 and result.extra["kv_freed_slots"] > 0
            if result.extra["kv_retractions"] == 0:
                assert result.output_ids == want.output_ids, result.request_id
        again = engine.generate(requests[:2], build_policy("full"), None, GREEDY)
        assert [r.finish_reason for r in again] == ["eos", "eos"]
    finally:
        engine.close()


def test_a_small_pool_admits_as_many_compacting_requests_as_their_schedule_allows(problems):
    """A pool of 4 x 130 slots: SGLang's own admission (prompt + the whole max_new_tokens = 600 must fit) would run
    these requests one at a time; each can only ever hold its schedule's capacity (budget + interval = 102 slots),
    so with the adapter's admission all 4 run together -- without a retraction, with the transformers backend's
    tokens. The lowest free-slot count any request saw shows how many shared the pool."""
    pool = 4 * 130
    requests, got = dynts_on_a_new_engine(problems, batch_size=4, kv_tokens=pool)
    expected = reference(requests, "dynts", BUDGET)
    assert [r.output_ids for r in got] == [r.output_ids for r in expected]
    assert sum(r.extra["kv_retractions"] for r in got) == 0
    capacity = BUDGET.steady_capacity()
    lowest_free = min(r.extra["kv_min_free_slots"] for r in got)
    assert lowest_free < pool - 3 * BUDGET.budget  # at least 4 requests held their budget at once
    assert all(r.kv_peak_tokens <= capacity for r in got)


def test_closing_one_engine_leaves_another_running(sglang_backend, problems):
    """SGLang's ``Engine.shutdown`` kills every child of the process; the backend narrows that to its own engine's
    processes, so a sweep holding engines of several batch sizes can close one and keep using the others."""
    from backends.sglang.backend import SGLangBackend

    other = SGLangBackend("tiny-reasoner", batch_size=1)
    other.close()
    got = sglang_backend.generate(requests_for(sglang_backend, problems, 1), build_policy("full"), None, GREEDY)
    assert got[0].finish_reason == "eos"


def test_unsupported_requests_fail_closed_with_one_line(sglang_backend):
    with pytest.raises(BackendError, match="policy h2o needs the observation 'attention'"):
        sglang_backend.prepare(build_policy("h2o"))
    request = GenerationRequest("r", sglang_backend.encode_prompt("a 1"), forced_ids=[3, 4])
    with pytest.raises(BackendError, match="--protocol replay needs forced tokens"):
        sglang_backend.generate([request], build_policy("full"), None, GREEDY)


@pytest.mark.gpu
def test_gpu_engine_gives_the_transformers_backends_tokens_under_eviction(problems):
    """GPU path (SGLang's default attention backend, CUDA graphs off): unverified on CPU machines."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with CUDA")
    requests, got = dynts_on_a_new_engine(problems, device="cuda", batch_size=4)
    expected = reference(requests, "dynts", BUDGET)
    assert [r.output_ids for r in got] == [r.output_ids for r in expected]
