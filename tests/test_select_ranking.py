"""``dynts-bench select-ranking``: the choice is the argmax of the scores with the stated tie rule (checked on
hand-made scores, no model), ``--write`` stores what DynTS then ranks with, bad input is one line, and end to end
the cells are the very runs ``dynts-bench run`` makes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.cli import select_ranking as select_ranking_cli
from harness.predictor_pipeline.ranking_selection import (
    OBJECTIVES,
    CellResult,
    SelectionError,
    choose,
    grid,
    parse_pool_next,
    parse_recency,
    select,
)
from harness.runs.catalog import shipped_predictor
from harness.runs.options import RunOptions
from harness.tinyreasoner.problems import generate
from harness.workloads.prompt_file import default_prompts_path
from zoo.dynts import DynTS

runner = CliRunner()
ACCURACY, KL = OBJECTIVES["generate"], OBJECTIVES["replay"]


def combo_of(options: RunOptions) -> tuple[int, float]:
    """The (pool_next, recency) a cell's options ask DynTS for."""
    args = dict(a.removeprefix("dynts.").split("=") for a in options.policy_arg)
    return int(args["pool_next"]), float(args["recency"])


def table_runner(values: dict[tuple[int, float, int], float]):
    """A cell runner that returns ``values[(pool_next, recency, budget)]`` instead of running DynTS."""
    return lambda options: CellResult(values[(*combo_of(options), options.budget)])


def _select(values: dict[tuple[int, float, int], float], objective=ACCURACY, per_budget: bool = False) -> dict:
    combos = sorted({(p, r) for p, r, _ in values})
    budgets = sorted({b for _, _, b in values})
    return select(RunOptions(prompts=Path("v.jsonl")), combos, budgets, table_runner(values), objective,
                  per_budget=per_budget)


def test_the_chosen_combination_is_the_argmax_of_the_mean_over_budgets() -> None:
    # means by hand: (0,0) 0.70, (0,2) 0.90, (1,0) 0.75, (1,2) 0.925 -> (1, 2); at budget 86 alone (0,2) and (1,2)
    # would differ from the mean's order, so the mean over both budgets is what decides
    values = {(0, 0.0, 86): 0.5, (0, 0.0, 128): 0.9, (0, 2.0, 86): 0.8, (0, 2.0, 128): 1.0,
              (1, 0.0, 86): 0.6, (1, 0.0, 128): 0.9, (1, 2.0, 86): 0.9, (1, 2.0, 128): 0.95}
    report = _select(values)
    assert (report["chosen"]["pool_next"], report["chosen"]["recency"]) == (1, 2.0)
    assert report["chosen"]["score"] == pytest.approx(0.925)
    assert report["paper_score"] == pytest.approx(0.70)
    scores = {(r["pool_next"], r["recency"]): r["score"] for r in report["rows"]}
    assert scores == pytest.approx({(0, 0.0): 0.70, (0, 2.0): 0.90, (1, 0.0): 0.75, (1, 2.0): 0.925})
    assert [r["chosen"] for r in report["rows"]] == [False, False, False, True]


def test_replay_chooses_the_lowest_kl() -> None:
    values = {(0, 0.0, 160): 0.42, (0, 4.0, 160): 0.37, (1, 4.0, 160): 0.39}
    report = _select(values, KL)
    assert (report["chosen"]["pool_next"], report["chosen"]["recency"]) == (0, 4.0)


def test_per_budget_each_budget_chooses_by_its_own_cells() -> None:
    # KL by hand: at 160 (1,4) is lowest (0.40), at 256 (0,16) (0.095); the mean's best is (1,4): 0.2475
    values = {(0, 4.0, 160): 0.41, (0, 4.0, 256): 0.097, (0, 16.0, 160): 0.43, (0, 16.0, 256): 0.095,
              (1, 4.0, 160): 0.40, (1, 4.0, 256): 0.095 + 0.0001, (1, 16.0, 160): 0.44, (1, 16.0, 256): 0.096}
    report = _select(values, KL, per_budget=True)
    assert (report["chosen"]["pool_next"], report["chosen"]["recency"]) == (1, 4.0)
    assert report["by_budget"] == {"160": {"pool_next": 1, "recency": 4.0, "score": 0.40},
                                   "256": {"pool_next": 0, "recency": 16.0, "score": 0.095}}
    assert "by_budget" not in _select(values, KL)


