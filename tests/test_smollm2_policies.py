"""Every policy under both schedules, end to end on SmolLM2-135M (the offline default model)."""

from __future__ import annotations

import dataclasses

import pytest

from backends.base import GenerationRequest, SamplingParams
from backends.hf.backend import TransformersBackend
from tests.conftest import ALL_POLICIES
from zoo import build_policy
from zoo.base import PolicyError
from zoo.predictor import ImportancePredictor, PredictorConfig
from zoo.schedule import EvictionSchedule

pytestmark = pytest.mark.smollm2

SCHEDULES = {
    "budget": EvictionSchedule(budget=64, interval=8, window=8),
    "paper": EvictionSchedule(mode="paper", trigger_len=64, window=8, ratio=0.4),
}


@pytest.fixture(scope="module")
def smollm2():
    """EOS ignored: every sequence runs to the length limit, past the schedule's trigger, so every evicting
    policy must compress (an early EOS cannot skip the eviction checks below)."""
    backend = TransformersBackend("smollm2-135m", batch_size=2)
    backend.parts = dataclasses.replace(backend.parts, eos_ids=frozenset())
    return backend


@pytest.fixture(scope="module")
def smollm2_predictor(tmp_path_factory, smollm2):
    path = tmp_path_factory.mktemp("pred")
    info = smollm2.model_info()
    ImportancePredictor(PredictorConfig("smollm2-135m", info.hidden_size, [64, 16])).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(SCHEDULES))
@pytest.mark.parametrize("name", ALL_POLICIES)
def test_policy_runs_end_to_end(smollm2, smollm2_predictor, name, mode):
    policy = build_policy(name, **({"predictor": str(smollm2_predictor)} if name == "dynts" else {}))
    if name == "oracle":  # it reads the tiny-reasoner task's words, which SmolLM2 splits: refused up front
        with pytest.raises(PolicyError, match="use it with --model tiny-reasoner"):
            smollm2.prepare(policy)
        return
    smollm2.prepare(policy)
    requests = [
        GenerationRequest("q1", smollm2.encode_prompt("Count from one to thirty in words.")),
        GenerationRequest("q2", smollm2.encode_prompt("Why is the sky blue?")),
    ]
    schedule = SCHEDULES[mode]
    sampling = SamplingParams(max_new_tokens=64)
    results = smollm2.generate(requests, policy, schedule, sampling)
    assert [r.request_id for r in results] == ["q1", "q2"]
    for r in results:
        assert r.generated_tokens == len(r.output_ids) >= 1
        assert r.text == smollm2.tokenizer.decode(r.output_ids, skip_special_tokens=True)
        seen = r.prompt_tokens + r.generated_tokens - 1
        assert r.finish_reason == "length" and seen > schedule.steady_capacity()
        if policy.evicts:
            assert r.compressions >= 1
            assert r.kv_peak_tokens <= schedule.steady_capacity()
            assert r.kv_peak_bytes < r.kv_full_bytes
        if not policy.evicts:
            assert r.kv_peak_tokens == seen and r.compressions == 0
