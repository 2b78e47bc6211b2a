"""Leaderboards over finished run directories: markdown, a self-contained HTML page and PNG plots.

Runs are grouped into *sweeps*: runs of the same model, workload (task or prompt file), sampling, dtype and
device, which differ only in policy and budget. Efficiency is reported as ratios to the full-cache run of the
same sweep, so that absolute timings from different machines are never compared. Every row names its run
directory and config hash.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.results.lengths import LengthRatio, length_ratio, ratio_of_totals
from harness.results.rundir import ResultsError
from harness.scoring.passk import wilson_ci

MIB = 1024 * 1024


@dataclass
class RunRecord:
    run_id: str
    path: Path
    config_hash: str
    policy: str
    model: str
    workload: str
    schedule: dict[str, Any] | None
    quality: float | None  # Pass@1 for tasks, accuracy for prompt files
    ci: tuple[float, float] | None
    extra_quality: dict[str, float]  # pass@k, maj@k
    n_samples: int
    tokens_per_s: float | None
    decode_mean_s: float | None
    kv_peak_bytes: int | None
    sweep: str
    kv_allocated_bytes: int | None = None  # the cache's tensor storage, largest batch (what was really held)
    kv_ratio_vs_full: float | None = None
    speed_ratio_vs_full: float | None = None
    notes: list[str] = field(default_factory=list)
    artefacts: dict[str, str] = field(default_factory=dict)  # content hashes of the model and predictor
    generated_tokens: int | None = None
    generated_by_sample: dict[str, int] = field(default_factory=dict)
    length_vs_full: LengthRatio | None = None  # mean generated tokens over full's on the same problems

    @property
    def budget_tokens(self) -> int | None:
        """The KV tokens a sequence may hold in steady state (None: full cache)."""
        s = self.schedule
        if not s:
            return None
        return s["budget"] if s["mode"] == "budget" else s["trigger_len"]

    @property
    def budget_label(self) -> str:
        s = self.schedule
        if not s:
            return "full cache"
        if s["mode"] == "budget":
            return f"budget {s['budget']} (+{s['interval']}), window {s['window']}"
        return f"trigger {s['trigger_len']}, ratio {s['ratio']}, window {s['window']}"

    @property
    def gate_key(self) -> str:
        """What the regression gate and the speed probe call this run's entry (seeds pool into one)."""
        return f"{self.workload} | {self.model} | {self.policy} | {self.budget_label}"


def _sweep_key(config: dict[str, Any]) -> str:
    keep = {k: config.get(k) for k in ("backend", "model", "prompts_name", "prompts_sha256", "dtype", "device",
                                         "limit", "chat", "sampling")}
    keep["task"] = (config.get("extra") or {}).get("task")
    keep["samples"] = (config.get("extra") or {}).get("samples")
    return json.dumps(keep, sort_keys=True)


def load_runs(root: Path) -> list[RunRecord]:
    """Every complete run below ``root`` (a directory holding ``summary.json``), with ratios to full."""
    records = []
    for summary_path in sorted(root.rglob("summary.json")):
        try:
            summary = json.loads(summary_path.read_text())
            config, m = summary["config"], summary["metrics"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ResultsError(f"{summary_path} is unreadable or truncated: rerun that run, or remove its "
                               "directory") from None
        task = (config.get("extra") or {}).get("task")
        k = m.get("samples_per_problem")
        ci = m.get("pass@1_ci95")
        n, accuracy = m.get("n_samples", 0), m.get("accuracy")
        if ci is None and accuracy is not None and n:  # one sample per prompt: a binomial interval
            ci = wilson_ci(round(accuracy * n), n)
        records.append(
            RunRecord(
                run_id=summary.get("run_id", summary_path.parent.name),
                path=summary_path.parent,
                config_hash=summary["config_hash"],
                policy=config["policy"],
                model=config["model"],
                workload=task or config["prompts_name"],
                schedule=config.get("schedule"),
                quality=m.get("pass@1", m.get("accuracy")),
                ci=tuple(ci) if ci else None,
                extra_quality={key: m[key] for key in (f"pass@{k}", f"maj@{k}") if k and key in m},
                n_samples=n,
                tokens_per_s=m.get("decode_mean_tokens_per_s"),
                decode_mean_s=m.get("decode_mean_s"),
                kv_peak_bytes=m.get("kv_peak_max_bytes"),
                sweep=_sweep_key(config),
                kv_allocated_bytes=m.get("kv_batch_allocated_max_bytes") or None,
                artefacts=dict(config.get("artefacts") or {}),
                generated_tokens=m.get("total_generated_tokens"),
                generated_by_sample=m.get("generated_tokens_by_sample") or {},
            )
        )
    _ratios_to_full(records)
    return records


def _ratios_to_full(records: list[RunRecord]) -> None:
    full = {r.sweep: r for r in records if r.policy == "full"}
    for r in records:
        ref = full.get(r.sweep)
        if ref is None:
            r.notes.append("no full-cache run in this sweep: ratios unavailable")
            continue
        if ref.kv_peak_bytes and r.kv_peak_bytes:
            r.kv_ratio_vs_full = r.kv_peak_bytes / ref.kv_peak_bytes
        if ref.tokens_per_s and r.tokens_per_s:
            r.speed_ratio_vs_full = r.tokens_per_s / ref.tokens_per_s
        r.length_vs_full = _length_vs(r, ref)


def _length_vs(r: RunRecord, ref: RunRecord) -> LengthRatio | None:
    """Paired per problem (with its interval) where both runs recorded per-sample lengths, else from totals."""
    if r.generated_by_sample and ref.generated_by_sample:
        return length_ratio(r.generated_by_sample, ref.generated_by_sample)
    return ratio_of_totals(r.generated_tokens, r.n_samples, ref.generated_tokens, ref.n_samples)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def leaderboard_rows(records: list[RunRecord]) -> dict[tuple[str, str, str], list[RunRecord]]:
    """``{(model, workload with its size, budget label): runs best first}``, in budget order. Runs of different
    sizes (100 vs 200 problems) are never ranked together; the full cache of the same size appears in every
    budget group."""
    def workload(r: RunRecord) -> str:
        return f"{r.workload} ({r.n_samples} samples)"

    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    order: dict[tuple[str, str, str], float] = {}
    for r in records:
        if r.policy != "full":
            key = (r.model, workload(r), r.budget_label)
            groups.setdefault(key, []).append(r)
            order[key] = r.budget_tokens or 0
    for (model, size, _), rows in groups.items():
        rows.extend(f for f in records if f.policy == "full" and f.model == model and workload(f) == size)
    for rows in groups.values():
        rows.sort(key=lambda r: (-(r.quality if r.quality is not None else -1), r.policy))
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order[kv[0]], kv[0][2])))