def test_per_budget_ties_follow_the_same_rule() -> None:
    # at 86 (0,2) and (1,0) tie at 0.8: smaller pool_next wins; at 128 (1,0) and (1,2) tie at 0.9: smaller recency
    values = {(0, 2.0, 86): 0.8, (0, 2.0, 128): 0.5, (1, 0.0, 86): 0.8, (1, 0.0, 128): 0.9,
              (1, 2.0, 86): 0.7, (1, 2.0, 128): 0.9}
    by_budget = _select(values, ACCURACY, per_budget=True)["by_budget"]
    assert {b: (c["pool_next"], c["recency"]) for b, c in by_budget.items()} == {"86": (0, 2.0), "128": (1, 0.0)}


def test_ties_go_to_the_papers_ranking_then_smaller_pool_next_then_smaller_recency() -> None:
    assert choose({(1, 0.0): 0.9, (0, 0.0): 0.9, (0, 1.0): 0.9}, ACCURACY) == (0, 0.0)
    assert choose({(1, 0.0): 0.9, (0, 2.0): 0.9, (0, 1.0): 0.8}, ACCURACY) == (0, 2.0)
    assert choose({(1, 2.0): 0.9, (1, 0.5): 0.9, (0, 0.0): 0.1}, ACCURACY) == (1, 0.5)
    # the same correct counts summed in another order: 0.1 + 0.7 != 0.3 + 0.5 in floating point, still a tie
    assert (0.1 + 0.7) / 2 != (0.3 + 0.5) / 2
    assert choose({(1, 0.0): (0.1 + 0.7) / 2, (0, 1.0): (0.3 + 0.5) / 2}, ACCURACY) == (0, 1.0)


def test_grid_values_are_parsed_and_bad_ones_refused() -> None:
    assert grid(parse_pool_next("1,0,1"), parse_recency("2, 0.5")) == [(0, 0.5), (0, 2.0), (1, 0.5), (1, 2.0)]
    for bad in ("", " , ", "x", "-1", "0.5"):
        with pytest.raises(SelectionError):
            parse_pool_next(bad)
    for bad in ("", "a", "-0.5", "inf", "nan"):
        with pytest.raises(SelectionError):
            parse_recency(bad)


def _validation(tmp_path: Path, count: int = 4) -> Path:
    path = tmp_path / "validation.jsonl"
    path.write_text("".join(json.dumps(generate(i, seed=7, split="validation").to_json()) + "\n"
                            for i in range(count)))
    return path


def _predictor_copy(tmp_path: Path) -> Path:
    shipped = shipped_predictor("tiny-reasoner")
    assert shipped is not None
    return Path(shutil.copytree(shipped, tmp_path / "pred"))


class FakeRunner:
    """Stands in for ``CellRunner``: recency 0.5 scores best at every budget, no model is loaded."""

    def __init__(self, objective) -> None:
        self.n_items = 4

    def check(self, cells) -> None:
        pass

    def __call__(self, options: RunOptions) -> CellResult:
        pool_next, recency = combo_of(options)
        return CellResult(0.9 if (pool_next, recency) == (1, 0.5) else 0.5)

    def close(self) -> None:
        pass


