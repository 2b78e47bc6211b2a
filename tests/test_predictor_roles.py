"""benchmarks/predictor_roles.py: roles of trace tokens by their reader, and the statement-name probe."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmarks import predictor_roles as roles_bench
from benchmarks import static_score_bound as bound_bench
from harness.cli import app
from harness.predictor_pipeline.traces import TraceStore
from harness.tinyreasoner.problems import generate

runner = CliRunner()


def test_statement_roles_are_the_generators_critical_tokens_split_by_reader() -> None:
    for index in range(5):
        problem = generate(index, split="heldout")
        roles = roles_bench.trace_roles(problem.trace)
        marked = {i for i, critical in enumerate(problem.critical) if critical}
        assert {i for i, r in enumerate(roles) if r.startswith("statement")} == marked
        answer_read = [i for i, r in enumerate(roles) if r.endswith("/answer-read")]
        # the last result goes straight to the answer: its name and value, nothing else
        assert answer_read == sorted(marked)[-2:]
        assert roles[answer_read[0]] == "statement-name/answer-read"


@pytest.fixture(scope="module")
def shipped_store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("roles") / "traces"
    for args in (["collect-traces", "--out", str(out), "--limit", "24", "--batch-size", "24"],
                 ["label", str(out), "--method", "attention"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_the_answer_reads_its_last_result_and_a_head_can_tell_names_apart(shipped_store) -> None:
    """The paper's label puts the statement the answer reads near the top of its trace; and the shipped model's
    final hidden states tell a result's name from every other token (what the benchmark measured on 400
    traces: recall 1.0, precision about 0.9)."""
    store = TraceStore(shipped_store)
    from transformers import AutoTokenizer

    from backends.hf.facts import model_directory

    tokenizer = AutoTokenizer.from_pretrained(model_directory("tiny-reasoner")[0])
    table, counts = roles_bench.role_table(store, "attention", "prev", {}, 24, tokenizer)
    assert table["statement-value/answer-read"]["label"] > 0.9
    assert counts["statement-name/answer-read"] == counts["statement-value/answer-read"] == len(store.records())
    assert counts[roles_bench.TOP] == len(store.records()) and 0.0 <= table[roles_bench.TOP]["label"] <= 1.0
    found = roles_bench.name_probe(store, 24, tokenizer, [256, 64])
    assert found["recall"] > 0.9 and found["precision"] > 0.5 and found["others left out"] > 0.95


@pytest.mark.slow
def test_write_time_scores_that_rank_statements_first_keep_the_model_answering() -> None:
    """Scores fixed at write time, statements first (spent ones too): at a quarter of the median trace the shipped
    model still answers (measured: 100% of 500 held-out problems at every budget from 72 to 176)."""
    from backends.hf.backend import TransformersBackend
    from harness.workloads.prompt_file import default_prompts_path

    engine = TransformersBackend("tiny-reasoner", batch_size=16)
    correct, n = bound_bench.bound(engine, default_prompts_path(), 16, 86)
    assert n == 16 and correct >= 15
