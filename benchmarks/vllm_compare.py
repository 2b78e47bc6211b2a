"""Compare two run directories sample by sample (e.g. ``--backend vllm`` vs ``--backend transformers``).

    python benchmarks/vllm_compare.py RUN_DIR_A RUN_DIR_B     # two runs
    python benchmarks/vllm_compare.py OUT_A OUT_B             # two --out roots: every policy they share

Prints accuracy of both, the share of problems with identical output tokens, and for the others where the
first differing token is (greedy runs: fp32 reduction order is the usual cause under a full cache).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(run_dir: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in (Path(run_dir) / "samples.jsonl").read_text().splitlines() if line]
    return {str(r.get("prompt_id", r.get("id", r.get("request_id")))): r for r in rows}


def first_difference(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else -1


def compare(dir_a: str, dir_b: str) -> dict:
    a, b = load(dir_a), load(dir_b)
    common = sorted(set(a) & set(b))
    same = [k for k in common if a[k]["output_ids"] == b[k]["output_ids"]]
    diffs = {k: first_difference(a[k]["output_ids"], b[k]["output_ids"]) for k in common if k not in same}
    acc = lambda rows: sum(bool(rows[k].get("correct")) for k in common) / max(1, len(common))  # noqa: E731
    return {"n": len(common), "accuracy_a": acc(a), "accuracy_b": acc(b), "identical": len(same) / max(1, len(common)),
            "first_difference": diffs}


def runs(root: str) -> dict[str, str]:
    """Policy name -> run directory under an ``--out`` root (directories are ``<policy>-<config hash>``)."""
    return {d.name.rsplit("-", 1)[0]: str(d) for d in sorted(Path(root).iterdir()) if (d / "samples.jsonl").is_file()}


def main(a: str, b: str) -> None:
    if (Path(a) / "samples.jsonl").is_file():
        pairs = {Path(a).name.rsplit("-", 1)[0]: (a, b)}
    else:
        ra, rb = runs(a), runs(b)
        pairs = {name: (ra[name], rb[name]) for name in ra if name in rb}
    print("| policy | n | accuracy A | accuracy B | identical tokens |")
    print("|---|---|---|---|---|")
    for name, (da, db) in pairs.items():
        r = compare(da, db)
        print(f"| {name} | {r['n']} | {100 * r['accuracy_a']:.1f}% | {100 * r['accuracy_b']:.1f}% | "
              f"{100 * r['identical']:.1f}% |")
        for key, index in list(r["first_difference"].items())[:5]:
            print(f"|   {key} | first differing token at {index} | | | |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
