"""The backend contract (``backends.base.Backend``), checked on every backend that can run here.

A fake in-memory backend passes it too: it is a dozen lines and has no transformers model, which shows the
contract is complete -- the harness (``execute_plan`` over a prompt workload, results on disk) runs on it.
Engine adapters join ``BACKEND_FACTORIES`` when their engine is importable.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence

import pytest

from backends import BACKENDS
from backends.base import (
    Backend,
    BackendError,
    Capabilities,
    GenerationRequest,
    SamplingParams,
    SequenceResult,
    check_schedules,
)
from harness.runs.options import RunOptions
from harness.runs.runplan import execute_plan, prepare
from zoo import build_policy
from zoo.base import ModelInfo, Policy
from zoo.schedule import EvictionSchedule

ANSWER = " </think> answer 7"


class FakeBackend:
    """Characters are tokens; every request "thinks" by repeating its prompt, then answers 7. Its cache is a
    count that follows the schedule, so KV figures obey the same bounds as a real backend's."""

    name = "fake"
    batch_size = 2
    capabilities = Capabilities(observations=frozenset(), protocols=frozenset({"generate"}))

    def model_info(self) -> ModelInfo:
        return ModelInfo("fake", "fake", 8, 1, lambda: [chr(i) for i in range(128)], ord("\x01"), 16,
                         frozenset({0}), 128)

    def describe(self) -> dict:
        return {"backend": self.name, "model": "fake", "kv_bytes_per_token": 16}

    def encode_prompt(self, text: str, chat: bool = True) -> list[int]:
        return self.encode(f"Q:{text}\n" if chat else text)

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 128 for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids if i)

    def chat_template(self) -> str | None:
        return None

    def render_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return "".join(f"Q:{m['content']}\n" for m in messages)

    def prepare(self, policy: Policy) -> None:
        self.capabilities.require(self.name, policy)
        policy.prepare(self.model_info())

    def generate(self, requests: Sequence[GenerationRequest], policy: Policy, schedule: EvictionSchedule | None,
                 sampling: SamplingParams, on_batch: Callable[[list[SequenceResult]], None] | None = None
                 ) -> list[SequenceResult]:
        check_schedules(requests, policy, schedule)
        results = []
        for start in range(0, len(requests), self.batch_size):
            batch = [self._one(r, policy, schedule, sampling) for r in requests[start : start + self.batch_size]]
            results += batch
            if on_batch is not None:
                on_batch(batch)
        return results

    def _one(self, request: GenerationRequest, policy: Policy, schedule: EvictionSchedule | None,
             sampling: SamplingParams) -> SequenceResult:
        text = (self.decode(request.prompt_ids) * 3)[: max(0, sampling.max_new_tokens - len(ANSWER))] + ANSWER
        out = self.encode(text)[: sampling.max_new_tokens]
        live = peak = len(request.prompt_ids)
        compressions = 0
        for _ in out:
            live += 1
            peak = max(peak, live)
            if policy.evicts and schedule is not None and schedule.triggers(live):
                live, compressions = schedule.keep_count(live, len(request.prompt_ids)), compressions + 1
        finish = "eos" if len(out) == len(self.encode(text)) else "length"
        return SequenceResult(request.request_id, out, self.decode(out), finish, len(request.prompt_ids), len(out),
                              0.0, 0.0, peak, 16 * peak, 16 * (len(request.prompt_ids) + len(out)), compressions, 0.0)

    def close(self) -> None:
        pass


def _transformers() -> Backend:
    from backends.hf.backend import TransformersBackend

    return TransformersBackend("tiny-reasoner", batch_size=2)


BACKEND_FACTORIES: dict[str, Callable[[], Backend]] = {"fake": FakeBackend, "transformers": _transformers}


@pytest.fixture(scope="module", params=sorted(BACKEND_FACTORIES))
def backend(request) -> Backend:
    built = BACKEND_FACTORIES[request.param]()
    yield built
    built.close()


PROMPT = "a 3 b 4 c 5"
SCHEDULE = EvictionSchedule(budget=40, interval=8, window=8)
SAMPLING = SamplingParams(max_new_tokens=48)


def test_backend_meets_the_protocol(backend: Backend) -> None:
    assert isinstance(backend, Backend)
    assert backend.capabilities.protocols and "generate" in backend.capabilities.protocols
    if backend.name in BACKENDS:  # what the registry says before building must be what the built one says
        assert BACKENDS[backend.name].capabilities in (None, backend.capabilities)