def test_write_stores_the_choice_and_dynts_then_ranks_with_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(select_ranking_cli, "CellRunner", FakeRunner)
    pred, prompts = _predictor_copy(tmp_path), _validation(tmp_path)
    weights = (pred / "model.safetensors").read_bytes()
    report_path = tmp_path / "report.json"
    result = runner.invoke(app, ["select-ranking", str(pred), "--prompts", str(prompts), "--budget", "128",
                                 "--budget", "86", "--pool-next", "0,1", "--recency", "0,0.5", "--out",
                                 str(tmp_path / "runs"), "--json", str(report_path), "--write"])
    assert result.exit_code == 0, result.output
    assert "chosen" in result.output
    stored = json.loads((pred / "predictor.json").read_text())["selection"]
    assert (stored["pool_next"], stored["recency"]) == (1, 0.5)
    assert DynTS(predictor=str(pred)).selection() == (1, 0.5)
    selected = stored["selected"]
    assert selected["prompts_sha256"] == hashlib.sha256(prompts.read_bytes()).hexdigest()
    assert selected["budgets"] == [86, 128] and selected["objective"] == "accuracy"
    assert (pred / "model.safetensors").read_bytes() == weights
    report = json.loads(report_path.read_text())
    assert report["written"] and report["replaced_selection"] == {"pool_next": 1, "recency": 2.0}
    assert len(report["rows"]) == 4 and all(len(r["cells"]) == 2 for r in report["rows"])


class PerBudgetRunner(FakeRunner):
    """Stands in for ``CellRunner``: (1, 0.5) is best at 86 and on the mean, (0, 2) at 128."""

    VALUES = {86: {(1, 0.5): 0.9}, 128: {(0, 2.0): 0.9, (1, 0.5): 0.8}}  # every other cell 0.5

    def __call__(self, options: RunOptions) -> CellResult:
        return CellResult(self.VALUES[options.budget].get(combo_of(options), 0.5))


