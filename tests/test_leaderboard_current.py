"""The committed leaderboard (results/leaderboard/) shows what ships: it was made with the shipped model and
predictor weights, from every cell of its grid, and its report is what the report code makes of its runs.

When one of these fails, regenerate it (complete cells are skipped):
    dynts-bench sweep harness/grids/leaderboard.yaml --out results/leaderboard/runs
    dynts-bench report results/leaderboard/runs --out results/leaderboard
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.results.leaderboard import load_runs, markdown, stale_artefacts
from harness.runs.catalog import shipped_artefacts
from harness.runs.grid import expand, load_grid
from zoo import registry

ROOT = Path(__file__).resolve().parents[1]
BOARD = ROOT / "results" / "leaderboard"
#: one grid per embedded task (budgets are a task's share of its median trace); one report over all their runs
GRIDS = (ROOT / "harness" / "grids" / "leaderboard.yaml", ROOT / "harness" / "grids" / "leaderboard-program.yaml")
REGENERATE = ("regenerate: dynts-bench sweep GRID --out results/leaderboard/runs for each of "
              f"{', '.join(g.name for g in GRIDS)} (in harness/grids/), then "
              "dynts-bench report results/leaderboard/runs --out results/leaderboard")
#: the tiny reasoner's predictor shipped until 2026-12-04 (results/tiny-reasoner/dynts-2026-12-01/)
RETIRED_PREDICTOR = "sha256:d0e2d8edb776339c"


def _grid_models() -> list[str]:
    return [model for grid in GRIDS for model in load_grid(grid).axes["model"]]


def _made_with() -> dict:
    return json.loads((BOARD / "report.json").read_text())["made_with"]


def test_the_committed_leaderboard_was_made_with_the_shipped_artefacts() -> None:
    shipped = {model: shipped_artefacts(model) for model in _grid_models()}
    assert {"model", "predictor"} <= set(shipped["tiny-reasoner"])
    problems = stale_artefacts(_made_with(), shipped)
    assert not problems, f"{problems}; {REGENERATE}"


def test_a_leaderboard_recording_a_retired_predictor_is_stale(tmp_path) -> None:
    report = json.loads((BOARD / "report.json").read_text())
    report["made_with"]["tiny-reasoner"]["predictor"] = [RETIRED_PREDICTOR]
    copy = tmp_path / "report.json"
    copy.write_text(json.dumps(report))
    shipped = {model: shipped_artefacts(model) for model in _grid_models()}
    problems = stale_artefacts(json.loads(copy.read_text())["made_with"], shipped)
    assert problems == [f"tiny-reasoner: predictor {RETIRED_PREDICTOR}, shipped "
                        f"{shipped['tiny-reasoner']['predictor']}"]


@pytest.mark.parametrize("grid_path", GRIDS, ids=lambda g: g.stem)
def test_every_cell_of_the_grid_is_in_the_committed_runs(grid_path: Path) -> None:
    grid = load_grid(grid_path)
    runs = BOARD / "runs" / grid.name
    want = {(c.model, c.policy[0], None if c.policy == ("full",) else c.budget) for c in expand(grid, runs)}
    have = set()
    for path in runs.glob("*/summary.json"):
        config = json.loads(path.read_text())["config"]
        have.add((config["model"], config["policy"], (config.get("schedule") or {}).get("budget")))
    assert want <= have, f"missing cells {sorted(want - have, key=str)[:5]}; {REGENERATE}"


@pytest.mark.parametrize("grid_path", GRIDS, ids=lambda g: g.stem)
def test_the_grid_is_every_registered_policy(grid_path: Path) -> None:
    """A policy added to the zoo is on the leaderboard (and a renamed or removed one is off it)."""
    on_grid, registered = set(load_grid(grid_path).axes["policy"]), set(registry())
    assert on_grid == registered, (f"on {grid_path.relative_to(ROOT)} but not registered: "
                                   f"{sorted(on_grid - registered)}; "
                                   f"registered but not on it: {sorted(registered - on_grid)}")


def test_the_committed_report_is_what_the_report_makes_of_the_committed_runs() -> None:
    assert (BOARD / "report.md").read_text() == markdown(load_runs(BOARD / "runs")), REGENERATE
