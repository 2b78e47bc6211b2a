"""Run-to-run noise of the gate's speed statistic on this machine: the speed probe rerun on an unchanged tree.

Runs ``dynts-bench sweep GRID --out OUT --allow-stale`` ``--runs`` times (the first run makes the cells, later
runs reuse them and only rerun the probe), keeps each ``speed.json`` as ``OUT/probe-N.json``, then prints, per
figure, the worst cell's run-to-run spread of the median (max / min - 1 over the runs), the within-run spread of
the repeats, and the gate's verdicts (``harness.check.speed_verdict``) for every ordered pair of runs (one as
the baseline, the other as the current run) -- unchanged, and with the current decode times doubled (the fault
the reference figure exists to catch).

    python benchmarks/speed_noise.py --runs 5 --out /tmp/speed-noise [--grid harness/grids/cpu-default.yaml]
    python benchmarks/speed_noise.py --analyse /tmp/speed-noise/probe-*.json [--tolerance 0.25,0.5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.check import speed_verdict  # noqa: E402
from harness.speed import figures  # noqa: E402

FIGURES = ("vs_reference", "vs_full")


def _doubled(probe: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = probe["entries"]
    full = next(k for k, e in entries.items() if e["policy"] == "full")
    raw = {k: {**e["raw"], "decode_ms_per_token": [2 * x for x in e["raw"]["decode_ms_per_token"]]}
           for k, e in entries.items()}
    return {k: {**figures(raw[k], raw[full]), "policy": entries[k]["policy"]} for k in raw}


def analyse(probes: list[dict[str, Any]], tolerances: list[float]) -> None:
    print(f"{len(probes)} probe runs; share of a core each got: {[round(p['cpu_share'], 2) for p in probes]}")
    keys = list(probes[0]["entries"])
    for figure in FIGURES:
        gated = [k for k in keys if figure in probes[0]["entries"][k]
                 and not (figure == "vs_full" and probes[0]["entries"][k]["policy"] == "full")]
        medians = [[p["entries"][k][figure]["median"] for p in probes] for k in gated]
        worst = max(max(m) / min(m) - 1 for m in medians)
        within = [(e[figure]["max"] - e[figure]["min"]) / e[figure]["median"] for p in probes
                  for e in p["entries"].values() if figure in e and not (figure == "vs_full" and e["policy"] == "full")]
        print(f"{figure}: run-to-run spread of the median, worst cell {worst:.1%}; within-run spread of the "
              f"repeats median {statistics.median(within):.1%}, max {max(within):.1%}")
    print("gate verdicts over every ordered pair of runs (baseline, current) x cells:")
    for tolerance in tolerances:
        for label, current in (("unchanged", lambda p: p["entries"]), ("2x slower", _doubled)):
            counts = {f: Counter() for f in FIGURES}
            for a, b in itertools.permutations(range(len(probes)), 2):
                now = current(probes[b])
                for key, base in probes[a]["entries"].items():
                    for figure in FIGURES:
                        if figure in base and not (figure == "vs_full" and base["policy"] == "full"):
                            counts[figure][speed_verdict(base[figure]["median"], now[key][figure], tolerance)[0]] += 1
            print(f"  tolerance {tolerance:.2f}, {label}: " + "; ".join(
                f"{f} " + ", ".join(f"{v} {c[v]}" for v in ("ok", "inconclusive", "FAIL")) for f, c in counts.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path)
    p.add_argument("--grid", type=Path, default=Path("harness/grids/cpu-default.yaml"))
    p.add_argument("--analyse", type=Path, nargs="+", help="saved probe files instead of running")
    p.add_argument("--tolerance", default="0.25,0.5", help="speed tolerances to evaluate, comma-separated")
    a = p.parse_args(argv)
    tolerances = [float(t) for t in a.tolerance.split(",")]
    if a.analyse:
        analyse([json.loads(f.read_text()) for f in a.analyse], tolerances)
        return 0
    if a.out is None:
        p.error("--out DIR is needed to run the probes (or --analyse FILES)")
    import yaml

    name = yaml.safe_load(a.grid.read_text()).get("name") or a.grid.stem
    saved = []
    for run in range(a.runs):
        os.system("uptime")
        subprocess.run(["dynts-bench", "sweep", str(a.grid), "--out", str(a.out), "--allow-stale"], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
        saved.append(a.out / f"probe-{run}.json")
        shutil.copy(a.out / name / "speed.json", saved[-1])
    os.system("uptime")
    analyse([json.loads(f.read_text()) for f in saved], tolerances)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
