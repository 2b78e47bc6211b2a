"""The DynTS predictor pipeline's commands: collect-traces -> label -> train-predictor -> eval-predictor, and
analyze. Registered on the main ``dynts-bench`` app by ``harness.cli``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from backends.base import SamplingParams
from backends.hf.backend import TransformersBackend
from harness.cli.progress import progress_for
from harness.predictor_pipeline.evaluate import analyze as attention_analysis
from harness.predictor_pipeline.evaluate import evaluate
from harness.predictor_pipeline.eviction import eviction_markdown, eviction_report, tiny_policies
from harness.predictor_pipeline.fit import PRESETS, FitConfig, fit
from harness.predictor_pipeline.labels import label_store
from harness.predictor_pipeline.traces import TraceStore, TraceStoreError, collect
from harness.results.rundir import atomic_write_json
from harness.runs.catalog import TASK_VOCABULARY_MODELS, shipped_predictor
from harness.runs.config import file_sha256
from harness.workloads.prompt_file import default_prompts_path, load_prompts
from harness.workloads.replay_traces import load_trace_rows
from zoo.base import PolicyError
from zoo.dynts import DynTS
from zoo.predictor import ImportancePredictor
from zoo.schedule import EvictionSchedule


def _engine(model: str, batch_size: int = 8, device: str = "cpu"):
    return TransformersBackend(model, device=device, batch_size=batch_size)


def _write_json(path: Optional[Path], data: Any) -> None:
    if path is not None:
        atomic_write_json(path, data)


def register(app: typer.Typer, console: Console) -> None:
    """Add the pipeline's commands to ``app`` (whose error boundary turns user errors into one line)."""

    @app.command("collect-traces")
    def collect_traces(
        out: Path = typer.Option(..., help="Trace store directory (resumes if it exists)."),
        model: str = typer.Option("tiny-reasoner", help="Model whose traces (and hidden states) to collect."),
        prompts: Optional[Path] = typer.Option(None, help="JSONL of {id, prompt, answer}; default: the tiny "
                                               "reasoner's held-out set (use `make-task --split train` for training)."),
        limit: Optional[int] = typer.Option(None, min=1),
        max_new_tokens: int = typer.Option(512),
        batch_size: int = typer.Option(16),
        device: str = typer.Option("cpu"),
        chat: bool = typer.Option(True),
        forced: bool = typer.Option(False, help="Force the prompts' reference traces (tiny-reasoner task files) "
                                    "and let the model only answer: for models that do not think (SmolLM2)."),
        on_policy_budget: Optional[list[int]] = typer.Option(
            None, help="On-policy traces: generate under dynts (with --predictor) at this KV budget and store the "
            "hidden states it saw; repeat it to spread the prompts over several budgets (prompt i gets budget i mod "
            "n); default: the full cache."),
        predictor: Optional[Path] = typer.Option(None, help="On-policy: the predictor dynts runs with (default: "
                                                 "the model's shipped one)."),
        window: int = typer.Option(32, help="On-policy: recent window."),
        interval: int = typer.Option(16, help="On-policy: compression interval."),
    ) -> None:
        """Generate full-cache traces and store tokens + final hidden states of the thinking tokens."""

        path = prompts or default_prompts_path()
        items = load_trace_rows(path, limit) if forced else load_prompts(path, limit)
        engine = _engine(model, batch_size, device)
        store = TraceStore(out)
        meta = {"model": model, "hidden_size": engine.model.config.hidden_size, "source": path.name,
                "source_sha256": file_sha256(path), "max_new_tokens": max_new_tokens, "chat": chat,
                "forced": forced}
        policy = schedules = None
        if on_policy_budget:
            if forced:
                raise TraceStoreError("--on-policy-budget generates the model's own traces: drop --forced")
            schedules = [EvictionSchedule(mode="budget", budget=b, interval=interval, window=window)
                         for b in on_policy_budget]
            location = _load_predictor_path(predictor, engine)
            policy = DynTS(predictor=str(location))
            spread = (schedules[0].to_dict() if len(schedules) == 1  # one budget: the meta stores always had
                      else {"schedules": [s.to_dict() for s in schedules], "assignment": "prompt i: i mod n"})
            meta["on_policy"] = {"policy": "dynts", "predictor": str(location), **spread}
        store.open_for(meta)
        with progress_for(console, "traces") as progress:
            bar = progress.add_task("traces", total=len(items), completed=len(store.records()))
            report = collect(engine, items, store, SamplingParams(max_new_tokens), chat,
                             on_trace=lambda: progress.advance(bar), policy=policy, schedule=schedules)
        console.print(f"{report['traces']} traces in {out} ({report['correct']} correct, {report['new']} new)")

    @app.command()
    def label(
        store_dir: Path = typer.Argument(..., help="Trace store (from collect-traces)."),
        method: list[str] = typer.Option(["attention", "gradient"], "--method",
                                         help="attention (the paper's), gradient and/or lookback; repeatable."),
        device: str = typer.Option("cpu"),
    ) -> None:
        """Label each thinking token by how much the answer uses it; with both methods, report their agreement."""

        store = TraceStore(store_dir)
        engine = _engine(store.meta["model"], device=device)
        with progress_for(console, "labels") as progress:
            bar = progress.add_task("labels", total=len(store.records()))
            report = label_store(engine, store, method, on_trace=lambda: progress.advance(bar))
        agree = "; ".join(f"Spearman {pair} {rho:.3f}" for pair, rho in report["spearman_between_methods"].items()
                          if rho is not None)
        console.print(f"labelled {report['labelled']} traces with {', '.join(method)}" + (f"; {agree}" if agree
                                                                                           else ""))

    @app.command("train-predictor")
    def train_predictor(
        store_dir: list[Path] = typer.Argument(..., help="Labelled trace store(s); several (e.g. on-policy "
                                               "rounds) are trained on together."),
        out: Path = typer.Option(..., help="Predictor directory to write."),
        label_method: str = typer.Option("attention", help="attention (the paper's answer attention), copy, "
                                         "later, lookback or gradient: labels made by `dynts-bench label`."),
        transform: str = typer.Option("power", help="none | power ((x^0.3/0.3)*10) | scale (x*1e4) | rank."),
        pool: str = typer.Option("none", help="Spread labels to neighbours first: none | prev (a token also gets "
                                 "its successor's label) | max3 (max over a 3-token kernel, as SnapKV pools)."),
        layer_sizes: Optional[str] = typer.Option(None, help="Hidden widths, e.g. 256,64 (default 2h,h/2)."),
        preset: Optional[str] = typer.Option(None, help="'paper': 8192,2048 (the reference head for 7-8B)."),
        epochs: int = typer.Option(15),
        lr: float = typer.Option(5e-4),
        rank_weight: float = typer.Option(1.0, help="Weight of the pairwise ranking loss (0 = MSE only)."),
        mse_weight: float = typer.Option(1.0, help="Weight of the MSE loss (0 = ranking only)."),
        val_fraction: float = typer.Option(0.1),
        seed: int = typer.Option(0),
        include_incorrect: bool = typer.Option(False, help="Train on incorrect traces too (default: correct only)."),
        pool_next: int = typer.Option(0, min=0, help="DynTS ranking stored with the head: a token's score is at "
                                      "least its next N tokens' (0: the paper's)."),
        recency: float = typer.Option(0.0, min=0.0, help="DynTS ranking stored with the head: add R x the median "
                                      "score x age rank, so unflagged tokens go oldest first (0: the paper's)."),
    ) -> None:
        """Train the importance head on the frozen model's hidden states; early stopping on held-out tau."""

        if preset is not None and preset not in PRESETS:
            raise TraceStoreError(f"unknown --preset {preset!r}: choose from {', '.join(PRESETS)}")
        try:
            sizes = [int(x) for x in layer_sizes.split(",")] if layer_sizes else None
        except ValueError:
            raise TraceStoreError(f"--layer-sizes {layer_sizes!r}: give widths such as 256,64") from None
        if preset:
            sizes = PRESETS[preset]
        if rank_weight < 0 or mse_weight < 0 or rank_weight + mse_weight == 0:
            raise TraceStoreError(f"--rank-weight {rank_weight} and --mse-weight {mse_weight}: both must be >= 0 "
                                  "and one > 0")
        cfg = FitConfig(label_method=label_method, transform=transform, pool=pool, layer_sizes=sizes,
                        epochs=epochs, lr=lr, rank_weight=rank_weight, mse_weight=mse_weight,
                        val_fraction=val_fraction, seed=seed,
                        correct_only=not include_incorrect,
                        selection={k: v for k, v in (("pool_next", pool_next), ("recency", recency)) if v})
        with progress_for(console, "epochs") as progress:
            bar = progress.add_task("epochs", total=epochs)

            def on_epoch(epoch: int, row: dict[str, float]) -> None:
                progress.update(bar, completed=epoch)
                progress.console.log(f"epoch {epoch}: loss {row['train_loss']:.4f}, held-out tau "
                                     f"{row['kendall_tau']:.3f}, top-20% recall@20 {row['top20_recall@20']:.3f}")

            report = fit([TraceStore(d) for d in store_dir], out, cfg, on_epoch)
        console.print(f"predictor -> {out} (best epoch {report['best_epoch']}, held-out tau "
                      f"{report['validation']['kendall_tau']:.3f})")

    @app.command("eval-predictor")
    def eval_predictor(
        store_dir: Path = typer.Argument(..., help="Held-out labelled trace store."),
        predictor: Optional[Path] = typer.Option(None, help="Predictor directory (default: the model's shipped one)."),
        label_method: str = typer.Option("attention"),
        limit: Optional[int] = typer.Option(None, min=1),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON."),
        include_incorrect: bool = typer.Option(False, help="Evaluate on incorrect traces too."),
    ) -> None:
        """Kendall tau, Spearman and top-20% recall of the predictor and of every baseline ranker."""

        store = TraceStore(store_dir)
        engine = _engine(store.meta["model"])
        model = _load_predictor(predictor, engine)
        with progress_for(console, "traces") as progress:
            bar = progress.add_task("traces", total=None)
            result = evaluate(engine, store, model, label_method, limit, lambda: progress.advance(bar),
                              correct_only=not include_incorrect)
        table = Table(title=f"Ranking the thinking tokens of {store_dir} ({label_method} labels)")
        columns = list(next(iter(result.values())))
        table.add_column("ranker")
        for column in columns:
            table.add_column(column, justify="right")
        for name, metrics in sorted(result.items(), key=lambda kv: -kv[1]["kendall_tau"]):
            table.add_row(name, *(f"{metrics.get(c, float('nan')):.3f}" for c in columns))
        console.print(table)
        _write_json(json_out, {"store": str(store_dir), "label_method": label_method,
                               "predictor": str(predictor) if predictor else "shipped", "rankers": result})

    @app.command()
    def analyze(
        store_dir: Optional[Path] = typer.Argument(None, help="Labelled trace store (attention mode)."),
        mode: str = typer.Option("attention", help="attention: concentration + re-feeding on a trace store. "
                                 "eviction: what dynts keeps vs the oracle under a budget, and why answers are lost "
                                 "(tiny reasoner)."),
        predictor: Optional[Path] = typer.Option(None, help="Predictor (attention: also re-feed with its top tokens; "
                                                 "eviction: the one analysed, default the shipped one)."),
        fraction: list[float] = typer.Option([0.1, 0.2, 0.3, 0.5], "--fraction", help="Kept fraction; repeatable."),
        label_method: str = typer.Option("attention"),
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
                                  "tiny-reasoner-control): the analysis counts its task's token roles."),
    ) -> None:
        """Attention mode: how concentrated answer attention is, and the keep-top / bottom / random re-feeding
        experiment. Eviction mode: what DynTS keeps vs the oracle, per budget, and why answers are lost."""

        if mode == "eviction":
            _analyze_eviction(console, predictor, prompts, limit, budget, window, interval, policy,
                              batch_size, json_out, markdown, model)
            return
        if mode != "attention":
            raise TraceStoreError(f"unknown --mode {mode!r}: use attention or eviction")
        if store_dir is None:
            raise TraceStoreError("analyze --mode attention needs a labelled trace store: dynts-bench analyze DIR")
        store = TraceStore(store_dir)
        engine = _engine(store.meta["model"])
        model = _load_predictor(predictor, engine) if predictor else None
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
        _write_json(json_out, {"store": str(store_dir), "label_method": label_method, **report})


