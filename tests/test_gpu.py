"""GPU-only checks: run on CUDA runners, skip cleanly elsewhere."""

from __future__ import annotations

import pytest
import torch

from backends.base import GenerationRequest, SamplingParams
from backends.hf.decode import generate_batch
from harness.runs.resources import NvmlSampler, cuda_memory
from tests.conftest import EVICTING_POLICIES, make_policy
from zoo.schedule import EvictionSchedule

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA"),
]


@pytest.mark.parametrize("name", EVICTING_POLICIES)
def test_cuda_decode_matches_cpu(tiny, name):
    model, parts, info, predictor = tiny
    schedule = EvictionSchedule(budget=16, interval=4, window=4)
    requests = [GenerationRequest("a", [1, 7, 9, 11, 23]), GenerationRequest("b", [3, 4, 17])]
    cpu = generate_batch(parts, requests, make_policy(name, info, predictor), schedule, SamplingParams(30),
                         torch.device("cpu"))
    model.to("cuda")
    gpu = generate_batch(parts, requests, make_policy(name, info, predictor), schedule, SamplingParams(30),
                         torch.device("cuda"))
    assert [r.output_ids for r in gpu] == [r.output_ids for r in cpu]
    assert [r.kv_peak_bytes for r in gpu] == [r.kv_peak_bytes for r in cpu]


def test_nvml_and_cuda_memory_are_recorded():
    with NvmlSampler(interval_s=0.01) as sampler:
        torch.ones(1024, 1024, device="cuda").sum().item()
    summary = sampler.summary()
    assert summary["nvml"] == "ok" and summary["memory_used_peak_bytes"] > 0
    assert cuda_memory()["cuda_max_memory_allocated_bytes"] > 0