def test_write_per_budget_stores_a_table_dynts_reads_by_budget(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(select_ranking_cli, "CellRunner", PerBudgetRunner)
    pred, prompts = _predictor_copy(tmp_path), _validation(tmp_path)
    result = runner.invoke(app, ["select-ranking", str(pred), "--prompts", str(prompts), "--budget", "128",
                                 "--budget", "86", "--pool-next", "0,1", "--recency", "0,0.5,2", "--out",
                                 str(tmp_path / "runs"), "--json", str(tmp_path / "r.json"), "--write",
                                 "--per-budget"])
    assert result.exit_code == 0, result.output
    assert "chosen at budget 128: pool_next 0, recency 2" in " ".join(result.output.split())
    stored = json.loads((pred / "predictor.json").read_text())["selection"]
    # means: (1, 0.5) (0.9 + 0.8) / 2 beats (0, 2) (0.5 + 0.9) / 2
    assert (stored["pool_next"], stored["recency"]) == (1, 0.5)
    assert stored["by_budget"] == {"86": {"pool_next": 1, "recency": 0.5}, "128": {"pool_next": 0, "recency": 2.0}}
    assert stored["selected"]["scores_by_budget"] == {"86": 0.9, "128": 0.9}
    assert stored["selected"]["budgets"] == [86, 128] and stored["selected"]["by"] == "dynts-bench select-ranking"
    dynts = DynTS(predictor=str(pred))
    assert [dynts.selection(b) for b in (86, 128, 100, 110, None)] == [(1, 0.5), (0, 2.0), (1, 0.5), (0, 2.0),
                                                                         (1, 0.5)]


def _error(args: list[str]) -> str:
    result = runner.invoke(app, ["select-ranking", *args])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "Traceback" not in text and text.startswith("error:")
    return text


def test_bad_input_is_one_line_and_exit_2(tmp_path) -> None:
    pred, prompts = _predictor_copy(tmp_path), _validation(tmp_path, 2)
    ok = [str(pred), "--prompts", str(prompts), "--out", str(tmp_path / "runs")]
    assert "no DynTS predictor" in _error([str(tmp_path / "none"), *ok[1:], "--budget", "96"])
    assert "no such file" in _error([str(pred), "--prompts", str(tmp_path / "missing.jsonl"), "--budget", "96"])
    assert "at least one --budget" in _error(ok)
    assert "empty" in _error([*ok, "--budget", "96", "--recency", ","])
    assert "unknown --protocol" in _error([*ok, "--budget", "96", "--protocol", "sample"])
    assert "held-out" in _error([str(pred), "--prompts", str(default_prompts_path()), "--budget", "96"])
    assert "does not fit in --budget 40" in _error([*ok, "--budget", "96", "--budget", "40"])
    assert not (tmp_path / "runs").exists()  # refused before any run directory was made
    assert json.loads((pred / "predictor.json").read_text())["selection"] == {"pool_next": 1, "recency": 2.0}


@pytest.mark.slow
def test_end_to_end_the_cells_are_the_runs_dynts_bench_run_makes(tmp_path) -> None:
    pred, prompts = _predictor_copy(tmp_path), _validation(tmp_path)
    out, report_path = tmp_path / "runs", tmp_path / "report.json"
    result = runner.invoke(app, ["select-ranking", str(pred), "--prompts", str(prompts), "--budget", "86",
                                 "--pool-next", "0", "--recency", "0,2", "--out", str(out), "--json",
                                 str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert [(r["pool_next"], r["recency"]) for r in report["rows"]] == [(0, 0.0), (0, 2.0)]
    for row in report["rows"]:
        (cell,) = row["cells"]
        summary = json.loads((Path(cell["run_dir"]) / "summary.json").read_text())
        assert summary["metrics"]["accuracy"] == cell["accuracy"] == row["score"]
        assert summary["config"]["policy_options"]["recency"] == row["recency"]
        again = runner.invoke(app, ["run", "-p", "dynts", "--predictor", str(pred), "--prompts", str(prompts),
                                    "--budget", "86", "--policy-arg", f"dynts.pool_next={row['pool_next']}",
                                    "--policy-arg", f"dynts.recency={row['recency']!r}", "--out", str(out)])
        assert again.exit_code == 0, again.output
        assert "already complete, reused" in again.output and Path(cell["run_dir"]).name in again.output
    best = max(report["rows"], key=lambda r: (r["score"], -r["pool_next"], -r["recency"]))
    assert (report["chosen"]["pool_next"], report["chosen"]["recency"]) == (best["pool_next"], best["recency"])


@pytest.mark.slow
def test_replay_scores_each_combination_by_its_runs_kl(tmp_path) -> None:
    pred, prompts = _predictor_copy(tmp_path), _validation(tmp_path, 2)
    report_path = tmp_path / "report.json"
    result = runner.invoke(app, ["select-ranking", str(pred), "--prompts", str(prompts), "--protocol", "replay",
                                 "--budget", "86", "--pool-next", "0", "--recency", "0,8", "--out",
                                 str(tmp_path / "runs"), "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["objective"]["metric"] == "kl_mean" and not report["objective"]["higher_is_better"]
    kl = {}
    for row in report["rows"]:
        (cell,) = row["cells"]
        summary = json.loads((Path(cell["run_dir"]) / "summary.json").read_text())
        assert summary["config"]["extra"]["protocol"] == "replay"
        kl[(row["pool_next"], row["recency"])] = summary["metrics"]["kl_mean"]
        assert cell["kl_mean"] == row["score"] == kl[(row["pool_next"], row["recency"])]
    assert (report["chosen"]["pool_next"], report["chosen"]["recency"]) == min(kl, key=lambda c: (kl[c], c))


def test_run_refuses_a_malformed_budget_table_in_one_line(tmp_path) -> None:
    pred, prompts = _predictor_copy(tmp_path), _validation(tmp_path, 1)
    config = json.loads((pred / "predictor.json").read_text())
    config["selection"]["by_budget"] = {"160": {"recency": "high"}}
    (pred / "predictor.json").write_text(json.dumps(config))
    result = runner.invoke(app, ["run", "-p", "dynts", "--predictor", str(pred), "--prompts", str(prompts),
                                 "--budget", "96", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert text.startswith("error:") and "Traceback" not in text and "select-ranking --write" in text
    assert not (tmp_path / "runs").exists()
