"""The shipped tiny reasoner: loads from the installed package, thinks, answers; its predictor and task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backends.base import GenerationRequest, SamplingParams
from backends.hf.backend import TransformersBackend
from backends.hf.loading import tiny_reasoner_dir
from harness.cli import app
from harness.runs.catalog import shipped_predictor
from harness.runs.options import RunOptions
from harness.runs.runplan import build_policies
from harness.scoring.answers import is_correct
from harness.tinyreasoner.problems import generate
from harness.workloads.prompt_file import default_prompts_path, load_prompts
from zoo import build_policy
from zoo.schedule import EvictionSchedule

runner = CliRunner()


@pytest.fixture(scope="module")
def reasoner() -> TransformersBackend:
    return TransformersBackend("tiny-reasoner", batch_size=8)


def test_the_model_ships_as_a_standard_transformers_directory() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_reasoner_dir()
    assert Path(path, "model.safetensors").is_file() and Path(path, "README.md").is_file()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) <= 10_000_000
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "sum a 1 b 2"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt.rstrip().endswith("<think>")


@pytest.mark.slow
def test_it_answers_fixed_held_out_problems_with_the_full_cache(reasoner) -> None:
    items = load_prompts(default_prompts_path(), limit=8)
    requests = [GenerationRequest(i.id, reasoner.encode_prompt(i.prompt)) for i in items]
    results = reasoner.generate(requests, build_policy("full"), None, SamplingParams(512))
    correct = [is_correct(i.answer, r.text, thinking=True) for i, r in zip(items, results)]
    assert sum(correct) >= 7, [r.text for r in results]
    first = generate(0, split="heldout")
    assert results[0].text.split() == [*first.trace, "answer", first.answer]  # its own trace, token for token


@pytest.mark.slow
def test_window_forgets_what_the_oracle_keeps(reasoner) -> None:
    """The workload is eviction-sensitive: at ~25% of the median trace a window loses most answers, while
    the oracle, keeping the unread results, keeps them."""
    items = load_prompts(default_prompts_path(), limit=16)
    requests = [GenerationRequest(i.id, reasoner.encode_prompt(i.prompt)) for i in items]
    schedule = EvictionSchedule(budget=86, interval=16, window=32)
    accuracy = {}
    for name in ("window", "oracle"):
        policy = build_policy(name)
        reasoner.prepare(policy)
        results = reasoner.generate(requests, policy, schedule, SamplingParams(512))
        accuracy[name] = sum(is_correct(i.answer, r.text, thinking=True) for i, r in zip(items, results)) / len(items)
        assert all(r.kv_peak_tokens <= 86 + 16 for r in results)
    assert accuracy["oracle"] >= 0.8 and accuracy["window"] <= 0.5, accuracy


def test_dynts_finds_its_shipped_predictor(reasoner) -> None:

    assert shipped_predictor("tiny-reasoner") is not None and shipped_predictor("HuggingFaceTB/SmolLM2-360M") is None
    policy = build_policies(RunOptions(policy=("dynts",)))["dynts"]
    assert policy.predictor is None and policy.artefact() == str(shipped_predictor("tiny-reasoner"))
    reasoner.prepare(policy)  # binds the packaged predictor, checked against the model


@pytest.mark.slow
def test_default_run_and_the_tiny_task_through_lm_eval(tmp_path) -> None:
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", "-p", "full", "-p", "oracle", "--limit", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summaries = {s["config"]["policy"]: s for s in (json.loads(p.read_text()) for p in out.glob("*/summary.json"))}
    assert {s["config"]["model"] for s in summaries.values()} == {"tiny-reasoner"}
    assert summaries["full"]["metrics"]["accuracy"] == 1.0 and summaries["oracle"]["metrics"]["accuracy"] >= 0.75
    task = runner.invoke(app, ["run", "-p", "full", "--task", "tiny_reasoner", "--limit", "4", "--samples", "2",
                               "--temperature", "0.5", "--out", str(tmp_path / "task")])
    assert task.exit_code == 0, task.output
    metrics = json.loads(next((tmp_path / "task").glob("*/summary.json")).read_text())["metrics"]
    assert metrics["samples_per_problem"] == 2 and metrics["pass@1"] >= 0.5
    fixtures = Path(__file__).parent / "fixtures" / "math"
    math = runner.invoke(app, ["run", "-p", "window", "--task", "math500", "--data-dir", str(fixtures), "--limit", "2",
                               "--max-new-tokens", "24", "--budget", "96", "--out", str(tmp_path / "math")])
    assert math.exit_code == 0, math.output  # an lm-eval task end to end on the tiny reasoner (it cannot solve it)


@pytest.mark.slow
def test_the_control_model_answers_and_its_dynts_keeps_answering_at_a_quarter_of_the_trace() -> None:
    """``tiny-reasoner-control`` (trained without the oracle-like drop-out view): full cache right, and DynTS with
    its shipped predictor still right at budget 86 where a window is not (95.2% vs 10.6% on 500 problems)."""
    control = TransformersBackend("tiny-reasoner-control", batch_size=8)
    items = load_prompts(default_prompts_path(), limit=16)
    requests = [GenerationRequest(i.id, control.encode_prompt(i.prompt)) for i in items]
    schedule = EvictionSchedule(budget=86, interval=16, window=32)
    correct = {}
    for name in ("full", "dynts", "window"):
        policy = build_policies(RunOptions(policy=(name,), model="tiny-reasoner-control"))[name]
        control.prepare(policy)
        results = control.generate(requests, policy, None if name == "full" else schedule, SamplingParams(512))
        correct[name] = sum(is_correct(i.answer, r.text, thinking=True) for i, r in zip(items, results))
    assert correct["full"] == 16 and correct["dynts"] >= 13 and correct["window"] <= 6, correct
