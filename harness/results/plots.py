"""PNG plots for the leaderboard (matplotlib, headless): every axis labelled with its unit."""

from __future__ import annotations

import json
from pathlib import Path

from harness.results.leaderboard import MIB, RunRecord


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another with less (or equal) memory and more (or equal) quality, by memory."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _by_policy(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.policy, []).append(r)
    return out


_MARKERS = ("o", "s", "^", "D", "v")


def _styles(policies: list[str]) -> dict[str, dict[str, object]]:
    """A distinct colour/marker pair per policy (ten colours, then the next marker): eleven and more
    policies stay apart, where matplotlib's default cycle would repeat its first colour."""
    colors = _pyplot().get_cmap("tab10").colors
    return {p: {"color": colors[i % 10], "marker": _MARKERS[(i // 10) % len(_MARKERS)]}
            for i, p in enumerate(sorted(policies))}


def _save(fig, ax, path: Path) -> Path:
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # never over the data
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _vs_budget(records: list[RunRecord], value, ylabel: str, title: str, path: Path) -> Path:
    """One line per policy of ``value(run)`` against the KV budget; the full cache as a dashed level."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    grouped = _by_policy(records)
    styles = _styles(list(grouped))
    for policy, runs in sorted(grouped.items()):
        if policy == "full":
            for r in runs:
                if value(r) is not None:
                    ax.axhline(value(r), color="black", linestyle="--", label="full cache")
            continue
        pts = sorted((r.budget_tokens, value(r)) for r in runs if value(r) is not None and r.budget_tokens)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=policy, **styles[policy])
    ax.set(xlabel="KV budget (tokens)", ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    return _save(fig, ax, path)


def accuracy_vs_budget(records: list[RunRecord], workload: str, path: Path) -> Path:
    return _vs_budget(records, lambda r: None if r.quality is None else 100 * r.quality,
                      "accuracy / Pass@1 (%)", f"accuracy vs KV budget\n{workload}", path)


def speed_vs_budget(records: list[RunRecord], workload: str, path: Path) -> Path:
    return _vs_budget(records, lambda r: r.tokens_per_s, "decode throughput (tokens/s per sequence)",
                      f"decode speed vs KV budget\n{workload}", path)


def accuracy_vs_memory(records: list[RunRecord], workload: str, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = []
    grouped = _by_policy(records)
    styles = _styles(list(grouped))
    for policy, runs in sorted(grouped.items()):
        pts = [(r.kv_peak_bytes / MIB, 100 * r.quality) for r in runs if r.quality is not None and r.kv_peak_bytes]
        points += pts
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=policy, c=[styles[policy]["color"]],
                       marker=styles[policy]["marker"])
    front = pareto_front(points)
    if front:
        ax.scatter([p[0] for p in front], [p[1] for p in front], s=180, facecolors="none", edgecolors="black",
                   label="Pareto front")
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linestyle="--",
                linewidth=1)
    ax.set(xlabel="peak KV memory per sequence (MiB)", ylabel="accuracy / Pass@1 (%)")
    ax.set_title(f"accuracy vs peak KV memory\n{workload}", fontsize=10)
    return _save(fig, ax, path)


def latency_vs_context(bench_json: Path, path: Path) -> Path:
    """From a ``dynts-bench bench --out`` file: per-step latency against context length, per policy."""
    rows = json.loads(bench_json.read_text())["rows"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = _styles(list({r["policy"] for r in rows}))
    for policy in sorted(styles):
        pts = sorted((r["context"], r["step_ms_median"]) for r in rows if r["policy"] == policy)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=policy, linestyle="--" if policy == "full" else "-",
                **styles[policy])
    ax.set(xlabel="context length (tokens)", ylabel="decode step latency (ms, median)",
           title=f"per-step latency vs context ({bench_json.stem})")
    return _save(fig, ax, path)


def plot_groups(records: list[RunRecord]) -> dict[tuple[str, str, int], list[RunRecord]]:
    """Runs that may share a plot: the same model, workload and size (problem count). A line never joins a
    100-problem point to a 200-problem one, as the leaderboard never ranks them together."""
    groups: dict[tuple[str, str, int], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.model, r.workload, r.n_samples), []).append(r)
    return dict(sorted(groups.items()))


def all_plots(records: list[RunRecord], bench_files: list[Path], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = []
    groups = plot_groups(records)
    for (model, workload, n), runs in groups.items():
        several_models = len({m for m, w, _ in groups if w == workload}) > 1
        title = f"{workload} ({n} samples{', ' + model if several_models else ''})"
        slug = "".join(c if c.isalnum() else "_" for c in f"{workload}-{n}" + (f"-{model}" if several_models else ""))
        made.append(accuracy_vs_budget(runs, title, out / f"{slug}-accuracy-vs-budget.png"))
        made.append(accuracy_vs_memory(runs, title, out / f"{slug}-accuracy-vs-kv-memory.png"))
        made.append(speed_vs_budget(runs, title, out / f"{slug}-speed-vs-budget.png"))
    for bench in bench_files:
        made.append(latency_vs_context(bench, out / f"{bench.stem}-latency-vs-context.png"))
    return made
