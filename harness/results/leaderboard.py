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


HEADER = ["rank", "policy", "quality", "95% CI", "pass@k / maj@k", "n", "KV peak", "KV vs full", "speed vs full",
          "tokens/s", "run", "config"]


def _cells(rank: int, r: RunRecord) -> list[str]:
    ci = f"[{_pct(r.ci[0])}, {_pct(r.ci[1])}]" if r.ci else "-"
    extra = " / ".join(_pct(v) for v in r.extra_quality.values()) or "-"
    kv = "-" if r.kv_peak_bytes is None else f"{r.kv_peak_bytes / MIB:.1f} MiB"
    return [str(rank), r.policy, _pct(r.quality), ci, extra, str(r.n_samples), kv, _num(r.kv_ratio_vs_full, ".2f", "x"),
            _num(r.speed_ratio_vs_full, ".2f", "x"), _num(r.tokens_per_s, ".1f"), r.run_id, r.config_hash]


def markdown(records: list[RunRecord]) -> str:
    lines = ["# dynts-bench leaderboard", ""]
    for (model, workload, budget), rows in leaderboard_rows(records).items():
        lines += [f"## {workload} · {model} · {budget}", "", "| " + " | ".join(HEADER) + " |",
                  "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(_cells(i + 1, r)) + " |" for i, r in enumerate(rows)]
        lines.append("")
    lines.append("quality: Pass@1 (tasks) or accuracy (prompt files). KV peak: exact bytes of the largest cache a "
                 "sequence held. Ratios are to the full-cache run of the same sweep.")
    return "\n".join(lines) + "\n"


def html_page(records: list[RunRecord], plots: list[Path]) -> str:
    """One self-contained page: tables and plots inlined (no external files or scripts)."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>dynts-bench leaderboard</title><style>",
             "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:nth-child(2){text-align:left}"
             "img{max-width:48%;margin:1%}</style></head><body><h1>dynts-bench leaderboard</h1>"]
    for (model, workload, budget), rows in leaderboard_rows(records).items():
        parts.append(f"<h2>{html.escape(workload)} · {html.escape(model)} · {html.escape(budget)}</h2><table><tr>")
        parts += [f"<th>{html.escape(h)}</th>" for h in HEADER] + ["</tr>"]
        for i, r in enumerate(rows):
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(i + 1, r)) + "</tr>")
        parts.append("</table>")
    for plot in plots:
        data = base64.b64encode(plot.read_bytes()).decode()
        parts.append(f"<img alt='{html.escape(plot.stem)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "".join(parts)


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
