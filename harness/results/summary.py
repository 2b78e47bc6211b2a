"""Run-level aggregation of per-sample metrics (means, percentiles, KV saving, policy overhead).

Process and GPU measurement is ``harness.runs.resources``."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

# --- run-level aggregation -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Percentile ``q`` in [0, 100] by linear interpolation between closest ranks (numpy's default method).

    For sorted x of length n the position is ``(n - 1) * q / 100``; e.g. p50 of [1, 2, 3, 4] is 2.5.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    xs = sorted(float(v) for v in values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _values(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    """Numeric values of ``key``, skipping rows where it is missing or None (e.g. a failed sample)."""
    out: list[float] = []
    for row in rows:
        v = row.get(key)
        if v is not None and not isinstance(v, bool):
            out.append(v)
    return out


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize_samples(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Run-level aggregates over per-sample metric rows. Units are the key suffixes (_s, _bytes, _pct).

    Each statistic uses the rows that have the key (None/missing values are skipped); statistics with no
    values are None. Percentiles use linear interpolation (see :func:`percentile`). ``tokens_per_s`` is
    end-to-end throughput: total generated tokens / total (ttft_s + decode_s). ``kv_saving_ratio`` is
    mean full-cache bytes / mean peak (compressed) bytes, so 4.0 means the policy kept a quarter of the cache.
    """
    if not rows:
        return {"n_samples": 0}
    out: dict[str, Any] = {"n_samples": len(rows)}

    prompt = _values(rows, "prompt_tokens")
    generated = _values(rows, "generated_tokens")
    out["total_prompt_tokens"] = int(sum(prompt))
    out["total_generated_tokens"] = int(sum(generated))

    for key, name, unit in (
        ("ttft_s", "ttft", "s"),
        ("decode_s", "decode", "s"),
        ("decode_tokens_per_s", "decode", "tokens_per_s"),
    ):
        xs = _values(rows, key)
        out[f"{name}_mean_{unit}"] = _mean(xs)
        out[f"{name}_p50_{unit}"] = percentile(xs, 50)
        out[f"{name}_p90_{unit}"] = percentile(xs, 90)

    total_time = sum(_values(rows, "ttft_s")) + sum(_values(rows, "decode_s"))
    out["tokens_per_s"] = sum(generated) / total_time if total_time > 0 else None

    peak = _values(rows, "kv_peak_bytes")
    full = _values(rows, "kv_full_bytes")
    out["kv_peak_max_bytes"] = int(max(peak)) if peak else None
    out["kv_peak_mean_bytes"] = _mean(peak)
    out["kv_full_max_bytes"] = int(max(full)) if full else None
    out["kv_full_mean_bytes"] = _mean(full)
    peak_mean, full_mean = out["kv_peak_mean_bytes"], out["kv_full_mean_bytes"]
    out["kv_saving_ratio"] = full_mean / peak_mean if peak_mean and full_mean is not None else None

    compressions = _values(rows, "compressions")
    out["total_compressions"] = int(sum(compressions)) if compressions else None
    out["mean_compressions"] = _mean(compressions)

    policy = _values(rows, "policy_s")
    decode_total = sum(_values(rows, "decode_s"))
    out["total_policy_s"] = sum(policy) if policy else None
    out["policy_overhead_pct"] = 100.0 * sum(policy) / decode_total if policy and decode_total > 0 else None

    out["generated_tokens_by_sample"] = generated_by_sample(rows)
    reasons = [str(r["finish_reason"]) for r in rows if r.get("finish_reason") is not None]
    if reasons:
        out["finish_reasons"] = dict(sorted(Counter(reasons).items()))
    return out


def generated_by_sample(rows: list[dict[str, Any]]) -> dict[str, int]:
    """``{sample_id: generated tokens}``: what pairs a policy's trace lengths with full's on the same problems
    (``harness.results.lengths``), kept in ``summary.json`` because committed runs drop their ``samples.jsonl``."""
    return {str(r["sample_id"]): int(r["generated_tokens"]) for r in rows
            if "sample_id" in r and r.get("generated_tokens") is not None}
