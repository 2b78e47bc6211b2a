"""Run-to-run noise of the gate's speed statistic on this machine: the speed probe rerun on an unchanged tree.

Runs ``dynts-bench sweep GRID --out OUT --allow-stale`` ``--runs`` times (the first run makes the cells, later
runs reuse them and only rerun the probe), keeps each ``speed.json`` as ``OUT/probe-N.json``, then prints, per
figure, the worst cell's run-to-run spread of the median (max / min - 1 over the runs), the within-run spread of
the repeats, and the gate's verdicts (``harness.results.regression.speed_verdict``, and beside them the median rule it
replaced) for every ordered pair of runs (one as the baseline, the other as the current run) -- unchanged, and
with the current decode times doubled (the fault the reference figure exists to catch). ``--load N`` runs N
neighbours beside the probes: steady busy loops (``--load-kind cpu``) or bursts of 0.05-2 s of copying 400 MB
between pauses of 0.05-2 s (``--load-kind bursty-memory``: a shared runner's neighbours come and go, and contend
for caches and memory bandwidth, which CPU time does not exclude).

    python -m benchmarks.speed_noise --runs 5 --out /tmp/speed-noise [--grid harness/grids/cpu-default.yaml]
    python -m benchmarks.speed_noise --analyse /tmp/speed-noise/probe-*.json [--tolerance 0.25,0.5]
    python -m benchmarks.speed_noise --simulate 4000 [--rounds 9] [--burst-prob 0.4 --burst-max 0.5]

``--simulate`` is a model, not a measurement: when the machine at hand is quieter than a shared CI runner, it
draws probes whose every timed piece (each round's decode, ``full``'s, the reference's best of three bursts) is
slowed by a burst of load with probability ``--burst-prob`` (by a factor uniform in 1.1 .. 1 + ``--burst-max``),
and counts both rules' verdicts for an unchanged policy and for real slowdowns of 1.25-2x. It prints the
within-run spread it produced, to set beside the measured one (41-45% at load 8-23 on the AMD runner).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from harness.results.regression import speed_verdict
from harness.timing.speed_probe import figures

FIGURES = ("vs_reference", "vs_full")
LOADS = {
    "cpu": "while True: pass",
    "bursty-memory": (
        "import random, time, numpy as np\n"
        "a = np.ones(50_000_000); b = np.empty_like(a); r = random.Random()\n"
        "while True:\n"
        "    end = time.time() + r.uniform(0.05, 2)\n"
        "    while time.time() < end: np.copyto(b, a)\n"
        "    time.sleep(r.uniform(0.05, 2))\n"),
}


def median_rule(base_median: float, now: dict[str, Any], tolerance: float) -> tuple[str, str]:
    """The gate's rule until 2026-12-04, kept to compare: FAIL when every repeat is above the limit, inconclusive
    when the repeats spread wider than the tolerance, else FAIL when the median is above the limit."""
    limit = base_median * (1 + tolerance)
    if now["min"] > limit:
        return "FAIL", ""
    if (now["max"] - now["min"]) / now["median"] > tolerance:
        return "inconclusive", ""
    return ("FAIL" if now["median"] > limit else "ok"), ""


def _doubled(probe: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = probe["entries"]
    full = next(k for k, e in entries.items() if e["policy"] == "full")
    raw = {k: {**e["raw"], "decode_ms_per_token": [2 * x for x in e["raw"]["decode_ms_per_token"]]}
           for k, e in entries.items()}
    return {k: {**figures(raw[k], raw[full]), "policy": entries[k]["policy"]} for k in raw}


RULES = {"gate rule": speed_verdict, "old median rule": median_rule}


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
    for tolerance, (rule, verdict) in itertools.product(tolerances, RULES.items()):
        for label, current in (("unchanged", lambda p: p["entries"]), ("2x slower", _doubled)):
            counts = {f: Counter() for f in FIGURES}
            for a, b in itertools.permutations(range(len(probes)), 2):
                now = current(probes[b])
                for key, base in probes[a]["entries"].items():
                    for figure in FIGURES:
                        if figure in base and not (figure == "vs_full" and base["policy"] == "full"):
                            counts[figure][verdict(base[figure]["median"], now[key][figure], tolerance)[0]] += 1
            print(f"  {rule}, tolerance {tolerance:.2f}, {label}: " + "; ".join(
                f"{f} " + ", ".join(f"{v} {c[v]}" for v in ("ok", "inconclusive", "FAIL")) for f, c in counts.items()))


SLOWDOWNS = (1.0, 1.25, 1.5, 2.0)


def simulate(pairs: int, rounds: int, burst_prob: float, burst_max: float, tolerance: float,
             seed: int = 0) -> tuple[dict[float, dict[tuple[str, str], Counter]], float]:
    """Verdict counts per (rule, figure) for each slowdown in ``SLOWDOWNS``, over ``pairs`` modelled baseline /
    current probes; and the median within-run spread of ``vs_full`` the model produced with nothing changed."""
    rng = random.Random(seed)

    def load() -> float:
        return 1.0 + (rng.uniform(0.1, burst_max) if rng.random() < burst_prob else 0.0)

    def probe(cost: float) -> dict[str, Any]:
        decode = [cost * load() for _ in range(rounds)]
        raw = {"decode_ms_per_token": decode, "wall_ms_per_token": decode,
               "reference_ms_per_step": [0.5 * min(load() for _ in range(3)) for _ in range(rounds)]}
        return figures(raw, {"decode_ms_per_token": [load() for _ in range(rounds)]})

    spreads: list[float] = []
    found = {}
    for slowdown in SLOWDOWNS:
        counts = {(rule, f): Counter() for rule in RULES for f in FIGURES}
        for _ in range(pairs):
            base, now = probe(1.1), probe(1.1 * slowdown)
            if slowdown == 1.0:
                spreads.append((now["vs_full"]["max"] - now["vs_full"]["min"]) / now["vs_full"]["median"])
            for (rule, figure), c in counts.items():
                c[RULES[rule](base[figure]["median"], now[figure], tolerance)[0]] += 1
        found[slowdown] = counts
    return found, statistics.median(spreads)


def print_simulation(pairs: int, rounds: int, burst_prob: float, burst_max: float, tolerance: float) -> None:
    found, spread = simulate(pairs, rounds, burst_prob, burst_max, tolerance)
    print(f"simulated: {pairs} baseline/current pairs of {rounds}-round probes, bursts p={burst_prob}, up to "
          f"+{burst_max:.0%}; tolerance {tolerance:.2f}")
    for slowdown, counts in found.items():
        print(f"  policy {slowdown:.2f}x slower: " + "; ".join(
            f"{rule} {figure} " + "/".join(str(c[v]) for v in ("ok", "inconclusive", "FAIL"))
            for (rule, figure), c in counts.items()) + "  (ok/inconclusive/FAIL)")
    print(f"  within-run spread of vs_full, nothing changed: median {spread:.0%}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path)
    p.add_argument("--grid", type=Path, default=Path("harness/grids/cpu-default.yaml"))
    p.add_argument("--analyse", type=Path, nargs="+", help="saved probe files instead of running")
    p.add_argument("--tolerance", default="0.25,0.5", help="speed tolerances to evaluate, comma-separated")
    p.add_argument("--load", type=int, default=0, help="neighbour processes to run beside the probes")
    p.add_argument("--load-kind", choices=sorted(LOADS), default="cpu")
    p.add_argument("--simulate", type=int, default=0, help="pairs of modelled probes instead of running")
    p.add_argument("--rounds", type=int, default=5, help="rounds of a modelled probe")
    p.add_argument("--burst-prob", type=float, default=0.4, help="default: a within-run spread like CI's")
    p.add_argument("--burst-max", type=float, default=0.5)
    a = p.parse_args(argv)
    tolerances = [float(t) for t in a.tolerance.split(",")]
    if a.simulate:
        for tolerance in tolerances:
            print_simulation(a.simulate, a.rounds, a.burst_prob, a.burst_max, tolerance)
        return 0
    if a.analyse:
        analyse([json.loads(f.read_text()) for f in a.analyse], tolerances)
        return 0
    if a.out is None:
        p.error("--out DIR is needed to run the probes (or --analyse FILES)")
    import yaml

    name = yaml.safe_load(a.grid.read_text()).get("name") or a.grid.stem
    saved = []
    spinners = [subprocess.Popen([sys.executable, "-c", LOADS[a.load_kind]]) for _ in range(a.load)]
    try:
        _probe_runs(a, name, saved)
    finally:
        for spinner in spinners:
            spinner.kill()
    os.system("uptime")
    analyse([json.loads(f.read_text()) for f in saved], tolerances)
    return 0


def _probe_runs(a: argparse.Namespace, name: str, saved: list[Path]) -> None:
    for run in range(a.runs):
        os.system("uptime")
        subprocess.run(["dynts-bench", "sweep", str(a.grid), "--out", str(a.out), "--allow-stale"], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
        saved.append(a.out / f"probe-{run}.json")
        shutil.copy(a.out / name / "speed.json", saved[-1])


if __name__ == "__main__":
    raise SystemExit(main())
