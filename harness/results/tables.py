"""The rich tables the commands print: run comparisons, sweeps, the gate, reports, listings.

Paths and user strings go in as ``rich.text.Text``, never as markup: a path like ``out[/x]`` prints as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from harness.results.lengths import length_ratio
from harness.results.summary import generated_by_sample


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


def length_vs_full_cell(reference: list[dict[str, Any]] | None, rows: list[dict[str, Any]]) -> str:
    """``1.08x [1.04, 1.12]`` (``harness.results.lengths``), or ``-`` without a full-cache run to pair with."""
    found = length_ratio(generated_by_sample(rows), generated_by_sample(reference)) if reference else None
    return found.label() if found else "-"


def _quality(m: dict[str, Any], k: int | None) -> list[str]:
    """Accuracy cells: plain accuracy for prompt files; Pass@1 with its CI, Pass@k and Maj@k for tasks."""
    if k is None:
        return [_fmt(m.get("accuracy"), ".1%")]
    lo, hi = m.get("pass@1_ci95") or (None, None)
    ci = f" [{lo:.0%}, {hi:.0%}]" if lo is not None else ""
    return [_fmt(m.get("pass@1"), ".1%") + ci, f"{_fmt(m.get(f'pass@{k}'), '.1%')} / {_fmt(m.get(f'maj@{k}'), '.1%')}"]


def _what_ran(outcomes: Mapping[str, Any]) -> str:
    """The table's title: model, workload and size, and the schedule of the evicting policies."""
    import json

    configs = [json.loads((o.run_dir.path / "config.json").read_text())["config"] for o in outcomes.values()]
    first = configs[0]
    n = max((o.summary.get("n_samples", 0) for o in outcomes.values()), default=0)
    workload = (first.get("extra") or {}).get("task") or first["prompts_name"]
    title = f"{first['model']} on {workload}, {n} samples"
    schedule = next((c["schedule"] for c in configs if c.get("schedule")), None)
    if schedule and schedule["mode"] == "budget":
        title += f"; budget {schedule['budget']} (+{schedule['interval']}), window {schedule['window']}"
    elif schedule:
        title += f"; trigger {schedule['trigger_len']}, ratio {schedule['ratio']}, window {schedule['window']}"
    return title


def comparison_table(outcomes: Mapping[str, Any]) -> Table:
    """One row per policy: accuracy, agreement with the full cache, speed, KV memory, compression work."""
    reference = outcomes["full"].run_dir.samples() if "full" in outcomes else None
    replay = any(m.summary.get("protocol") == "replay" for m in outcomes.values())
    table = Table(title=_what_ran(outcomes) + (" (trace replay)" if replay else ""))
    full_peak = outcomes["full"].summary.get("kv_peak_max_bytes") if "full" in outcomes else None
    k = next((m.summary.get("samples_per_problem") for m in outcomes.values() if "pass@1" in m.summary), None)
    fidelity = [("KL(full||p)", "right"), ("top-1 = full", "right"), ("critical kept", "right"),
                ("retrieval ok", "right")]
    for column, justify in (
        ("policy", "left"), ("n", "right"), ("accuracy" if k is None else "pass@1 [95% CI]", "right"),
        *([(f"pass@{k} / maj@{k}", "right")] if k is not None else []),
        *(fidelity if replay else [("= full", "right")]), ("gen tok", "right"), ("length vs full", "right"),
        ("decode tok/s", "right"), ("TTFT", "right"), ("peak KV", "right"), ("KV vs full", "right"),
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
            length_vs_full_cell(reference, outcome.run_dir.samples()),
            _fmt(m.get("decode_mean_tokens_per_s"), ".1f"),
            _fmt(m.get("ttft_mean_s"), ".3f", " s"),
            human_bytes(m.get("kv_peak_max_bytes")),
            _fmt(m["kv_peak_max_bytes"] / full_peak if full_peak and m.get("kv_peak_max_bytes") else None, ".2f", "x"),
            _fmt(m.get("mean_compressions"), ".1f"),
            _fmt(m.get("policy_overhead_pct"), ".1f", "%"),
        )
    first = (
        "KL / top-1: mean per-token KL(full || policy) and argmax agreement with the full cache on the forced "
        "trace; critical kept: stated results still cached when a later step reads them; retrieval ok: those "
        "reads predicted right. " if replay else
        "= full: share of the full-cache output reproduced before the first differing token (greedy). "
    )
    if "streamingllm" in outcomes and "window" in outcomes:
        first += ("streamingllm keeps what window keeps while its sinks lie inside the protected prompt "
                  "(--evict-prompt tells them apart). ")
    table.caption = (
        first +
        "length vs full: mean generated tokens over the full cache's on the same problems [95% CI]. "
        "peak KV: exact bytes of the largest cache a sequence held; KV vs full: that peak / the full cache's peak "
        "on the same problems (0.25x = 4x less memory). "
        "policy time: observe + score + select + evict, as % of decode time."
    )
    return table