def test_model_info_has_the_facts_the_harness_needs(backend: Backend) -> None:
    info = backend.model_info()
    assert info.kv_bytes_per_token > 0 and info.hidden_size > 0 and info.num_layers > 0
    assert len(info.token_texts()) == info.vocab_size
    if info.think_end_id is not None:
        assert info.think_end_id < info.vocab_size
    assert backend.describe()["backend"] == backend.name
    assert backend.describe()["kv_bytes_per_token"] == info.kv_bytes_per_token


def test_text_round_trips_and_chat_wraps_the_prompt(backend: Backend) -> None:
    assert backend.decode(backend.encode(PROMPT)).strip() == PROMPT
    wrapped, bare = backend.encode_prompt(PROMPT, chat=True), backend.encode_prompt(PROMPT, chat=False)
    assert len(wrapped) > len(bare) or backend.chat_template() is None
    rendered = backend.render_chat([{"role": "user", "content": PROMPT}])
    assert PROMPT in rendered


@pytest.mark.parametrize("policy_name", ["full", "window"])
def test_generate_returns_one_result_per_request_through_on_batch(backend: Backend, policy_name: str) -> None:
    policy = build_policy(policy_name)
    backend.prepare(policy)
    requests = [GenerationRequest(f"r{i}", backend.encode_prompt(PROMPT), seed=i) for i in range(3)]
    seen: list[str] = []
    results = backend.generate(requests, policy, SCHEDULE if policy.evicts else None, SAMPLING,
                               on_batch=lambda batch: seen.extend(r.request_id for r in batch))
    assert sorted(seen) == sorted(r.request_id for r in results) == ["r0", "r1", "r2"]
    for result in results:
        assert 1 <= result.generated_tokens == len(result.output_ids) <= SAMPLING.max_new_tokens
        assert result.finish_reason in ("eos", "stop", "length")
        assert result.prompt_tokens == len(requests[0].prompt_ids)
        if policy.evicts:  # the cache never holds more than budget + interval
            assert result.kv_peak_tokens <= SCHEDULE.steady_capacity()
        else:
            assert result.kv_peak_tokens >= result.prompt_tokens + result.generated_tokens - 1
        assert result.kv_peak_bytes == result.kv_peak_tokens * backend.model_info().kv_bytes_per_token


def test_greedy_generation_is_deterministic(backend: Backend) -> None:
    policy = build_policy("full")
    backend.prepare(policy)
    request = [GenerationRequest("r", backend.encode_prompt(PROMPT))]
    first = backend.generate(request, policy, None, SAMPLING)[0].output_ids
    assert backend.generate(request, policy, None, SAMPLING)[0].output_ids == first


def test_a_prompt_too_long_for_the_budget_is_refused_before_generating(backend: Backend) -> None:
    policy = build_policy("window")
    backend.prepare(policy)
    request = [GenerationRequest("long", backend.encode_prompt(PROMPT * 20))]
    with pytest.raises(Exception, match="does not fit"):
        backend.generate(request, policy, SCHEDULE, SAMPLING)


def test_capabilities_refuse_what_the_backend_cannot_observe() -> None:
    fake = FakeBackend()
    with pytest.raises(BackendError, match="policy snapkv needs the observation 'queries'"):
        fake.prepare(build_policy("snapkv"))
    reason = fake.capabilities.refusal("fake", build_policy("window"), "replay")
    assert reason == ("--protocol replay needs forced tokens (teacher-forced reference traces); the fake backend "
                      "does not support it: use --backend transformers")


def test_the_harness_runs_on_the_fake_backend_alone(tmp_path) -> None:
    """``execute_plan`` over a prompt file with only the contract: rows on disk, answers scored."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"x {i}", "answer": a}) + "\n"
                               for i, a in enumerate(["7", "8", "7"])))
    options = RunOptions(policy=("full", "window"), prompts=prompts, budget=40, interval=8, window=8,
                         max_new_tokens=60, out=tmp_path / "runs")
    outcomes = execute_plan(prepare(options), FakeBackend())
    for name, outcome in outcomes.items():
        rows = {r["sample_id"]: r for r in outcome.run_dir.samples()}
        assert sorted(rows) == ["q0", "q1", "q2"], name
        assert [rows[q]["correct"] for q in ("q0", "q1", "q2")] == [True, False, True]
        assert outcome.summary["accuracy"] == pytest.approx(2 / 3)
        assert json.loads((outcome.run_dir.path / "summary.json").read_text())["model"]["backend"] == "fake"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed in this environment")
def test_vllm_backend_is_registered_with_known_capabilities() -> None:
    assert BACKENDS["vllm"].available() is None