HEADER = ["rank", "policy", "quality", "95% CI", "pass@k / maj@k", "n", "KV peak", "KV vs full",
          "length vs full [95% CI]", "speed vs full", "tokens/s", "run", "config"]


def _cells(rank: int, r: RunRecord) -> list[str]:
    ci = f"[{_pct(r.ci[0])}, {_pct(r.ci[1])}]" if r.ci else "-"
    extra = " / ".join(_pct(v) for v in r.extra_quality.values()) or "-"
    kv = "-" if r.kv_peak_bytes is None else f"{r.kv_peak_bytes / MIB:.1f} MiB"
    length = r.length_vs_full.label() if r.length_vs_full else "-"
    return [str(rank), r.policy, _pct(r.quality), ci, extra, str(r.n_samples), kv, _num(r.kv_ratio_vs_full, ".2f", "x"),
            length, _num(r.speed_ratio_vs_full, ".2f", "x"), _num(r.tokens_per_s, ".1f"), r.run_id, r.config_hash]


def made_with(records: list[RunRecord]) -> dict[str, dict[str, list[str]]]:
    """``{model: {artefact: [content hashes]}}`` over the runs: what the leaderboard was made with. One hash per
    artefact is a consistent leaderboard; two mean runs of different weights were mixed."""
    found: dict[str, dict[str, set[str]]] = {}
    for r in records:
        for name, digest in r.artefacts.items():
            found.setdefault(r.model, {}).setdefault(name, set()).add(digest)
    return {model: {name: sorted(hashes) for name, hashes in sorted(arts.items())}
            for model, arts in sorted(found.items())}


def stale_artefacts(made: dict[str, dict[str, list[str]]], shipped: dict[str, dict[str, str]]) -> list[str]:
    """Why a leaderboard made with ``made`` (``made_with``) does not show the ``shipped`` artefacts
    (``{model: {artefact: hash}}``, ``harness.runs.catalog.shipped_artefacts``): one line per mismatch, empty when
    current."""
    problems = []
    for model, want in sorted(shipped.items()):
        have = made.get(model)
        if have is None:
            problems.append(f"{model}: no runs in the leaderboard")
            continue
        for name, digest in sorted(want.items()):
            if have.get(name) != [digest]:
                problems.append(f"{model}: {name} {', '.join(have.get(name) or ['missing'])}, shipped {digest}")
    return problems


Table = tuple[str, list[str], list[list[str]]]  # title, header, rows: rendered as markdown or HTML


def made_with_table(records: list[RunRecord]) -> Table | None:
    table = made_with(records)
    if not table:
        return None
    names = sorted({name for arts in table.values() for name in arts})
    rows = [[model, *(", ".join(arts.get(n, ["-"])) for n in names)] for model, arts in table.items()]
    return "Made with", ["model", *(f"{n} (content hash)" for n in names)], rows


def accuracy_matrix(records: list[RunRecord]) -> dict[tuple[str, str], dict[str, dict[int | None, RunRecord]]]:
    """``{(model, workload with size): {policy: {budget tokens (None: full): run}}}``, policies by mean quality,
    best first: the at-a-glance view above the per-budget rankings."""
    out: dict[tuple[str, str], dict[str, dict[int | None, RunRecord]]] = {}
    for r in records:
        key = (r.model, f"{r.workload} ({r.n_samples} samples)")
        out.setdefault(key, {}).setdefault(r.policy, {})[r.budget_tokens] = r

    def mean_quality(item: tuple[str, dict[int | None, RunRecord]]) -> tuple[float, str]:
        qs = [x.quality for x in item[1].values() if x.quality is not None]
        return (-(sum(qs) / len(qs)) if qs else 1.0, item[0])

    return {key: dict(sorted(policies.items(), key=mean_quality)) for key, policies in sorted(out.items())}


