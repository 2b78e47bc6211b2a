"""Trace replay: forced tokens go through the real decode path; full against itself is exactly 0 KL."""

from __future__ import annotations

import json

import pytest
import torch

from backends.base import GenerationRequest, SamplingParams
from backends.hf.backend import TransformersBackend
from backends.hf.decode import generate_batch
from harness.runs.options import RunOptions
from harness.runs.runplan import execute_plan, prepare
from harness.tinyreasoner.problems import generate
from harness.workloads.replay_traces import TraceRow, build_items, load_trace_rows, retrieval_pairs
from zoo import build_policy
from zoo.full import FullCache
from zoo.schedule import EvictionSchedule


def rows(count: int) -> list[TraceRow]:
    problems = [generate(i, split="heldout") for i in range(count)]
    return [TraceRow(p.id, p.prompt, p.trace, p.answer) for p in problems]


def test_retrieval_pairs_point_from_each_read_back_to_its_statement() -> None:
    problem = generate(2)
    for stated, read in retrieval_pairs(problem.trace):
        assert problem.trace[stated] == problem.trace[read] and stated < read
        assert problem.critical[stated] and problem.trace[stated - 1] == problem.trace[read - 1]
    assert len(retrieval_pairs(problem.trace)) == len(problem.values) - 2  # every result but the last is read


def test_forced_tokens_through_the_decode_loop_equal_one_forward_pass(random_reasoner) -> None:
    engine = TransformersBackend(str(random_reasoner), batch_size=2)
    items = build_items(engine, rows(2), chat=True)
    assert all(len(i.forced_ids) == len(r.trace) + 1 for i, r in zip(items, rows(2)))  # one token per word
    seen: dict[str, list[torch.Tensor]] = {}

    def hook(cache, logits, request_ids):
        for b, rid in enumerate(request_ids):
            seen.setdefault(rid, []).append(logits[b].clone())

    requests = [GenerationRequest(i.id, i.prompt_ids, forced_ids=i.forced_ids) for i in items]
    longest = max(len(i.forced_ids) for i in items)
    results = generate_batch(engine.parts, requests, FullCache(), None, SamplingParams(longest + 2),
                             engine.device, on_forward=hook)
    for item, result in zip(items, results):
        assert result.output_ids[: len(item.forced_ids)] == item.forced_ids
        ids = torch.tensor([item.prompt_ids + item.forced_ids])
        with torch.no_grad():
            plain = engine.model(input_ids=ids).logits[0, len(item.prompt_ids) - 1 :]
        stepped = torch.stack(seen[item.id][: len(item.forced_ids) + 1])
        torch.testing.assert_close(stepped, plain, atol=2e-5, rtol=1e-4)


def test_replay_full_has_zero_kl_and_evicting_policies_lose_retrievals(random_reasoner, tmp_path) -> None:
    engine = TransformersBackend(str(random_reasoner), batch_size=4)
    problems_file = tmp_path / "problems.jsonl"
    problems_file.write_text("".join(json.dumps(generate(i, split="heldout").to_json()) + "\n" for i in range(4)))
    options = RunOptions(prompts=problems_file, policy=("full", "window"), budget=80, interval=16, window=24,
                         model=str(random_reasoner), batch_size=4, out=tmp_path / "runs", protocol="replay")
    summaries = {name: outcome.summary for name, outcome in execute_plan(prepare(options), engine).items()}
    assert summaries["full"]["kl_mean"] == 0.0 and summaries["full"]["top1_agreement"] == 1.0
    assert summaries["full"]["retrieval_recall"] == 1.0
    assert summaries["window"]["kl_mean"] > 0.0
    assert summaries["window"]["retrieval_recall"] < 0.5  # statements far back are gone from a 24-token window
    assert summaries["window"]["kv_peak_max_bytes"] < summaries["full"]["kv_peak_max_bytes"]
    assert len(load_trace_rows(problems_file)) == 4


def test_rows_without_traces_are_refused_for_replay(tmp_path) -> None:
    bad = tmp_path / "plain.jsonl"
    bad.write_text('{"prompt": "no trace here"}\n')
    from harness.workloads.prompt_file import PromptFileError

    with pytest.raises(PromptFileError, match="needs rows with 'prompt', 'trace' and 'answer'"):
        load_trace_rows(bad)


def test_schedule_is_checked_for_replayed_prompts(random_reasoner) -> None:
    engine = TransformersBackend(str(random_reasoner), batch_size=2)
    items = build_items(engine, rows(1), chat=True)
    schedule = EvictionSchedule(budget=40, window=32)
    from backends.base import check_schedules
    from zoo.schedule import ScheduleError

    with pytest.raises(ScheduleError):
        check_schedules([GenerationRequest(i.id, i.prompt_ids) for i in items], build_policy("window"), schedule)