# ---------------------------------------------------------------------------------------- command tables
def _plain(text: Any) -> Text:
    """Cell text printed as is: paths and user strings never go through rich markup."""
    return Text(str(text))


def tasks_table(tasks: Mapping[str, dict[str, Any]], data_dir: Path | None) -> Table:
    table = Table(title="Tasks")
    for col in ("name", "kind", "hub dataset", "local data", "yaml"):
        table.add_column(col)
    for name, info in tasks.items():
        if info["hub_path"] is None:
            hub = f"- (problems shipped with the package: {info.get('embedded_task') or 'sum'} task)"
        else:
            hub = info["hub_path"] + (f" ({info['hub_name']})" if info["hub_name"] else "")
        local = Text("-")
        if data_dir is not None:
            path = data_dir / f"{name}.jsonl"
            local = _plain(path) if path.is_file() else Text(f"missing {path.name}", style="yellow")
        table.add_row(name, info["kind"], hub, local, "shipped")
    return table


def sweep_table(name: str, rows: list[dict[str, Any]], labels: list[str]) -> Table:
    table = Table(title=f"sweep {name}: {len(rows)} cells")
    for col in ("cell", "quality", "peak KV", "run", "status"):
        table.add_column(col)
    for row, label in zip(rows, labels):
        quality = "-" if row["quality"] is None else f"{row['quality']:.1%}"
        table.add_row(label, quality, human_bytes(row["kv_peak_max_bytes"]), _plain(Path(row["run_dir"]).name),
                      "reused" if row["reused"] else "ran")
    return table


def _mmm(stats: dict[str, Any] | None, spec: str = ".3f") -> str:
    return "-" if not stats else f"{stats['min']:{spec}} / {stats['median']:{spec}} / {stats['max']:{spec}}"


def speed_table(name: str, probe: dict[str, Any]) -> Table:
    """The speed probe's figures, min / median / max over its interleaved rounds."""
    spec, share = probe["spec"], probe.get("cpu_share")
    title = (f"speed probe {name}: {spec['limit']} prompts x {spec['max_new_tokens']} tokens, {spec['rounds']} "
             f"interleaved rounds, {probe['clock']} time" + (f" (got {share:.0%} of a core)" if share else ""))
    table = Table(title=Text(title))
    for col in ("entry", "threads", f"{probe['clock']} ms/token", "vs reference", "vs full", "wall ms/token"):
        table.add_column(col)
    for key, e in probe["entries"].items():
        table.add_row(_plain(key.split(" | ", 2)[2]), str(e["threads"]), _mmm(e["ms_per_token"]),
                      _mmm(e["vs_reference"]), _mmm(e.get("vs_full")), _mmm(e["wall_ms_per_token"]))
    return table


VERDICTS = {"ok": Text("ok", style="green"), "FAIL": Text("FAIL", style="red"),
            "inconclusive": Text("inconclusive", style="yellow")}


def check_table(baseline_name: str, findings: list[Any]) -> Table:
    table = Table(title=f"check against {baseline_name}")
    for col in ("entry", "metric", "baseline", "current", "rule", "result"):
        table.add_column(col)
    for f in findings:
        result = VERDICTS["FAIL" if f.failed else "inconclusive" if f.inconclusive else "ok"]
        table.add_row(_plain(f.key), f.metric, _plain(f.baseline), _plain(f.current), _plain(f.detail), result)
    return table