def matrix_tables(records: list[RunRecord]) -> list[Table]:
    """Per model and workload: a row per policy, accuracy at each budget, and length vs full at the lowest."""
    tables = []
    for (model, workload), policies in accuracy_matrix(records).items():
        budgets = sorted({b for runs in policies.values() for b in runs if b is not None})
        if not budgets:
            continue
        header = ["policy", *(f"budget {b}" for b in budgets), f"length vs full at {budgets[0]}"]
        rows = []
        for policy, runs in policies.items():
            if None in runs:  # the full cache: one run, whatever the budget
                rows.append([policy, *[_pct(runs[None].quality)] * len(budgets), "1.00x"])
                continue
            low = runs.get(budgets[0])
            rows.append([policy, *(_pct(runs[b].quality) if b in runs else "-" for b in budgets),
                         low.length_vs_full.label() if low and low.length_vs_full else "-"])
        tables.append((f"Accuracy by KV budget: {workload} · {model}", header, rows))
    return tables


def ranking_tables(records: list[RunRecord]) -> list[Table]:
    return [(f"{workload} · {model} · {budget}", HEADER, [_cells(i + 1, r) for i, r in enumerate(rows)])
            for (model, workload, budget), rows in leaderboard_rows(records).items()]


def _md_table(table: Table) -> list[str]:
    title, header, rows = table
    return [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def _html_table(table: Table) -> str:
    title, header, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def _overview(records: list[RunRecord]) -> list[Table]:
    made = made_with_table(records)
    return ([made] if made else []) + matrix_tables(records)


NOTE = ("quality: Pass@1 (tasks) or accuracy (prompt files). KV peak: exact bytes of the largest cache a sequence "
        "held. Ratios are to the full-cache run of the same sweep. length vs full: mean generated tokens over the "
        "full cache's on the same problems, 95% interval by the delta method (harness/results/lengths.py); runs "
        "without per-sample lengths give the ratio of totals and no interval. Content hashes: "
        "harness/runs/fingerprints.py.")


def markdown(records: list[RunRecord]) -> str:
    lines = ["# dynts-bench leaderboard", "", NOTE, ""]
    for table in [*_overview(records), *ranking_tables(records)]:
        lines += _md_table(table)
    return "\n".join(lines)


def html_page(records: list[RunRecord], plots: list[Path]) -> str:
    """One self-contained page: the overview, the plots, then the per-budget rankings (no external files or
    scripts)."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>dynts-bench leaderboard</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:1500px}table{border-collapse:collapse;"
             "margin-bottom:1.5em;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}tr:nth-child(even){"
             "background:#fafafa}.plots{display:flex;flex-wrap:wrap;gap:12px}.plots img{width:700px;"
             "max-width:100%;border:1px solid #ddd}p.note{max-width:1100px;color:#444}</style></head><body>",
             "<h1>dynts-bench leaderboard</h1>", f"<p class='note'>{html.escape(NOTE)}</p>"]
    parts += [_html_table(t) for t in _overview(records)]
    parts.append("<h2>Plots</h2><div class='plots'>")
    for plot in plots:
        data = base64.b64encode(plot.read_bytes()).decode()
        parts.append(f"<img alt='{html.escape(plot.stem)}' src='data:image/png;base64,{data}'>")
    parts.append("</div>")
    parts += [_html_table(t) for t in ranking_tables(records)]
    parts.append("</body></html>")
    return "".join(parts)


def report_json(records: list[RunRecord]) -> dict[str, Any]:
    """The leaderboard as data: what made it (content hashes per model) and one row per run."""
    return {"made_with": made_with(records), "runs": [
        {"run_id": r.run_id, "config_hash": r.config_hash, "model": r.model, "workload": r.workload,
         "policy": r.policy, "budget": r.budget_tokens, "n": r.n_samples, "quality": r.quality,
         "ci95": list(r.ci) if r.ci else None, "kv_vs_full": r.kv_ratio_vs_full,
         "length_vs_full": None if r.length_vs_full is None else
         {"ratio": r.length_vs_full.ratio, "ci95": [r.length_vs_full.low, r.length_vs_full.high],
          "n": r.length_vs_full.n}, "artefacts": r.artefacts}
        for r in sorted(records, key=lambda r: (r.model, r.workload, r.n_samples, r.budget_tokens or 0, r.policy))]}


def bench_files(root: Path) -> list[Path]:
    """``bench --out`` files under ``root`` (JSON with ``rows``): the latency-vs-context plots' input."""
    found = []
    for path in sorted(root.rglob("*.json")):
        if path.name not in ("summary.json", "config.json"):
            try:
                if "rows" in json.loads(path.read_text()):
                    found.append(path)
            except (ValueError, OSError):
                continue
    return found
