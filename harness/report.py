"""Rich tables over finished runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def agreement_with(reference: list[dict[str, Any]], rows: list[dict[str, Any]]) -> float | None:
    """Mean fraction of the reference output reproduced token for token before the first divergence."""
    ref = {r["sample_id"]: r["output_ids"] for r in reference}
    fractions = []
    for row in rows:
        want = ref.get(row["sample_id"])
        if not want:
            continue
        got = row["output_ids"]
        same = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        fractions.append(same / len(want))
    return sum(fractions) / len(fractions) if fractions else None


def _quality(m: dict[str, Any], k: int | None) -> list[str]:
    """Accuracy cells: plain accuracy for prompt files; Pass@1 with its CI, Pass@k and Maj@k for tasks."""
    if k is None:
        return [_fmt(m.get("accuracy"), ".1%")]
    lo, hi = m.get("pass@1_ci95") or (None, None)
    ci = f" [{lo:.0%}, {hi:.0%}]" if lo is not None else ""
    return [_fmt(m.get("pass@1"), ".1%") + ci, f"{_fmt(m.get(f'pass@{k}'), '.1%')} / {_fmt(m.get(f'maj@{k}'), '.1%')}"]


def comparison_table(outcomes: Mapping[str, Any]) -> Table:
    """One row per policy: accuracy, agreement with the full cache, speed, KV memory, compression work."""
    reference = outcomes["full"].run_dir.samples() if "full" in outcomes else None
    replay = any(m.summary.get("protocol") == "replay" for m in outcomes.values())
    table = Table(title="dynts-bench results" + (" (trace replay)" if replay else ""))
    k = next((m.summary.get("samples_per_problem") for m in outcomes.values() if "pass@1" in m.summary), None)
    fidelity = [("KL(full||p)", "right"), ("top-1 = full", "right"), ("critical kept", "right"),
                ("retrieval ok", "right")]
    for column, justify in (
        ("policy", "left"), ("n", "right"), ("accuracy" if k is None else "pass@1 [95% CI]", "right"),
        *([(f"pass@{k} / maj@{k}", "right")] if k is not None else []),
        *(fidelity if replay else [("= full", "right")]), ("gen tok", "right"),
        ("decode tok/s", "right"), ("TTFT", "right"), ("peak KV", "right"), ("KV saving", "right"),
        ("compressions", "right"), ("policy time", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name, outcome in outcomes.items():
        m = outcome.summary
        if replay:
            compared = [_fmt(m.get("kl_mean"), ".4f"), _fmt(m.get("top1_agreement"), ".1%"),
                        _fmt(m.get("retrieval_recall"), ".1%"), _fmt(m.get("retrieval_accuracy"), ".1%")]
        else:
            agree = agreement_with(reference, outcome.run_dir.samples()) if reference is not None else None
            compared = [_fmt(agree, ".1%")]
        table.add_row(
            name,
            str(m.get("n_samples", 0)),
            *_quality(m, k),
            *compared,
            str(m.get("total_generated_tokens", "-")),
            _fmt(m.get("decode_mean_tokens_per_s"), ".1f"),
            _fmt(m.get("ttft_mean_s"), ".3f", " s"),
            human_bytes(m.get("kv_peak_max_bytes")),
            _fmt(m.get("kv_saving_ratio"), ".2f", "x"),
            _fmt(m.get("mean_compressions"), ".1f"),
            _fmt(m.get("policy_overhead_pct"), ".1f", "%"),
        )
    first = (
        "KL / top-1: mean per-token KL(full || policy) and argmax agreement with the full cache on the forced "
        "trace; critical kept: stated results still cached when a later step reads them; retrieval ok: those "
        "reads predicted right. " if replay else
        "= full: share of the full-cache output reproduced before the first differing token (greedy). "
    )
    table.caption = (
        first +
        "peak KV: exact bytes of the largest cache a sequence held; KV saving: full-cache bytes / peak bytes. "
        "policy time: observe + score + select + evict, as % of decode time."
    )
    return table