def runs_table(records: list[Any], source: Path) -> Table:
    table = Table(title=Text(f"{len(records)} runs from {source}"))
    for col in ("model", "workload", "policy", "budget", "quality", "KV vs full", "length vs full", "speed vs full",
                "run"):
        table.add_column(col)
    for r in sorted(records, key=lambda r: (r.model, r.workload, r.budget_tokens or 0, -(r.quality or 0))):
        table.add_row(_plain(r.model), _plain(r.workload), r.policy, r.budget_label,
                      "-" if r.quality is None else f"{r.quality:.1%}",
                      "-" if r.kv_ratio_vs_full is None else f"{r.kv_ratio_vs_full:.2f}x",
                      r.length_vs_full.label() if r.length_vs_full else "-",
                      "-" if r.speed_ratio_vs_full is None else f"{r.speed_ratio_vs_full:.2f}x", _plain(r.run_id))
    return table


def policies_table(policies: Mapping[str, Any], describe: Any, options_of: Any, meaning_of: Any) -> Table:
    table = Table(title="Policies")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("needs")
    table.add_column("options")
    for name, cls in policies.items():
        meanings = meaning_of(cls)
        options = "\n".join(f"{k}={v}: {meanings.get(k) or '(undocumented)'}" for k, v in options_of(cls).items())
        needs = sorted(cls.needs) + ([cls.requires] if cls.requires else [])
        table.add_row(name, _plain(describe(cls)), ", ".join(needs) or "-", _plain(options or "-"))
    return table


def backends_table(entries: Any) -> Table:
    table = Table(title="Backends")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("status")
    for entry in entries:
        missing = entry.available()
        table.add_row(entry.name, entry.description,
                      Text("ready", style="green") if missing is None else Text(missing, style="yellow"))
    return table


def task_facts_table(count: int, out: Path, facts: dict[str, float]) -> Table:
    table = Table(title=Text(f"{count} problems -> {out}"))
    for column in ("median thinking tokens", "min / max", "critical (statements read later)", "work lines"):
        table.add_column(column, justify="right")
    table.add_row(f"{facts['median_thinking_tokens']:.0f}",
                  f"{facts['min_thinking_tokens']:.0f} / {facts['max_thinking_tokens']:.0f}",
                  f"{facts['critical_fraction']:.1%}", f"{facts['step_line_fraction']:.1%}")
    return table


def ranking_selection_table(report: dict[str, Any]) -> Table:
    """``select-ranking``: every (pool_next, recency) combination's metric per budget and its score, the chosen
    one marked (per budget, each budget's choice starred)."""
    metric = report["objective"]["metric"]
    spec = ".1%" if metric == "accuracy" else ".4f"
    prompts = report["prompts"]
    title = (f"DynTS ranking options for {report['predictor']} on {prompts['problems']} problems of "
             f"{prompts['name']} ({report['protocol']}, window {report['window']}); score: "
             f"{report['objective']['description']}")
    by_budget = report.get("by_budget", {})
    if by_budget:
        title += "; * each budget's own choice"
    table = Table(title=Text(title))
    for col in ("pool_next", "recency", *(f"{metric} @{b}" for b in report["budgets"]), "score", ""):
        table.add_column(col, justify="right" if col else "left")
    for row in report["rows"]:
        combo = (row["pool_next"], row["recency"])
        cells = [_fmt(c[metric], spec) + (" *" if _best_at(by_budget, c["budget"]) == combo else "")
                 for c in row["cells"]]
        mark = "chosen" if row["chosen"] else ""
        style = "bold" if row["chosen"] else None
        table.add_row(str(row["pool_next"]), f"{row['recency']:g}", *cells, _fmt(row["score"], spec), mark,
                      style=style)
    return table


def _best_at(by_budget: dict[str, dict[str, Any]], budget: int) -> tuple[int, float] | None:
    """The (pool_next, recency) chosen at ``budget`` alone, or None (not chosen per budget)."""
    best = by_budget.get(str(budget))
    return (best["pool_next"], best["recency"]) if best else None