def _analyze_eviction(console: Console, predictor: Optional[Path], prompts: Optional[Path], limit: Optional[int],
                      budgets: list[int], window: int, interval: int, chosen: list[str], batch_size: int,
                      json_out: Optional[Path], markdown: Optional[Path], model: str = "tiny-reasoner") -> None:
    for b in budgets:
        EvictionSchedule(mode="budget", budget=b, interval=interval, window=window)  # one-line error if bad
    if model not in TASK_VOCABULARY_MODELS:
        raise TraceStoreError(f"analyze --mode eviction reads the tiny-reasoner task's token roles, which {model!r} "
                              f"does not write: pass --model {' or '.join(sorted(TASK_VOCABULARY_MODELS))}")
    location = predictor or shipped_predictor(model)
    if location is None:
        raise TraceStoreError(f"no shipped {model} predictor: pass --predictor DIR")
    engine = _engine(model, batch_size)
    _load_predictor(location, engine)  # refuses a predictor for another model
    items = load_prompts(prompts or default_prompts_path(), limit)
    policies = tiny_policies({"dynts": str(location)}, oracle=True, interventions=True)
    unknown = [p for p in chosen if p not in policies]
    if unknown:
        raise TraceStoreError(f"unknown --policy {unknown[0]!r} for --mode eviction: choose from {', '.join(policies)}")
    policies = {name: policies[name] for name in chosen}

    def on_cell(name: str, b: int, cell: dict[str, Any]) -> None:
        console.log(f"{name} at budget {b}: accuracy {cell['accuracy']:.1%}, live names kept "
                    f"{cell['name']['live_survival']:.1%}, live values kept {cell['value']['live_survival']:.1%}")

    report = eviction_report(engine, items, policies, budgets, window, interval, on_cell=on_cell)
    report.update({"model": model, "predictor": str(location), "prompts": str(prompts or default_prompts_path()),
                   "problems": len(items), "window": window, "interval": interval})
    text = eviction_markdown(report)
    console.print(text)
    _write_json(json_out, report)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text)


def _load_predictor_path(path: Optional[Path], engine: TransformersBackend) -> Path:
    """The predictor directory to use (the given one or the model's shipped one), checked against the model."""
    location = path or shipped_predictor(engine.model_info().model_id)
    if location is None:
        raise PolicyError(f"no predictor shipped for {engine.model_info().model_id}: pass --predictor DIR")
    _load_predictor(location, engine)
    return Path(location)


def _load_predictor(path: Optional[Path], engine: TransformersBackend):
    info = engine.model_info()
    location = path or shipped_predictor(info.model_id)
    if location is None:
        raise PolicyError(f"no predictor shipped for {info.model_id}: pass --predictor DIR")
    predictor = ImportancePredictor.load(location)
    predictor.check_model(info)
    return predictor
