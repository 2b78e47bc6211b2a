"""``analyze --mode eviction``: compression logs, task roles of generated tokens, loss causes, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from backends.base import SamplingParams
from backends.hf.backend import TransformersBackend
from harness.cli import app
from harness.predictor_pipeline.eviction import (
    Compression,
    SequenceLog,
    analyze_sequence,
    fine_roles,
    generate_logged,
    statements,
    summarize,
    tiny_policies,
)
from harness.tinyreasoner.problems import generate, token_roles
from harness.workloads.prompt_file import PromptItem
from zoo.predictor import ImportancePredictor, PredictorConfig
from zoo.schedule import EvictionSchedule

runner = CliRunner()


def test_statements_are_the_generators_critical_tokens_and_are_read_later() -> None:
    for index in range(5):
        problem = generate(index, split="heldout")
        words = problem.trace
        roles = token_roles(words)
        found = statements(words, roles)
        marked = [i for i, c in enumerate(problem.critical) if c]
        assert sorted([s.name_pos for s in found] + [s.name_pos + 1 for s in found]) == marked
        for s in found:
            if s.read_pos is not None:  # the read is a step-line operand with the same name, later
                assert words[s.read_pos] == words[s.name_pos] and s.read_pos > s.name_pos + 1
        assert found[-1].read_pos is None  # the last result goes straight to the answer
        fine = fine_roles(words, roles, set())
        assert {fine[s.name_pos] for s in found} == {"statement-name"}
        assert fine[words.index("note")] == "filler-note" and fine[0] == "step-line"


def _log(kept_value: bool, correct: bool, earlier: bool) -> tuple[SequenceLog, list[str]]:
    """A two-token prompt, then ``step a 1 + b 2 = 3 r1 3 . hmm . step r1 3 ...``: r1's statement (logical
    positions 10, 11) is live until the step at 16 reads it. One compression at position 14 (window 12-14), and
    with ``earlier`` one before it at 12 (window: 12 only) that kept the statement outside the window."""
    prompt = ["<user>", "<think>"]
    think = "step a 1 + b 2 = 3 r1 3 . hmm . step r1 3 + c 4 = 7 r2 7 . </think> answer 7".split()
    words = prompt + think
    positions = list(range(15))
    kept = [p != 5 and (kept_value or p != 11) for p in positions]  # "+" (5) always goes
    comps = [Compression(positions, [float(p) for p in positions], kept, [p < 2 or p >= 12 for p in positions])]
    if earlier:
        first = list(range(13))
        comps.insert(0, Compression(first, [1.0] * 13, [p != 4 for p in first], [p < 2 or p == 12 for p in first]))
    return SequenceLog("x", [0, 0], comps, [1] * len(think), correct), words


def test_loss_causes_follow_the_compression_log() -> None:
    log, words = _log(kept_value=False, correct=False, earlier=False)
    a = analyze_sequence(log, words, None)
    assert a.cause == "value-lost:ranked-low" and a.losses["value"].compression == 0
    assert a.losses["value"].position == 11 and "name" not in a.losses
    assert a.losses["value"].score_percentile == 9 / 10  # its score (11) is above 9 of the 10 free thinking tokens
    log, words = _log(kept_value=False, correct=False, earlier=True)
    assert analyze_sequence(log, words, None).cause == "value-lost:displaced"
    log, words = _log(kept_value=True, correct=False, earlier=False)
    a = analyze_sequence(log, words, None)
    assert a.cause == "none-lost" and a.live_seen["value"] == 1 and a.live_kept["value"] == 1
    log, words = _log(kept_value=True, correct=True, earlier=False)
    summary = summarize([analyze_sequence(log, words, None)])
    assert summary["accuracy"] == 1.0 and summary["value"]["live_survival"] == 1.0 and summary["failure_causes"] == {}


def test_generation_log_matches_the_decode_loop(random_reasoner, tmp_path) -> None:
    engine = TransformersBackend(str(random_reasoner), batch_size=3)
    head = ImportancePredictor(PredictorConfig(str(random_reasoner), 32, [8]))
    head.save(tmp_path / "pred")
    items = [PromptItem(p.id, p.prompt, p.answer) for p in (generate(i) for i in range(4))]
    schedule = EvictionSchedule(budget=56, interval=8, window=16)
    for name, factory in tiny_policies({"dynts": str(tmp_path / "pred")}, interventions=True).items():
        logs = generate_logged(engine, items, factory(), schedule, SamplingParams(60))
        assert [log.item_id for log in logs] == [i.id for i in items]
        for log in logs:
            assert log.compressions, name
            for comp in log.compressions:
                assert sum(comp.kept) == 56 and len(comp.positions) == 64  # budget kept of budget + interval
                assert all(k for k, p in zip(comp.kept, comp.protected) if p)  # prompt + window always kept
                assert comp.positions == sorted(comp.positions)
            # each compression starts from what the previous one kept, plus the tokens written since
            for before, after in zip(log.compressions, log.compressions[1:]):
                survivors = [p for p, k in zip(before.positions, before.kept) if k]
                assert after.positions[: len(survivors)] == survivors


def test_names_intervention_keeps_every_live_result_name(random_reasoner, tmp_path) -> None:
    engine = TransformersBackend(str(random_reasoner), batch_size=2)
    head = ImportancePredictor(PredictorConfig(str(random_reasoner), 32, [8]))
    head.save(tmp_path / "pred")
    items = [PromptItem(p.id, p.prompt, p.answer) for p in (generate(i) for i in range(2))]
    policy = tiny_policies({"dynts": str(tmp_path / "pred")}, oracle=False, interventions=True)["dynts+names"]()
    logs = generate_logged(engine, items, policy, EvictionSchedule(budget=56, interval=8, window=16),
                           SamplingParams(60))
    for log in logs:
        words = engine.tokenizer.convert_ids_to_tokens(log.prompt_ids + log.output_ids)
        a = analyze_sequence(log, words, None)
        assert "name" not in a.losses  # whatever the random model writes, no live name is evicted


def test_cli_eviction_mode_and_its_errors(random_reasoner, tmp_path, monkeypatch) -> None:
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps(generate(i).to_json()) + "\n" for i in range(2)))
    bad = runner.invoke(app, ["analyze", "--mode", "sideways"])
    assert bad.exit_code == 2 and "unknown --mode" in " ".join(bad.output.split())
    bad = runner.invoke(app, ["analyze"])
    assert bad.exit_code == 2 and "needs a labelled trace store" in " ".join(bad.output.split())
    bad = runner.invoke(app, ["analyze", "--mode", "eviction", "--prompts", str(problems), "--policy", "h2o"])
    assert bad.exit_code == 2 and "unknown --policy 'h2o'" in " ".join(bad.output.split())
    bad = runner.invoke(app, ["analyze", "--mode", "eviction", "--budget", "20", "--window", "32"])
    assert bad.exit_code == 2 and "must be larger than --window" in " ".join(bad.output.split())
    for other in ("smollm2-135m", "tiny-reasoner-program"):  # the program task has no result statements to count
        bad = runner.invoke(app, ["analyze", "--mode", "eviction", "--model", other])
        assert bad.exit_code == 2 and "--model tiny-reasoner or tiny-reasoner-control" in " ".join(bad.output.split())
        assert len(bad.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_eviction_mode_on_the_shipped_reasoner(tmp_path) -> None:
    out, md = tmp_path / "ev.json", tmp_path / "ev.md"
    result = runner.invoke(app, ["analyze", "--mode", "eviction", "--limit", "4", "--budget", "128", "--policy",
                                 "dynts", "--policy", "oracle", "--json", str(out), "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["full_accuracy"] == 1.0 and set(report["cells"]) == {"dynts@128", "oracle@128"}
    oracle = report["cells"]["oracle@128"]
    assert oracle["accuracy"] == 1.0 and oracle["name"]["live_survival"] == 1.0  # the oracle keeps live results
    assert "| 128 |" in md.read_text()
    assert torch.isfinite(torch.tensor(report["cells"]["dynts@128"]["orphan_digits_mean"]))
