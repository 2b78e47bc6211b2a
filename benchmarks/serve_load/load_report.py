"""What a load run reports: counts, latency percentiles, throughput, KV pool before / peak / after, offline
identity, refusals; one rich table per policy run and a JSON record."""

from __future__ import annotations

import math
import statistics
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.serve_load.drive import LoadResult, refusal_names_the_fault


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(result: LoadResult, identical: dict[str, bool] | None, budgeted: bool) -> dict[str, Any]:
    """The numbers of one policy run (``identical``: request id -> served == offline, for comparable requests;
    ``budgeted``: the policy keeps the prompt within a KV budget, so over-long prompts must be refused)."""
    replies = [o for _, o in result.replies]
    done = [o for o in replies if o.status == 200 and not o.aborted]
    ttft = [o.ttft_s for o in done if o.ttft_s is not None]
    e2e = [o.latency_s for o in done]
    tokens = sum(o.output_tokens for o in replies if o.status == 200)
    compactions = sum(int(row.get("compactions", 0)) for row in result.stats)
    preemptions = sum(int(row.get("preemptions", 0)) for row in result.stats)  # vLLM's rows count them
    return {
        "policy": result.policy,
        "sent": len(replies), "not_sent": result.not_sent,
        "completed": len(done), "aborted": sum(o.aborted for o in replies),
        "refused_4xx": sum(o.refused for o in replies), "failed_5xx": sum(o.failed for o in replies),
        "refused_as_expected": sum(refusal_names_the_fault(r, o) for r, o in result.replies
                                   if r.must_be_refused(budgeted)),
        "must_be_refused": sum(r.must_be_refused(budgeted) for r, _ in result.replies),
        "refused_unexpectedly": sorted(r.request_id for r, o in result.replies
                                       if o.refused and not r.must_be_refused(budgeted)),
        "errors": sorted({o.error for o in replies if o.failed and o.error})[:5],
        "ttft_s": {f"p{q}": percentile(ttft, q) for q in (50, 90, 99)},
        "e2e_s": {f"p{q}": percentile(e2e, q) for q in (50, 90, 99)},
        "wall_s": result.wall_s, "output_tokens": tokens,
        "output_tokens_per_s": tokens / result.wall_s if result.wall_s else 0.0,
        "compactions": compactions, "preemptions": preemptions, "stats_rows": len(result.stats),
        "kv_before": result.kv_before, "kv_peak": result.kv_peak, "kv_after": result.kv_after,
        "running_after": result.running_after,
        "offline_identical": None if identical is None else sum(identical.values()),
        "offline_compared": None if identical is None else len(identical),
        "offline_differing": None if identical is None else sorted(k for k, same in identical.items() if not same),
        "bad_requests": [{"rule": r.bad, "status": o.status, "message": o.error,
                          "names_the_fault": refusal_names_the_fault(r, o)} for r, o in result.bad],
        "served_after": None if result.after is None else result.after.status == 200 and bool(result.after.texts),
    }


def ratio_spread(rows: list[dict[str, Any]], policy: str, reference: str) -> dict[str, Any] | None:
    """Served tokens/s of ``policy`` over ``reference``'s, one ratio per repeat (each repeat ran both), with the
    median and range."""
    mine = [r["output_tokens_per_s"] for r in rows if r["policy"] == policy]
    theirs = [r["output_tokens_per_s"] for r in rows if r["policy"] == reference]
    ratios = [a / b for a, b in zip(mine, theirs) if b > 0]
    if not ratios:
        return None
    return {"ratios": ratios, "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_tables(rows: list[dict[str, Any]], kv_label: str, console: Console) -> None:
    """One column per policy run, one row per measure (long rows read better than wide ones in a log)."""
    table = Table(title="served under load")
    table.add_column("measure")
    for i, r in enumerate(rows):
        table.add_column(f"{r['policy']} #{i + 1}", justify="right")
    measures: list[tuple[str, Any]] = [
        ("completed", lambda r: r["completed"]),
        ("aborted by the client", lambda r: r["aborted"]),
        ("refused 4xx (expected)", lambda r: f"{r['refused_4xx']} ({r['must_be_refused']})"),
        ("failed 5xx / connection", lambda r: r["failed_5xx"]),
        ("not sent (time bound)", lambda r: r["not_sent"]),
        ("TTFT p50 / p90 / p99 s", lambda r: " / ".join(_fmt(r["ttft_s"][k]) for k in ("p50", "p90", "p99"))),
        ("end to end p50 / p90 / p99 s", lambda r: " / ".join(_fmt(r["e2e_s"][k]) for k in ("p50", "p90", "p99"))),
        ("output tokens / s", lambda r: _fmt(r["output_tokens_per_s"], 1)),
        ("compactions", lambda r: r["compactions"]),
        ("preemptions (vLLM)", lambda r: r["preemptions"]),
        (f"KV before / peak / after ({kv_label})",
         lambda r: " / ".join(_fmt(r[k], 4) for k in ("kv_before", "kv_peak", "kv_after"))),
        ("greedy = offline", lambda r: "-" if r["offline_compared"] is None
         else f"{r['offline_identical']}/{r['offline_compared']}"),
        ("bad requests refused, fault named",
         lambda r: f"{sum(b['names_the_fault'] for b in r['bad_requests'])}/{len(r['bad_requests'])}"),
        ("normal request after", lambda r: "ok" if r["served_after"] else "FAILED"),
    ]
    for label, value in measures:
        table.add_row(label, *(str(value(r)) for r in rows))
    console.print(table)
