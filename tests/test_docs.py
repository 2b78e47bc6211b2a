"""The front door stays short and true: README within 220 lines with one dated table, its policy table complete,
every path the README and docs cite committed, and every committed result indexed in results/README.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zoo import registry

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
CITED = re.compile(r"(?<![\w/.-])((?:results|harness|benchmarks|docs|zoo|backends|tests|\.ci|\.github)/[\w./*-]*)")
GENERATED = ("results/runs",)  # where runs land by default: made by the commands, never committed


def test_the_readme_is_at_most_220_lines_with_one_dated_table() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 220
    assert len(re.findall(r"\b20\d\d-\d\d-\d\d\b", text)) == 1, "one date: the headline table's (history: CHANGELOG.md)"


def test_the_readme_policy_table_lists_every_registered_policy() -> None:
    rows = set(re.findall(r"^\| `([\w-]+)` \|", README.read_text(), re.MULTILINE))
    assert rows == set(registry()), f"README policy table: add {sorted(set(registry()) - rows)}"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_every_path_a_page_cites_is_committed(page) -> None:
    missing = []
    for raw in CITED.findall(page.read_text()):
        path = raw.split("#")[0].rstrip(".,:;")
        if path.startswith(GENERATED) or "{" in path:
            continue
        if not (list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
            missing.append(path)
    assert not missing, f"{page.name} cites paths that do not exist: {sorted(set(missing))}"


def test_every_committed_result_is_indexed() -> None:
    index = (ROOT / "results" / "README.md").read_text()
    listed = set(re.findall(r"^\| `([^`]+)` \|", index, re.MULTILINE))
    unlisted = []
    for path in sorted((ROOT / "results").rglob("*")):
        rel = path.relative_to(ROOT / "results")
        if not path.is_file() or rel.parts[0] == "runs" or path.name == "README.md" and len(rel.parts) == 1:
            continue
        names = {rel.as_posix()} | {f"{p.as_posix()}/" for p in rel.parents if p != Path(".")}
        if not names & listed:
            unlisted.append(rel.as_posix())
    assert not unlisted, f"add to results/README.md: {unlisted[:5]}"
