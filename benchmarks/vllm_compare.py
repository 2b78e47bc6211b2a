"""Compare two run directories sample by sample (an engine backend vs ``--backend transformers``; any two).

    python -m benchmarks.vllm_compare RUN_DIR_A RUN_DIR_B            # two runs
    python -m benchmarks.vllm_compare OUT_A OUT_B                    # two --out roots: every policy they share
    python -m benchmarks.vllm_compare OUT_A OUT_B --detail [--points 3]

Prints accuracy of both, the share of problems with identical output tokens, and for the others where the
first differing token is (greedy runs: fp32 reduction order is the usual cause under a full cache). ``--detail``
prints one markdown row per policy: the first difference, A's largest KV a request held (tokens), A's policy time
as a share of decode time (mean over requests), and whether A's accuracy is within ``--points`` of B's.
"""

from __future__ import annotations

import json
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


def detail_row(name: str, dir_a: str, dir_b: str, points: float) -> str:
    r, rows = compare(dir_a, dir_b), load(dir_a)
    first = min(r["first_difference"].items(), key=lambda kv: kv[1], default=None)
    where = "-" if first is None else f"{first[0]} at token {first[1]}"
    peak = max(row.get("kv_peak_tokens", 0) for row in rows.values())
    shares = [row["policy_s"] / row["decode_s"] for row in rows.values() if row.get("decode_s")]
    share = sum(shares) / len(shares) if shares else 0.0
    gap = 100 * (r["accuracy_a"] - r["accuracy_b"])
    within = "yes" if abs(gap) <= points else f"NO ({gap:+.1f})"
    return (f"| {name} | {r['n']} | {100 * r['accuracy_a']:.1f}% | {100 * r['accuracy_b']:.1f}% | "
            f"{100 * r['identical']:.1f}% | {where} | {peak} | {100 * share:.1f}% | {within} |")


def pairs_of(a: str, b: str) -> dict[str, tuple[str, str]]:
    if (Path(a) / "samples.jsonl").is_file():
        return {Path(a).name.rsplit("-", 1)[0]: (a, b)}
    ra, rb = runs(a), runs(b)
    return {name: (ra[name], rb[name]) for name in ra if name in rb}


def main(a: str, b: str, detail: bool = False, points: float = 3.0) -> None:
    pairs = pairs_of(a, b)
    if detail:
        print("| policy | n | accuracy A | accuracy B | identical tokens | first difference | "
              f"peak KV tokens / request (A) | policy s / decode s (A) | within {points:g} points |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, (da, db) in pairs.items():
            print(detail_row(name, da, db, points))
        return
    print("| policy | n | accuracy A | accuracy B | identical tokens |")
    print("|---|---|---|---|---|")
    for name, (da, db) in pairs.items():
        r = compare(da, db)
        print(f"| {name} | {r['n']} | {100 * r['accuracy_a']:.1f}% | {100 * r['accuracy_b']:.1f}% | "
              f"{100 * r['identical']:.1f}% |")
        for key, index in list(r["first_difference"].items())[:5]:
            print(f"|   {key} | first differing token at {index} | | | |")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--detail", action="store_true")
    parser.add_argument("--points", type=float, default=3.0)
    args = parser.parse_args()
    main(args.a, args.b, args.detail, args.points)
