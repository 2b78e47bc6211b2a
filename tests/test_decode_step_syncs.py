"""The decode step reads nothing back from the device: checked by source scan, by counting the readbacks a
generation makes on CPU, and (on a GPU) with CUDA's sync debug mode around the step."""

from __future__ import annotations

import ast
import inspect
import textwrap

import pytest
import torch

from backends.base import GenerationRequest, SamplingParams
from backends.hf import cache as cache_module
from backends.hf import decode
from backends.hf.decode import generate_batch
from tests.conftest import make_policy
from zoo import build_policy
from zoo.schedule import EvictionSchedule

CPU = torch.device("cpu")
PROMPTS = [[1, 7, 9, 11, 23, 42, 8, 5], [3, 4, 17, 30], [2, 60, 61, 62, 63, 64]]
#: every function a decode step runs between two token readbacks, except the compaction
STEP_FUNCTIONS = [
    decode.decode_forward, decode._forward, decode.BatchDecoder.forward_step, decode.BatchDecoder.observe,
    decode.BatchDecoder.choose, decode.BatchDecoder.finish_rows, decode.BatchDecoder._finish_reason,
    decode.BatchDecoder.drop_finished, decode.BatchDecoder.compress, decode._after_forward,
    cache_module.CompactingCache.append, cache_module.CompactingCache.advance,
    cache_module.CompactingCache.attention_mask, cache_module.CompactingLayer.update,
]
READBACKS = {"item", "tolist", "cpu", "numpy"}


def _calls(function) -> list[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            names.append(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return names


@pytest.mark.parametrize("function", STEP_FUNCTIONS, ids=lambda f: f.__qualname__)
def test_the_step_has_no_readback_in_its_source(function):
    assert not READBACKS & set(_calls(function)), "a device readback in the decode step"


def test_the_tokens_are_read_back_in_one_place():
    assert "read_tokens" in _calls(decode.BatchDecoder.choose)
    assert _calls(decode.read_tokens) == ["tolist"]


class _Readbacks:
    """Counts every way a tensor's value reaches Python while installed (item, tolist, bool, int, float)."""

    METHODS = ("item", "tolist", "__bool__", "__int__", "__float__")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.METHODS, 0)
        self._saved: dict[str, object] = {}

    def __enter__(self):
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counting(tensor, *args, _name=name, _original=original, **kwargs):
                self.counts[_name] += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counting)
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)


def test_a_full_cache_generation_reads_back_once_per_step(tiny):
    """One ``tolist`` of the sampled tokens per step (the prompt's included) and nothing else: no tensor value
    steers Python anywhere in the loop or the model's forward."""
    _, parts, _, _ = tiny
    requests = [GenerationRequest(f"r{i}", p) for i, p in enumerate(PROMPTS)]
    with _Readbacks() as seen:
        results = generate_batch(parts, requests, build_policy("full"), None, SamplingParams(max_new_tokens=20), CPU)
    steps = max(r.generated_tokens for r in results)
    assert seen.counts == {"item": 0, "tolist": steps, "__bool__": 0, "__int__": 0, "__float__": 0}


def test_an_evicting_generation_adds_readbacks_only_per_compaction(tiny):
    _, parts, info, predictor = tiny
    requests = [GenerationRequest(f"r{i}", p) for i, p in enumerate(PROMPTS)]
    schedule = EvictionSchedule(budget=14, interval=3, window=4)
    with _Readbacks() as seen:
        results = generate_batch(parts, requests, make_policy("window", info, predictor), schedule,
                                 SamplingParams(max_new_tokens=30), CPU)
    steps = max(r.generated_tokens for r in results)
    compressions = sum(r.compressions for r in results)
    assert compressions >= 3
    assert seen.counts["tolist"] == steps
    # select's ``keep.max().item()``: at most one per compaction event (rows firing together share one)
    assert 1 <= seen.counts["item"] <= compressions
    assert seen.counts["__bool__"] == seen.counts["__int__"] == seen.counts["__float__"] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
@pytest.mark.parametrize("name", ["full", "window", "dynts"])
def test_the_cuda_step_never_synchronises(tiny, name):
    """CUDA's sync debug mode raises on any synchronising call; it is on around every decode forward."""
    model, parts, info, predictor = tiny
    model.to("cuda")
    policy = make_policy(name, info, predictor)
    schedule = EvictionSchedule(budget=14, interval=3, window=4) if policy.evicts else None
    steps = []
    plain = decode.decode_forward

    def strict(*args):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return plain(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            steps.append(1)

    decode.decode_forward = strict
    try:
        generate_batch(parts, [GenerationRequest(f"r{i}", p) for i, p in enumerate(PROMPTS)], policy, schedule,
                       SamplingParams(max_new_tokens=20), torch.device("cuda"))
    finally:
        decode.decode_forward = plain
    assert len(steps) >= 20


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
@pytest.mark.parametrize("name", ["full", "window", "dynts"])
def test_the_captured_step_gives_the_eager_logits(tiny, name):
    """``--compile``: every step's logits within 1e-5 of the eager step's (fp32), compactions in between."""
    import dataclasses

    from backends.hf.compiled import compile_parts

    model, parts, info, predictor = tiny
    model.to("cuda")
    cuda = torch.device("cuda")
    schedule = EvictionSchedule(budget=14, interval=3, window=4)
    requests = [GenerationRequest(f"r{i}", p) for i, p in enumerate(PROMPTS)]
    logits: dict[str, list[torch.Tensor]] = {"eager": [], "graphs": []}
    for mode, run_parts in (("eager", parts), ("graphs", compile_parts(dataclasses.replace(parts), cuda))):
        policy = make_policy(name, info, predictor)
        generate_batch(run_parts, requests, policy, schedule if policy.evicts else None,
                       SamplingParams(max_new_tokens=24), cuda,
                       on_forward=lambda _c, out, _ids, mode=mode: logits[mode].append(out.cpu()))
    assert len(logits["eager"]) == len(logits["graphs"]) >= 24
    for eager, graphs in zip(logits["eager"], logits["graphs"]):
        torch.testing.assert_close(graphs, eager, atol=1e-5, rtol=1e-5)


def test_compile_is_refused_off_cuda_in_one_line():
    from backends.base import BackendError
    from backends.hf.compiled import check_compile

    with pytest.raises(BackendError, match="needs --device cuda"):
        check_compile(CPU)
