"""The second embedded task as a workload: its shipped held-out file, ``make-task --task program``, the default
prompts and generation limit of ``--model tiny-reasoner-program``, and its lm-eval task."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backends.hf import loading
from harness.cli import app
from harness.runs.options import RunOptions
from harness.tinyreasoner import problems as sum_task
from harness.tinyreasoner import program as pg
from harness.workloads.selection import build_workload

runner = CliRunner()
DATA = Path(__file__).resolve().parents[1] / "harness" / "data"
PROGRAM_FILE, SUM_FILE = DATA / "tiny_program_heldout.jsonl", DATA / "tiny_reasoner_heldout.jsonl"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_shipped_program_problems_are_the_generators_held_out_split() -> None:
    """500 problems of split ``heldout``, seed 0, the training distribution's knobs, in the sum file's JSONL
    shape (id, prompt, answer, trace, critical, values)."""
    expected = [json.dumps(p.to_json()) for p in pg.problems(500, seed=0, split="heldout")]
    assert PROGRAM_FILE.read_text().splitlines() == expected
    sum_row, program_row = (json.loads(p.read_text().splitlines()[0]) for p in (SUM_FILE, PROGRAM_FILE))
    assert set(program_row) == set(sum_row)


def test_make_task_program_writes_the_shipped_file_byte_for_byte(tmp_path: Path) -> None:
    out = tmp_path / "program.jsonl"
    result = runner.invoke(app, ["make-task", "--task", "program", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == PROGRAM_FILE.read_bytes()


def test_make_task_program_knobs_shape_the_problems(tmp_path: Path) -> None:
    out = tmp_path / "short.jsonl"
    result = runner.invoke(app, ["make-task", "--task", "program", "--out", str(out), "--count", "6", "--split",
                                 "train", "--min-iterations", "2", "--max-iterations", "2", "--filler-lines", "0"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["prompt"].endswith("loop 2") for r in rows)
    for row in rows:
        words = row["trace"].split()
        assert words.count("iter") == 2 and not {"check", "maybe", "hmm"} & set(words)


@pytest.mark.parametrize(("task", "flag", "owner"), [
    ("program", ["--min-vars", "3"], "sum"), ("program", ["--gap-lines", "1"], "sum"),
    ("program", ["--no-recheck"], "sum"), ("sum", ["--max-iterations", "3"], "program"),
    ("sum", ["--min-iterations", "1"], "program"),
])
def test_make_task_refuses_the_other_tasks_knobs_in_one_line(tmp_path: Path, task: str, flag: list[str],
                                                            owner: str) -> None:
    out = tmp_path / "x.jsonl"
    result = runner.invoke(app, ["make-task", "--task", task, "--out", str(out), *flag])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"a knob of the {owner} task" in result.output and not out.exists()


@pytest.mark.parametrize(("model", "expected"), [
    ("tiny-reasoner-program", PROGRAM_FILE), ("tiny-reasoner", SUM_FILE), ("tiny-reasoner-control", SUM_FILE),
    ("smollm2-135m", SUM_FILE), ("HuggingFaceTB/SmolLM2-360M-Instruct", SUM_FILE),
])
@pytest.mark.parametrize("protocol", ["generate", "replay"])
def test_without_prompts_a_run_reads_the_held_out_problems_of_the_models_task(model: str, expected: Path,
                                                                               protocol: str) -> None:
    workload = build_workload(RunOptions(model=model, policy=("full",), protocol=protocol, limit=3))
    assert workload.source_name == expected.name and workload.source_hash == _sha256(expected)


def test_given_prompts_win_and_a_mismatched_pairing_is_allowed() -> None:
    workload = build_workload(RunOptions(model="tiny-reasoner", policy=("full",), prompts=PROGRAM_FILE))
    assert workload.source_name == PROGRAM_FILE.name and workload.source_hash == _sha256(PROGRAM_FILE)


def test_the_default_generation_limit_covers_the_program_tasks_longest_completion() -> None:
    """Trace, ``answer N`` and the end token of the longest problem the training distribution draws (9
    iterations, every branch taken, three filler lines each) fit; the sum models keep 512."""
    longest = max(len(p.trace) for p in pg.problems(3000, seed=0, split="train")) + 3
    assert RunOptions(model="tiny-reasoner-program").max_tokens >= longest > 512
    assert RunOptions(model="tiny-reasoner").max_tokens == 512 == RunOptions(model="smollm2-135m").max_tokens
    assert RunOptions(model="tiny-reasoner-program", max_new_tokens=32).max_tokens == 32
    sum_longest = max(len(p.trace) for p in sum_task.problems(500, seed=0, split="heldout")) + 3
    assert sum_longest <= 512


@pytest.fixture
def program_alias(monkeypatch, random_program_reasoner: Path) -> Path:
    """``--model tiny-reasoner-program`` resolving to a random model with the program task's tokenizer (the
    trained weights may not be in the package)."""
    shipped = loading.tiny_reasoner_dir

    def folder(alias: str = loading.TINY_REASONER_ALIAS) -> Path:
        return random_program_reasoner if alias == loading.TINY_REASONER_PROGRAM_ALIAS else shipped(alias)

    monkeypatch.setattr(loading, "tiny_reasoner_dir", folder)
    return random_program_reasoner


def test_a_default_run_on_the_program_model_records_the_program_files_hash(tmp_path: Path, program_alias) -> None:
    out = tmp_path / "runs"
    result = runner.invoke(app, ["run", "--model", "tiny-reasoner-program", "-p", "full", "-p", "oracle",
                                 "--limit", "2", "--max-new-tokens", "40", "--budget", "40", "--window", "8",
                                 "--interval", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summaries = [json.loads(p.read_text()) for p in out.glob("*/summary.json")]
    assert sorted(s["config"]["policy"] for s in summaries) == ["full", "oracle"]
    for summary in summaries:
        config = summary["config"]
        assert config["model"] == "tiny-reasoner-program" and config["prompts_name"] == PROGRAM_FILE.name
        assert config["prompts_sha256"] == _sha256(PROGRAM_FILE)


def test_the_program_task_through_lm_eval_reads_the_shipped_file(tmp_path: Path, program_alias) -> None:
    out = tmp_path / "task"
    result = runner.invoke(app, ["run", "--model", "tiny-reasoner-program", "-p", "full", "--task",
                                 "tiny_reasoner_program", "--limit", "2", "--max-new-tokens", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(next(out.glob("*/summary.json")).read_text())
    assert summary["config"]["prompts_sha256"] == _sha256(PROGRAM_FILE)
    assert summary["config"]["extra"]["task"] == "tiny_reasoner_program" and summary["metrics"]["problems"] == 2
