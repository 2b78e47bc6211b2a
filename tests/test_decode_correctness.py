"""The decode loop against transformers itself: exactness of full cache, compaction, batching and memory."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch

from backends.base import GenerationRequest, SamplingParams
from backends.hf.decode import generate_batch, prefill_batch
from tests.conftest import ALL_POLICIES, EVICTING_POLICIES, make_policy
from zoo import build_policy
from zoo.schedule import EvictionSchedule

CPU = torch.device("cpu")
PROMPTS = [[1, 7, 9, 11, 23, 42, 8, 5], [3, 4, 17, 30], [2, 60, 61, 62, 63, 64]]


def test_full_policy_matches_generate(tiny):
    model, parts, _, _ = tiny
    sampling = SamplingParams(max_new_tokens=24)
    for prompt in PROMPTS:
        ours = generate_batch(parts, [GenerationRequest("p", prompt)], build_policy("full"), None, sampling, CPU)
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, pad_token_id=0)
        assert ours[0].output_ids == ref[0, len(prompt) :].tolist()


def _masked_reference_logits(model, tokens: list[int], visible: list[list[int]]) -> torch.Tensor:
    """One fresh forward over ``tokens`` where query ``t`` sees exactly the logical positions ``visible[t]``."""
    n = len(tokens)
    mask = torch.zeros(1, 1, n, n, dtype=torch.bool)
    for t, keys in enumerate(visible):
        mask[0, 0, t, keys] = True
    with torch.no_grad():
        hidden = model.get_decoder()(
            input_ids=torch.tensor([tokens]), attention_mask=mask, position_ids=torch.arange(n)[None]
        ).last_hidden_state
    return model.get_output_embeddings()(hidden)[0].float()


@pytest.mark.parametrize("mode", ["budget", "paper"])
@pytest.mark.parametrize("name", EVICTING_POLICIES)
def test_compaction_equals_fresh_forward_over_kept_tokens(tiny, name, mode):
    """After every eviction, next-token logits equal a fresh forward that lets each token see only what the
    cache held when it was processed (the kept tokens at their original positions)."""
    model, parts, info, predictor = tiny
    policy = make_policy(name, info, predictor)
    if mode == "budget":
        schedule = EvictionSchedule(budget=14, interval=3, window=4)
    else:
        schedule = EvictionSchedule(mode="paper", trigger_len=16, window=4, ratio=0.5)
    prompt = PROMPTS[0]
    steps: list[tuple[list[int], torch.Tensor]] = []

    def record(cache, logits, _ids):
        live = cache.valid[0, : cache.length]
        steps.append((cache.positions[0, : cache.length][live].tolist(), logits[0].clone()))

    result = generate_batch(
        parts, [GenerationRequest("p", prompt)], policy, schedule, SamplingParams(max_new_tokens=40), CPU, record
    )[0]
    assert result.compressions >= 3, "the schedule should have compressed several times"
    tokens = prompt + result.output_ids[:-1]
    visible = [list(range(t + 1)) for t in range(len(prompt))]
    visible += [positions for positions, _ in steps[1:]]
    reference = _masked_reference_logits(model, tokens, visible)
    for i, (_, logits) in enumerate(steps):
        t = len(prompt) - 1 + i
        torch.testing.assert_close(logits, reference[t], atol=1e-5, rtol=1e-5)
    kept = steps[-1][0]
    assert len(kept) < len(tokens), "something must have been evicted"
    assert set(range(len(prompt))) <= set(kept), "prompt tokens are protected by default"


@pytest.mark.parametrize("name", ["full", *EVICTING_POLICIES])
def test_batched_equals_unbatched(tiny, name):
    model, parts, info, predictor = tiny
    schedule = None if name == "full" else EvictionSchedule(budget=16, interval=4, window=4)
    sampling = SamplingParams(max_new_tokens=30)
    requests = [GenerationRequest(f"r{i}", p, seed=i) for i, p in enumerate(PROMPTS)]
    batched = generate_batch(parts, requests, make_policy(name, info, predictor), schedule, sampling, CPU)
    for request, got in zip(requests, batched):
        alone = generate_batch(parts, [request], make_policy(name, info, predictor), schedule, sampling, CPU)[0]
        assert got.output_ids == alone.output_ids
        assert got.compressions == alone.compressions


def test_sampling_is_seeded_per_request_and_batch_independent(tiny):
    _, parts, info, predictor = tiny
    sampling = SamplingParams(max_new_tokens=20, temperature=0.8, top_p=0.9, top_k=20)
    requests = [GenerationRequest(f"r{i}", p, seed=100 + i) for i, p in enumerate(PROMPTS)]
    policy = build_policy("full")
    batched = generate_batch(parts, requests, policy, None, sampling, CPU)
    again = generate_batch(parts, requests, policy, None, sampling, CPU)
    alone = generate_batch(parts, [requests[1]], policy, None, sampling, CPU)[0]
    assert [r.output_ids for r in batched] == [r.output_ids for r in again]
    assert batched[1].output_ids == alone.output_ids
    other_seed = generate_batch(parts, [GenerationRequest("x", PROMPTS[1], seed=7)], policy, None, sampling, CPU)
    assert other_seed[0].output_ids != alone.output_ids


#: the tiny model's KV bytes per token, from its config: 2 (K, V) x 2 layers x 2 KV heads x 16 dims x 4 bytes
TINY_KV_BYTES = 2 * 2 * 2 * 16 * 4


@pytest.mark.parametrize("budget,interval", [(12, 4), (20, 8), (16, 1)])
def test_peak_kv_bytes_follow_the_budget_formula(tiny, budget, interval):
    _, parts, info, predictor = tiny
    assert parts.kv_bytes_per_token == TINY_KV_BYTES
    schedule = EvictionSchedule(budget=budget, interval=interval, window=4)
    sampling = SamplingParams(max_new_tokens=48)
    requests = [GenerationRequest(f"r{i}", p) for i, p in enumerate(PROMPTS)]
    for name in ("window", "h2o", "dynts"):
        results = generate_batch(parts, requests, make_policy(name, info, predictor), schedule, sampling, CPU)
        for r in results:
            seen = r.prompt_tokens + r.generated_tokens - 1
            assert r.kv_peak_tokens == min(seen, budget + interval)
            assert r.kv_peak_bytes == r.kv_peak_tokens * TINY_KV_BYTES
            assert r.kv_full_bytes == seen * TINY_KV_BYTES
            # the buffers really allocated: every row of the batch holds budget + interval slots (the longest
            # prompt, 8 tokens, is shorter than that), not prompt + 48 new tokens
            assert r.extra["kv_batch_allocated_bytes"] == len(requests) * (budget + interval) * TINY_KV_BYTES
    full = generate_batch(parts, requests, build_policy("full"), None, sampling, CPU)
    assert all(r.kv_peak_bytes == r.kv_full_bytes for r in full)
    assert full[0].extra["kv_batch_allocated_bytes"] == len(requests) * (8 + 48) * TINY_KV_BYTES


def _declared_policies() -> dict[str, bool]:
    """name -> evicts, read from the source: every class in ``zoo/`` that sets a ``name``, and every
    ``dynts_bench.policies`` entry point of ``pyproject.toml`` (``evicts`` defaults to True, as on ``Policy``)."""
    root = Path(__file__).resolve().parents[1]

    def classes(path: Path) -> dict[str, dict[str, object]]:
        found = {}
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                found[node.name] = {t.id: ast.literal_eval(s.value) for s in node.body if isinstance(s, ast.Assign)
                                    for t in s.targets if isinstance(t, ast.Name) and t.id in ("name", "evicts")}
        return found

    declared = {attrs["name"]: attrs.get("evicts", True) for path in sorted((root / "zoo").glob("*.py"))
                for attrs in classes(path).values() if attrs.get("name")}
    section = (root / "pyproject.toml").read_text().split('[project.entry-points."dynts_bench.policies"]')[1]
    for name, module, cls in re.findall(r'^(\w+) = "([\w.]+):(\w+)"', section.split("\n[")[0], re.MULTILINE):
        declared[name] = classes(root / (module.replace(".", "/") + ".py"))[cls].get("evicts", True)
    return declared


def test_every_declared_policy_is_covered_by_the_parametrized_tests():
    """A new policy joins the decode tests by being registered; one written in ``zoo/`` but left out of the
    registry (or a plugin that no longer loads) fails here, against the policies the source declares."""
    declared = _declared_policies()
    assert {"full", "window", "streamingllm", "sepllm", "h2o", "snapkv", "tova", "rkv", "random", "dynts",
            "oracle"} <= set(declared)
    assert set(ALL_POLICIES) == set(declared)
    assert set(EVICTING_POLICIES) == {name for name, evicts in declared.items() if evicts}
    assert "full" not in EVICTING_POLICIES


@pytest.mark.parametrize("name", ["full", *EVICTING_POLICIES])
def test_shared_prefill_gives_the_same_generation(tiny, name):
    _, parts, info, predictor = tiny
    schedule = None if name == "full" else EvictionSchedule(budget=12, interval=3, window=4)
    requests = [GenerationRequest(f"r{i}", p) for i, p in enumerate(PROMPTS)]
    sampling = SamplingParams(max_new_tokens=24)
    plain = generate_batch(parts, requests, make_policy(name, info, predictor), schedule, sampling, CPU)
    shared = prefill_batch(parts, requests, CPU)
    for _ in range(2):  # the prefill is not consumed: it serves any number of policies or samples
        reused = generate_batch(
            parts, requests, make_policy(name, info, predictor), schedule, sampling, CPU, prefill=shared
        )
        assert [r.output_ids for r in reused] == [r.output_ids for r in plain]
        assert [r.compressions for r in reused] == [r.compressions for r in plain]


def test_eos_and_stop_strings_end_a_sequence(tiny):
    _, parts, _, _ = tiny
    sampling = SamplingParams(max_new_tokens=20)
    free = generate_batch(parts, [GenerationRequest("p", PROMPTS[0])], build_policy("full"), None, sampling, CPU)[0]
    assert free.finish_reason == "length" and len(free.output_ids) == 20
    eos = free.output_ids[5]
    first = free.output_ids.index(eos)
    with_eos = dataclasses.replace(parts, eos_ids=frozenset({eos}))
    ended = generate_batch(with_eos, [GenerationRequest("p", PROMPTS[0])], build_policy("full"), None, sampling, CPU)
    assert ended[0].finish_reason == "eos" and ended[0].output_ids == free.output_ids[: first + 1]

    texts = dataclasses.replace(parts, decode_text=lambda ids: "".join(f"<{i}>" for i in ids))
    stop = f"<{free.output_ids[3]}><{free.output_ids[4]}>"
    cut = generate_batch(texts, [GenerationRequest("p", PROMPTS[0])], build_policy("full"), None,
                         SamplingParams(max_new_tokens=20, stop=(stop,)), CPU)[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text and "".join(f"<{i}>" for i in free.output_ids).startswith(cut.text)
    assert len(cut.output_ids) <= 5


@pytest.mark.parametrize("name", ["full", "window", "dynts"])
def test_a_finished_batch_frees_its_kv_cache_without_the_garbage_collector(tiny, name):
    """On a GPU the next batch (or policy) must not find the last one's cache still allocated: nothing may hold
    the cache in a reference cycle, which only Python's cyclic collector would free, at a time of its choosing."""
    import gc
    import weakref

    _, parts, info, predictor = tiny
    buffers: list[weakref.ref] = []

    def watch(cache, _logits, _ids):
        if not buffers:
            buffers.extend(weakref.ref(t) for layer in cache.layers for t in (layer.keys, layer.values))
            buffers.append(weakref.ref(cache))

    policy = make_policy(name, info, predictor)
    schedule = EvictionSchedule(budget=14, interval=3, window=4) if policy.evicts else None
    gc.collect()
    gc.disable()
    try:
        generate_batch(parts, [GenerationRequest("a", PROMPTS[0]), GenerationRequest("b", PROMPTS[1])], policy,
                       schedule, SamplingParams(max_new_tokens=20), CPU, on_forward=watch)
        alive = [ref for ref in buffers if ref() is not None]
    finally:
        gc.enable()
    assert buffers and not alive, f"{len(alive)} of {len(buffers)} cache objects outlived the batch"
