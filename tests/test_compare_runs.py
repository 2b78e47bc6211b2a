"""``benchmarks/vllm_compare.py``: the sample-by-sample comparison the engine acceptance tables are made with."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import vllm_compare


def write_run(root: Path, name: str, rows: list[dict]) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def row(sample: str, ids: list[int], correct: bool, peak: int = 10, policy_s: float = 0.1, decode_s: float = 1.0):
    return {"prompt_id": sample, "output_ids": ids, "correct": correct, "kv_peak_tokens": peak,
            "policy_s": policy_s, "decode_s": decode_s}


def test_detail_rows_name_the_first_difference_and_the_accuracy_gap(tmp_path, capsys):
    engine, reference = tmp_path / "engine", tmp_path / "reference"
    write_run(engine, "dynts-aaa", [row("p1", [1, 2, 3], True, peak=7), row("p2", [4, 5, 9, 9], False, peak=12),
                                    row("p3", [6], True)])
    write_run(reference, "dynts-bbb", [row("p1", [1, 2, 3], True), row("p2", [4, 5, 6], True), row("p3", [6], True)])
    write_run(engine, "window-ccc", [row("p1", [1], False)])  # no counterpart in the reference: not compared
    vllm_compare.main(str(engine), str(reference), detail=True, points=3)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3  # header, rule, one shared policy
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:6] == ["dynts", "3", "66.7%", "100.0%", "66.7%", "p2 at token 2"]
    assert cells[6] == "12" and cells[7] == "10.0%"
    assert cells[8] == "NO (-33.3)"
