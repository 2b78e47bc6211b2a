"""``dynts-bench analyze``: answer attention on a trace store (``--mode attention``), or what a predictor keeps
against the oracle under a budget (``--mode eviction``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from harness.cli.app import console
from harness.cli.predictor_inputs import load_checked_predictor, transformers_engine, write_json_if_asked
from harness.cli.progress import progress_for
from harness.predictor_pipeline.evaluate import analyze as attention_analysis
from harness.predictor_pipeline.eviction import eviction_markdown, eviction_report, tiny_policies
from harness.predictor_pipeline.labels import methods_help
from harness.predictor_pipeline.traces import TraceStore, TraceStoreError
from harness.runs.catalog import MODEL_TASKS, default_prompts, shipped_predictor
from harness.workloads.prompt_file import load_prompts
from zoo.schedule import EvictionSchedule


def analyze(
    store_dir: Optional[Path] = typer.Argument(None, help="Labelled trace store (attention mode)."),
    mode: str = typer.Option("attention", help="attention: concentration + re-feeding on a trace store. "
                             "eviction: what dynts keeps vs the oracle under a budget, and why answers are lost "
                             "(tiny reasoner)."),
    predictor: Optional[Path] = typer.Option(None, help="Predictor (attention: also re-feed with its top tokens; "
                                             "eviction: the one analysed, default the shipped one)."),
    fraction: list[float] = typer.Option([0.1, 0.2, 0.3, 0.5], "--fraction", help="Kept fraction; repeatable."),
    label_method: str = typer.Option("attention", help=f"Labels to rank against: {methods_help()}."),
    limit: Optional[int] = typer.Option(None, min=1, help="Traces per part (correct / incorrect); eviction: "
                                        "prompts."),
    prompts: Optional[Path] = typer.Option(None, help="Eviction: JSONL of tiny-task problems (default held-out)."),
    budget: list[int] = typer.Option([72, 88, 128, 176], "--budget", help="Eviction: KV budget; repeatable."),
    window: int = typer.Option(32, help="Eviction: recent window (as dynts-bench run)."),
    interval: int = typer.Option(16, help="Eviction: compression interval (as dynts-bench run)."),
    policy: list[str] = typer.Option(["dynts", "dynts+names", "oracle", "oracle-names"], "--policy",
                                     help="Eviction: dynts, dynts+names (same scores, live result names kept), "
                                     "oracle, oracle-names (names evicted first); repeatable."),
    batch_size: int = typer.Option(50, min=1),
    json_out: Optional[Path] = typer.Option(None, "--json"),
    markdown: Optional[Path] = typer.Option(None, help="Eviction: also write the tables as markdown."),
    model: str = typer.Option("tiny-reasoner", help="Eviction: a tiny reasoner (tiny-reasoner, "
                              "tiny-reasoner-control; the sum task): the analysis counts its token roles."),
) -> None:
    """Attention mode: how concentrated answer attention is, and the keep-top / bottom / random re-feeding
    experiment. Eviction mode: what DynTS keeps vs the oracle, per budget, and why answers are lost."""
    if mode == "eviction":
        analyze_eviction(predictor, prompts, limit, budget, window, interval, policy,
                         batch_size, json_out, markdown, model)
        return
    if mode != "attention":
        raise TraceStoreError(f"unknown --mode {mode!r}: use attention or eviction")
    if store_dir is None:
        raise TraceStoreError("analyze --mode attention needs a labelled trace store: dynts-bench analyze DIR")
    analyze_attention(store_dir, predictor, label_method, fraction, limit, json_out)


def analyze_attention(store_dir: Path, predictor: Optional[Path], label_method: str, fraction: list[float],
                      limit: Optional[int], json_out: Optional[Path]) -> None:
    """How concentrated answer attention is, and whether re-feeding the top / bottom / random tokens keeps the
    answer."""
    store = TraceStore(store_dir)
    engine = transformers_engine(store.meta["model"])
    model = load_checked_predictor(predictor, engine) if predictor else None
    with progress_for(console, "traces") as progress:
        bar = progress.add_task("traces", total=None)
        report = attention_analysis(engine, store, label_method, fraction, model, limit,
                                    lambda: progress.advance(bar))
    table = Table(title=f"Importance concentration and re-feeding ({store_dir})")
    for column in ("traces", "tokens for 80% / 90% of answer attention", "kept", "same answer"):
        table.add_column(column)
    for part, data in report.items():
        mass = (f"{data['tokens_for_80pct_attention']:.1%} / {data['tokens_for_90pct_attention']:.1%}"
                if data.get("tokens_for_80pct_attention") is not None else "-")
        refeed = data.get("refeed_same_answer", {})
        table.add_row(f"{part}: {data['traces']}", mass, "\n".join(refeed),
                      "\n".join(f"{v:.1%}" for v in refeed.values()))
    console.print(table)
    write_json_if_asked(json_out, {"store": str(store_dir), "label_method": label_method, **report})


def analyze_eviction(predictor: Optional[Path], prompts: Optional[Path], limit: Optional[int],
                     budgets: list[int], window: int, interval: int, chosen: list[str], batch_size: int,
                     json_out: Optional[Path], markdown: Optional[Path], model: str = "tiny-reasoner") -> None:
    """What DynTS keeps against the oracle at each budget, and why answers are lost (tiny reasoners)."""
    for b in budgets:
        EvictionSchedule(mode="budget", budget=b, interval=interval, window=window)  # one-line error if bad
    sum_models = sorted(alias for alias, task in MODEL_TASKS.items() if task == "sum")
    if model not in sum_models:
        raise TraceStoreError(f"analyze --mode eviction reads the tiny-reasoner sum task's token roles, which "
                              f"{model!r} does not write: pass --model {' or '.join(sum_models)}")
    location = predictor or shipped_predictor(model)
    if location is None:
        raise TraceStoreError(f"no shipped {model} predictor: pass --predictor DIR")
    engine = transformers_engine(model, batch_size)
    load_checked_predictor(location, engine)  # refuses a predictor for another model
    items = load_prompts(prompts or default_prompts(model), limit)
    policies = tiny_policies({"dynts": str(location)}, oracle=True, interventions=True)
    unknown = [p for p in chosen if p not in policies]
    if unknown:
        raise TraceStoreError(f"unknown --policy {unknown[0]!r} for --mode eviction: choose from {', '.join(policies)}")
    policies = {name: policies[name] for name in chosen}

    def on_cell(name: str, b: int, cell: dict[str, Any]) -> None:
        console.log(f"{name} at budget {b}: accuracy {cell['accuracy']:.1%}, live names kept "
                    f"{cell['name']['live_survival']:.1%}, live values kept {cell['value']['live_survival']:.1%}")

    report = eviction_report(engine, items, policies, budgets, window, interval, on_cell=on_cell)
    report.update({"model": model, "predictor": str(location), "prompts": str(prompts or default_prompts(model)),
                   "problems": len(items), "window": window, "interval": interval})
    text = eviction_markdown(report)
    console.print(text)
    write_json_if_asked(json_out, report)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text)
