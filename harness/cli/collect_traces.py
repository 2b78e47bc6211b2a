"""``dynts-bench collect-traces``: generate traces and store the thinking tokens' final hidden states, the first
step of the predictor pipeline (collect-traces -> label -> train-predictor -> eval-predictor)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from backends.base import SamplingParams
from backends.hf.backend import TransformersBackend
from harness.cli.app import console
from harness.cli.predictor_inputs import checked_predictor_path, transformers_engine
from harness.cli.progress import progress_for
from harness.predictor_pipeline.traces import TraceStore, TraceStoreError, collect
from harness.runs.catalog import default_max_new_tokens, default_prompts
from harness.runs.config import file_sha256
from harness.workloads.prompt_file import load_prompts
from harness.workloads.replay_traces import load_trace_rows
from zoo.dynts import DynTS
from zoo.schedule import EvictionSchedule


def collect_traces(
    out: Path = typer.Option(..., help="Trace store directory (resumes if it exists)."),
    model: str = typer.Option("tiny-reasoner", help="Model whose traces (and hidden states) to collect."),
    prompts: Optional[Path] = typer.Option(None, help="JSONL of {id, prompt, answer}; default: the held-out set "
                                           "of the model's embedded task (use `make-task --split train` for "
                                           "training)."),
    limit: Optional[int] = typer.Option(None, min=1),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help="Generation limit (default 512; a tiny "
                                                 "reasoner's: one that covers its task's longest trace)."),
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
    path = prompts or default_prompts(model)
    max_new_tokens = max_new_tokens or default_max_new_tokens(model, 512)
    items = load_trace_rows(path, limit) if forced else load_prompts(path, limit)
    engine = transformers_engine(model, batch_size, device)
    store = TraceStore(out)
    meta = {"model": model, "hidden_size": engine.model.config.hidden_size, "source": path.name,
            "source_sha256": file_sha256(path), "max_new_tokens": max_new_tokens, "chat": chat,
            "forced": forced}
    policy = schedules = None
    if on_policy_budget:
        if forced:
            raise TraceStoreError("--on-policy-budget generates the model's own traces: drop --forced")
        policy, schedules, meta["on_policy"] = on_policy(engine, predictor, on_policy_budget, window, interval)
    store.open_for(meta)
    with progress_for(console, "traces") as progress:
        bar = progress.add_task("traces", total=len(items), completed=len(store.records()))
        report = collect(engine, items, store, SamplingParams(max_new_tokens), chat,
                         on_trace=lambda: progress.advance(bar), policy=policy, schedule=schedules)
    console.print(f"{report['traces']} traces in {out} ({report['correct']} correct, {report['new']} new)")


def on_policy(engine: TransformersBackend, predictor: Optional[Path], budgets: list[int], window: int,
              interval: int) -> tuple[DynTS, list[EvictionSchedule], dict[str, Any]]:
    """DynTS with its predictor, one schedule per budget (prompt i gets budget i mod n), and the store's record."""
    schedules = [EvictionSchedule(mode="budget", budget=b, interval=interval, window=window) for b in budgets]
    location = checked_predictor_path(predictor, engine)
    spread = (schedules[0].to_dict() if len(schedules) == 1  # one budget: the meta stores always had
              else {"schedules": [s.to_dict() for s in schedules], "assignment": "prompt i: i mod n"})
    return DynTS(predictor=str(location)), schedules, {"policy": "dynts", "predictor": str(location), **spread}
