"""The regression gate: compare finished runs with a committed baseline.

Entries are keyed by (workload, model, policy, budget) and pool their seeds. Accuracy is compared with a
one-sided Fisher exact test (is the current success rate significantly below the baseline's?), never with a
fixed epsilon that a handful of samples would trip. Efficiency is compared as ratios to the full-cache run of
the same sweep: the KV ratio is exact (byte counts), the speed ratio gets a tolerance because even ratios of
timings move on a shared machine.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from harness.leaderboard import RunRecord

BASELINE_VERSION = 1


def _key(r: RunRecord) -> str:
    return f"{r.workload} | {r.model} | {r.policy} | {r.budget_label}"


def _pool(records: list[RunRecord]) -> dict[str, dict[str, Any]]:
    pooled: dict[str, dict[str, Any]] = {}
    for r in records:
        entry = pooled.setdefault(_key(r), {"successes": 0, "trials": 0, "kv": [], "speed": [], "runs": []})
        if r.quality is not None and r.n_samples:
            entry["successes"] += round(r.quality * r.n_samples)
            entry["trials"] += r.n_samples
        if r.kv_ratio_vs_full is not None:
            entry["kv"].append(r.kv_ratio_vs_full)
        if r.speed_ratio_vs_full is not None:
            entry["speed"].append(r.speed_ratio_vs_full)
        entry["runs"].append({"run_id": r.run_id, "config_hash": r.config_hash})
    for entry in pooled.values():
        entry["kv_ratio_vs_full"] = sum(entry["kv"]) / len(entry["kv"]) if entry["kv"] else None
        entry["speed_ratio_vs_full"] = sum(entry["speed"]) / len(entry["speed"]) if entry["speed"] else None
        del entry["kv"], entry["speed"]
    return pooled


def make_baseline(records: list[RunRecord], name: str) -> dict[str, Any]:
    return {
        "version": BASELINE_VERSION,
        "name": name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "entries": _pool(records),
    }


@dataclass
class Finding:
    key: str
    metric: str
    baseline: str
    current: str
    detail: str
    failed: bool


def compare(
    baseline: dict[str, Any],
    records: list[RunRecord],
    alpha: float = 0.05,
    kv_tolerance: float = 0.02,
    speed_tolerance: float = 0.25,
) -> list[Finding]:
    """Every check of every baseline entry against the current runs."""
    from scipy.stats import fisher_exact

    current = _pool(records)
    findings = []
    for key, base in sorted(baseline["entries"].items()):
        now = current.get(key)
        if now is None:
            findings.append(Finding(key, "run", "present", "missing", "no matching finished run", True))
            continue
        if base["trials"] and now["trials"]:
            table = [[now["successes"], now["trials"] - now["successes"]],
                     [base["successes"], base["trials"] - base["successes"]]]
            p = fisher_exact(table, alternative="less").pvalue
            findings.append(Finding(
                key, "accuracy", f"{base['successes']}/{base['trials']}", f"{now['successes']}/{now['trials']}",
                f"one-sided Fisher p={p:.3g} (fail below {alpha})", bool(p < alpha),
            ))
        if base["kv_ratio_vs_full"] is not None and now["kv_ratio_vs_full"] is not None:
            limit = base["kv_ratio_vs_full"] * (1 + kv_tolerance)
            findings.append(Finding(
                key, "KV vs full", f"{base['kv_ratio_vs_full']:.3f}x", f"{now['kv_ratio_vs_full']:.3f}x",
                f"fail above {limit:.3f}x", now["kv_ratio_vs_full"] > limit,
            ))
        if base["speed_ratio_vs_full"] is not None and now["speed_ratio_vs_full"] is not None:
            limit = base["speed_ratio_vs_full"] * (1 - speed_tolerance)
            findings.append(Finding(
                key, "speed vs full", f"{base['speed_ratio_vs_full']:.3f}x", f"{now['speed_ratio_vs_full']:.3f}x",
                f"fail below {limit:.3f}x", now["speed_ratio_vs_full"] < limit,
            ))
    return findings
