"""Schedule arithmetic, validation messages, per-sequence budgets and long prompts."""

from __future__ import annotations

import pytest
import torch

from backends.base import BackendError, GenerationRequest, SamplingParams, check_schedules
from backends.hf.decode import generate_batch
from tests.conftest import make_policy
from zoo import build_policy
from zoo.base import CacheView
from zoo.schedule import EvictionSchedule, ScheduleError

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({}, "budget mode needs --budget"),
        ({"budget": 10, "window": 10}, "--budget 10 must be larger than --window 10"),
        ({"budget": 10, "interval": 0}, "--interval must be >= 1"),
        ({"budget": 10, "window": -1}, "--window must be >= 0"),
        ({"mode": "paper"}, "paper mode needs --trigger-len"),
        ({"mode": "paper", "trigger_len": 8, "window": 8}, "--trigger-len 8 must be larger than --window 8"),
        ({"mode": "paper", "trigger_len": 64, "ratio": 1.0}, "--ratio must be in [0, 1)"),
        ({"mode": "fancy", "budget": 10}, "unknown schedule mode 'fancy'"),
    ],
)
def test_invalid_schedules_name_the_option(kwargs, message):
    with pytest.raises(ScheduleError, match=message.replace("[", r"\[").replace(")", r"\)")):
        EvictionSchedule(**kwargs)


def test_budget_and_paper_arithmetic():
    budget = EvictionSchedule(budget=100, interval=10, window=20)
    assert not budget.triggers(109) and budget.triggers(110)
    assert budget.keep_count(110, prompt_len=30) == 100
    assert budget.capacity(prompt_len=30, max_new_tokens=1000) == 110
    assert budget.capacity(prompt_len=30, max_new_tokens=50) == 80  # never more than the run can use
    paper = EvictionSchedule(mode="paper", trigger_len=100, window=20, ratio=0.4)
    assert paper.triggers(100) and not paper.triggers(99)
    assert paper.keep_count(100, prompt_len=30) == 30 + 20 + 20  # prompt + window + ceil(0.4 * 50)
    unprotected = EvictionSchedule(mode="paper", trigger_len=100, window=20, ratio=0.4, protect_prompt=False)
    assert unprotected.keep_count(100, prompt_len=30) == 20 + 32


def test_prompt_that_cannot_fit_is_refused_before_generation():
    schedule = EvictionSchedule(budget=32, interval=4, window=8)
    requests = [GenerationRequest("ok", list(range(1, 10))), GenerationRequest("long", list(range(1, 40)))]
    with pytest.raises(ScheduleError, match="prompt of 39 tokens plus the 8-token window does not fit in --budget 32"):
        check_schedules(requests, build_policy("window"), schedule)
    check_schedules(requests, build_policy("window"), EvictionSchedule(budget=32, window=8, protect_prompt=False))


def test_per_sequence_budgets(tiny):
    _, parts, info, predictor = tiny
    base = EvictionSchedule(budget=16, interval=4, window=4)
    requests = [
        GenerationRequest("small", [1, 2, 3, 4, 5], schedule=EvictionSchedule(budget=12, interval=4, window=4)),
        GenerationRequest("large", [6, 7, 8, 9], schedule=EvictionSchedule(budget=24, interval=4, window=4)),
    ]
    results = generate_batch(parts, requests, make_policy("h2o", info, predictor), base, SamplingParams(40), CPU)
    assert results[0].kv_peak_tokens == 12 + 4 and results[1].kv_peak_tokens == 24 + 4
    with pytest.raises(BackendError, match="may change only budget or trigger_len"):
        bad = GenerationRequest("w", [1, 2], schedule=EvictionSchedule(budget=24, interval=4, window=8))
        check_schedules([bad], build_policy("h2o"), base)


def test_long_prompt_with_prompt_eviction_shrinks_the_buffers(tiny):
    _, parts, info, predictor = tiny
    schedule = EvictionSchedule(budget=16, interval=4, window=4, protect_prompt=False)
    prompt = list(range(1, 61))
    allocations = []
    generate_batch(
        parts, [GenerationRequest("p", prompt)], make_policy("snapkv", info, predictor), schedule,
        SamplingParams(12), CPU, on_forward=lambda cache, *_: allocations.append(cache.allocated_bytes()),
    )
    per_token = parts.kv_bytes_per_token
    assert allocations[0] == 60 * per_token  # prefill needs the whole prompt
    assert all(a == (16 + 4) * per_token for a in allocations[1:])  # then budget + interval only


def test_sinks_count_only_when_the_prompt_may_be_evicted():
    schedule = EvictionSchedule(budget=20, interval=4, window=16, protect_prompt=False)
    with pytest.raises(ScheduleError, match="16-token window plus 4 always-kept tokens"):
        check_schedules([GenerationRequest("p", [1, 2, 3])], build_policy("streamingllm"), schedule)
    check_schedules([GenerationRequest("p", [1, 2, 3])], build_policy("window"), schedule)


def test_each_compression_tells_the_policy_its_rows_budgets(tiny):
    """``CacheView.budgets``: each compressed row's own ``--budget`` (per-sequence schedules included); None in
    paper mode, which has no budget."""
    _, parts, info, predictor = tiny
    seen: list[tuple[int, tuple[int, ...] | None]] = []

    class Recording(type(build_policy("window"))):  # type: ignore[misc]
        def score(self, view):
            seen.append((view.batch_size, view.budgets))
            return super().score(view)

    requests = [
        GenerationRequest("small", [1, 2, 3, 4, 5], schedule=EvictionSchedule(budget=12, interval=4, window=4)),
        GenerationRequest("large", [6, 7, 8, 9], schedule=EvictionSchedule(budget=24, interval=4, window=4)),
    ]
    generate_batch(parts, requests, Recording(), EvictionSchedule(budget=16, interval=4, window=4),
                   SamplingParams(40), CPU)
    assert seen and all(budgets is not None and len(budgets) == rows for rows, budgets in seen)
    assert {b for _, budgets in seen for b in budgets} == {12, 24}  # type: ignore[union-attr]
    seen.clear()
    generate_batch(parts, [GenerationRequest("p", [1, 2, 3])], Recording(),
                   EvictionSchedule(mode="paper", trigger_len=16, window=4), SamplingParams(30), CPU)
    assert seen and all(budgets is None for _, budgets in seen)


def test_the_paged_engines_view_carries_each_requests_budget():
    """vLLM's and SGLang's workers lay the due requests out with ``DueBatch``: its view's ``budgets`` are each
    request's own, in row order."""
    from backends.paged.batch import DueBatch
    from backends.paged.state import RequestState

    def due(*schedules: EvictionSchedule) -> CacheView:
        states = [RequestState(f"r{i}", f"r{i}", s, 2, capacity=8, physical=5) for i, s in enumerate(schedules)]
        batch = DueBatch.build(build_policy("window"), states, lambda row, st, logical: logical)
        return batch.view([], None, None, None)

    assert due(EvictionSchedule(budget=24, interval=4, window=4),
               EvictionSchedule(budget=12, interval=4, window=4)).budgets == (24, 12)
    assert due(EvictionSchedule(mode="paper", trigger_len=16, window=4)).budgets is None
