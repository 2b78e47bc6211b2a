"""The lm-eval integration: shipped task YAMLs, local and (mocked) hub data, the registered model, gen_kwargs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from backends.base import SamplingParams, SequenceResult
from harness.lmeval import DyntsLM
from harness.workloads.lmeval_model import NotSupportedError, sampling_from
from harness.workloads.lmeval_tasks import TaskError, build_task, shipped_tasks
from harness.workloads.lmeval_workload import deterministic_subset
from zoo import build_policy

FIXTURES = Path(__file__).parent / "fixtures" / "math"
PAPER_TASKS = ["aime24", "aime25", "amc23", "gk23en", "math500", "gpqa_diamond"]


def test_the_six_paper_benchmarks_are_shipped_with_hub_ids():
    tasks = shipped_tasks()
    assert set(PAPER_TASKS) <= set(tasks)
    assert tasks["math500"]["hub_path"] == "HuggingFaceH4/MATH-500"
    assert tasks["gpqa_diamond"]["kind"] == "choice" and tasks["gpqa_diamond"]["hub_name"] == "gpqa_diamond"


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_task_reads_local_data_with_the_r1_prompt(name):
    task, kind = build_task(name, FIXTURES, samples=3)
    docs = list(task.test_docs())
    assert docs and task.config.repeats == 3
    prompt = task.doc_to_text(docs[0])
    assert docs[0]["problem"] in prompt and "within \\boxed{}" in prompt
    assert kind == ("choice" if name == "gpqa_diamond" else "math")


def test_gpqa_choices_are_shuffled_deterministically():
    first = list(build_task("gpqa_diamond", FIXTURES, 1)[0].test_docs())[0]
    again = list(build_task("gpqa_diamond", FIXTURES, 1)[0].test_docs())[0]
    assert first == again
    assert first["choices"][ord(first["answer"]) - ord("A")] == "Carbon dioxide"


def test_hub_loading_path_with_a_mocked_loader(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return [{"problem": "1+1?", "answer": "2", "unique_id": "test/x.json"}]

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    task, _ = build_task("math500", None, 1)
    assert calls == [("HuggingFaceH4/MATH-500", None, "test")]
    assert list(task.test_docs()) == [{"id": "test/x.json", "problem": "1+1?", "answer": "2"}]


def test_hub_failure_says_to_use_data_dir(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr("datasets.load_dataset", offline)
    with pytest.raises(TaskError, match="pass --data-dir DIR with aime24.jsonl"):
        build_task("aime24", None, 1)


def test_unknown_task_and_bad_data_are_one_line_errors(tmp_path):
    with pytest.raises(TaskError, match="unknown task 'aime99'"):
        build_task("aime99", None, 1)
    with pytest.raises(TaskError, match="no math500.jsonl in --data-dir"):
        build_task("math500", tmp_path, 1)
    (tmp_path / "math500.jsonl").write_text('{"problem": "x"}\n')
    with pytest.raises(TaskError, match="row 1 has no answer field"):
        build_task("math500", tmp_path, 1)


def test_gen_kwargs_are_honoured():
    default = SamplingParams(max_new_tokens=100, seed=3)
    greedy = sampling_from({"until": [], "max_gen_toks": 512, "do_sample": False, "temperature": 0.6}, default)
    assert greedy.greedy and greedy.max_new_tokens == 512 and greedy.stop == ()
    sampled = sampling_from({"until": "###", "do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20,
                             "seed": 9}, default)
    assert (sampled.temperature, sampled.top_p, sampled.top_k, sampled.seed, sampled.stop) == (0.6, 0.95, 20, 9,
                                                                                             ("###",))


def test_deterministic_subsample():
    assert deterministic_subset(10, None, 0) is None and deterministic_subset(3, 5, 0) is None
    picked = deterministic_subset(100, 5, seed=1)
    assert picked == deterministic_subset(100, 5, seed=1) == sorted(picked) and len(set(picked)) == 5
    assert picked != deterministic_subset(100, 5, seed=2)


class FakeBackend:
    """Echoes a boxed answer; counts what it was asked to generate."""

    def __init__(self):
        self.generated: list[str] = []

    def encode(self, text: str) -> list[int]:
        return [len(text)]

    def chat_template(self) -> None:
        return None

    def generate(self, requests, policy, schedule, sampling, on_batch=None):
        results = [
            SequenceResult(r.request_id, [1], "<think>x</think>\\boxed{2}", "eos", 1, 1, 0.1, 0.1, 1, 8, 8, 0, 0.0)
            for r in requests
        ]
        self.generated += [r.request_id for r in requests]
        on_batch(results)
        return results


def _instance(doc_id, doc, gen_kwargs):
    return SimpleNamespace(task_name="math500", doc_id=doc_id, doc=doc, args=("prompt", gen_kwargs))


def test_registered_model_generates_k_samples_and_resumes():
    docs = [{"id": "a", "answer": "2"}, {"id": "b", "answer": "3"}]
    requests = [_instance(i, d, {"until": []}) for i, d in enumerate(docs) for _ in range(3)]  # repeats=3
    backend, saved = FakeBackend(), []
    lm = DyntsLM(backend, build_policy("full"), None, SamplingParams(), {"math500": "math"}, lambda s: 0,
                 on_sample=saved.append)
    out = lm.generate_until(requests)
    assert len(out) == 6 and all(o.endswith("\\boxed{2}") for o in out)
    assert backend.generated == [f"math500/{d}/{j}" for d in "ab" for j in range(3)]
    assert [row["correct"] for row in saved] == [True] * 3 + [False] * 3
    assert {"extracted", "gold", "kv_peak_bytes", "generated_tokens", "truncated"} <= set(saved[0])
    resumed_backend = FakeBackend()
    resumed = DyntsLM(resumed_backend, build_policy("full"), None, SamplingParams(), {"math500": "math"},
                      lambda s: 0, done={row["sample_id"]: row for row in saved[:4]})
    assert resumed.generate_until(requests) == out
    assert resumed_backend.generated == ["math500/b/1", "math500/b/2"]
    with pytest.raises(NotSupportedError, match="generate only"):
        lm.loglikelihood(requests)


@pytest.mark.slow
@pytest.mark.smollm2
def test_cli_runs_a_task_offline_with_pass_at_k_and_resumes(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    out = tmp_path / "runs"
    args = ["run", "-p", "window", "--task", "math500", "--data-dir", str(FIXTURES), "--samples", "2",
            "--limit", "2", "--temperature", "0.7", "--max-new-tokens", "24", "--budget", "96", "--window", "16",
            "--model", "smollm2-135m", "--out", str(out)]
    first = CliRunner().invoke(app, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "pass@1 [95% CI]" in first.output and "pass@2 / maj@2" in first.output
    run = next(out.iterdir())
    metrics = json.loads((run / "summary.json").read_text())["metrics"]
    assert metrics["problems"] == 2 and metrics["samples_per_problem"] == 2 and metrics["n_samples"] == 4
    for key in ("pass@1", "pass@1_ci95", "pass@2", "maj@2", "truncated_samples", "lm_eval"):
        assert key in metrics
    assert metrics["lm_eval"]["pass_at_1,all_samples"] == metrics["pass@1"]
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {"sample_id", "doc_id", "text", "extracted", "correct", "generated_tokens", "kv_peak_bytes"} <= set(rows[0])
    # interrupt after 3 of 4 samples: the rerun generates only the missing one
    (run / "summary.json").unlink()
    lines = (run / "samples.jsonl").read_text().splitlines()
    (run / "samples.jsonl").write_text("\n".join(lines[:3]) + "\n")
    second = CliRunner().invoke(app, args, catch_exceptions=False)
    assert second.exit_code == 0 and "resumed: 3 samples" in second.output
    again = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted(r["sample_id"] for r in again) == sorted(r["sample_id"] for r in rows)
    assert next(r for r in again if r["sample_id"] == rows[3]["sample_id"])["text"] == rows[3]["text"]


def test_the_tiny_reasoner_program_task_reads_the_shipped_program_problems() -> None:
    """``--task tiny_reasoner_program``: the second embedded task's held-out file, shipped with the package (no
    hub dataset), the bare prompt, exact-number scoring, and room for the longest trace and the answer."""
    from harness.tinyreasoner import program as pg

    info = shipped_tasks()["tiny_reasoner_program"]
    assert info["hub_path"] is None and info["kind"] == "number" and info["embedded_task"] == "program"
    task, kind = build_task("tiny_reasoner_program", None, 1)
    docs = list(task.test_docs())
    expected = list(pg.problems(500, seed=0, split="heldout"))
    assert kind == "number" and len(docs) == 500
    assert [(d["id"], d["problem"], d["answer"]) for d in docs] == [(p.id, p.prompt, p.answer) for p in expected]
    assert task.doc_to_text(docs[0]) == expected[0].prompt
    longest = max(len(p.trace) for p in pg.problems(3000, seed=0, split="train")) + 3  # + answer N, end token
    assert task.config.generation_kwargs["max_gen_toks"] >= longest
    assert shipped_tasks()["tiny_reasoner"]["embedded_task"] == "sum"
