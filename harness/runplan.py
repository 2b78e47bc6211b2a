"""What ``dynts-bench run`` does, as functions a sweep can call too: validate options into a plan (no model
loaded yet, so option errors come first), then execute the plan's policies on a backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends import BACKENDS, BackendError
from backends.base import GenerationRequest, SamplingParams, check_schedules
from harness.config import RunConfig, file_sha256
from harness.prompts import PromptFileError, PromptItem, default_prompts_path, load_prompts
from harness.replay import ReferenceCache, ReplayItem, TraceRow, build_items, execute_replay, load_trace_rows
from harness.results import ResultsError
from harness.runner import RunOutcome, execute, execute_task
from zoo import build_policy, policy_options, registry
from zoo.base import Policy, PolicyError
from zoo.predictor import shipped_predictor
from zoo.schedule import EvictionSchedule, ScheduleError

#: every policy that needs no extra files and runs on any model
BASELINES = ["full", "window", "streamingllm", "sepllm", "h2o", "snapkv", "tova", "rkv", "random"]


def default_policies(model: str) -> list[str]:
    """The default comparison: the baselines, plus the oracle and DynTS with its shipped predictor on the
    tiny reasoner (the only model they come ready for)."""
    from backends.hf.loading import TINY_REASONER_ALIAS

    if model != TINY_REASONER_ALIAS:
        return list(BASELINES)
    return [*BASELINES, *(["dynts"] if shipped_predictor(model) else []), "oracle"]


@dataclass
class RunPlan:
    options: dict[str, Any]
    policies: dict[str, Policy]
    schedule: EvictionSchedule
    sampling: SamplingParams
    task: Any  # an lm-eval task, or None for a prompt file
    kind: str | None
    items: list[PromptItem]
    n_items: int  # samples each policy produces
    source_name: str
    source_hash: str
    trace_rows: list[TraceRow] | None = None  # --protocol replay: problems with their reference traces


def parse_policy_args(pairs: list[str], policies: list[str]) -> dict[str, dict[str, Any]]:
    """``key=value`` applies to every chosen policy having that option; ``policy.key=value`` to one."""
    per_policy: dict[str, dict[str, Any]] = {name: {} for name in policies}
    known = registry()
    for pair in pairs:
        if "=" not in pair:
            raise PolicyError(f"--policy-arg {pair!r} must look like key=value or policy.key=value")
        key, value = pair.split("=", 1)
        target, _, option = key.rpartition(".")
        names = [target] if target else [n for n in policies if n in known and option in policy_options(known[n])]
        if target and target not in per_policy:
            raise PolicyError(f"--policy-arg {pair!r} names policy {target!r}, which is not in --policy")
        if not names:
            raise PolicyError(f"--policy-arg {pair!r}: none of the chosen policies has an option {option!r}")
        for name in names:
            per_policy[name][option] = value
    return per_policy


def prepare(o: dict[str, Any]) -> RunPlan:
    """Validate ``run`` options (as the CLI names them) into a plan; raises one-line user errors."""
    if o["task"] is not None and o["prompts"] is not None:
        raise PromptFileError("--task and --prompts are alternatives: pass one of them")
    if o["data_dir"] is not None and o["task"] is None:
        raise PromptFileError("--data-dir is for --task: pass the task whose data it holds")
    policies: list[str] = list(dict.fromkeys(o["policy"] or default_policies(o["model"])))
    if o["run_id"] and len(policies) > 1:
        raise ResultsError("--run-id names one directory: use it with a single --policy")
    known = registry()
    for name in policies:
        if name not in known:
            raise PolicyError(f"unknown policy {name!r}: choose one of {', '.join(known)}")
    args = parse_policy_args(o["policy_arg"], policies)
    if o["predictor"] is not None:
        if "dynts" not in policies:
            raise PolicyError("--predictor is for --policy dynts, which is not selected")
        args["dynts"]["predictor"] = str(o["predictor"])
    if "dynts" in policies and "predictor" not in args["dynts"] and shipped_predictor(o["model"]) is None:
        raise PolicyError(f"dynts needs an importance predictor trained for {o['model']}: pass --predictor DIR "
                          "(a directory with predictor.json and model.safetensors)")
    if o["backend"] not in BACKENDS:
        raise BackendError(f"unknown backend {o['backend']!r}: choose one of {', '.join(BACKENDS)}")
    schedule = EvictionSchedule(
        mode=o["mode"], budget=o["budget"], interval=o["interval"], window=o["window"],
        trigger_len=o["trigger_len"], ratio=o["ratio"], protect_prompt=not o["evict_prompt"],
    )
    try:
        sampling = SamplingParams(
            o["max_new_tokens"] or 512, o["temperature"], o["top_p"], o["top_k"], o["seed"], tuple(o["stop"])
        )
    except ValueError as exc:
        raise ScheduleError(str(exc)) from None
    built = {name: build_policy(name, **args[name]) for name in policies}
    task = kind = None
    items: list[PromptItem] = []
    trace_rows = None
    if o["protocol"] not in ("generate", "replay"):
        raise PromptFileError(f"unknown --protocol {o['protocol']!r}: use generate or replay")
    if o["protocol"] == "replay":
        if o["task"] is not None:
            raise PromptFileError("--protocol replay forces tiny-reasoner traces: use --prompts FILE, not --task")
        prompts_path = Path(o["prompts"]) if o["prompts"] else default_prompts_path()
        trace_rows = load_trace_rows(prompts_path, o["limit"])
        n_items, source_name, source_hash = len(trace_rows), prompts_path.name, file_sha256(prompts_path)
    elif o["task"] is not None:
        from harness.lmeval import build_task, shipped_tasks

        task, kind = build_task(o["task"], o["data_dir"], o["samples"])
        n_items = min(len(list(task.test_docs())), o["limit"] or 10**9) * o["samples"]
        info = shipped_tasks()[o["task"]]
        if o["data_dir"] is not None:
            source_hash = file_sha256(Path(o["data_dir"]) / f"{o['task']}.jsonl")
        elif info["hub_path"] is None:  # data shipped with the package
            source_hash = file_sha256(default_prompts_path())
        else:
            source_hash = f"hub:{info['hub_path']}:{info['hub_name'] or ''}"
        source_name = o["task"]
    else:
        prompts_path = Path(o["prompts"]) if o["prompts"] else default_prompts_path()
        items = load_prompts(prompts_path, o["limit"])
        n_items, source_name, source_hash = len(items), prompts_path.name, file_sha256(prompts_path)
    return RunPlan(o, built, schedule, sampling, task, kind, items, n_items, source_name, source_hash, trace_rows)


def _task_extra(o: dict[str, Any], kind: str | None) -> dict[str, Any]:
    """Task settings recorded in the config; CLI sampling options override the task YAML's gen_kwargs."""
    gen_kwargs: dict[str, Any] = {"max_gen_toks": o["max_new_tokens"]}
    if o["temperature"] > 0:
        gen_kwargs.update(do_sample=True, temperature=o["temperature"], top_p=o["top_p"], top_k=o["top_k"])
    if o["stop"]:
        gen_kwargs["until"] = list(o["stop"])
    return {"task": o["task"], "task_kind": kind, "samples": o["samples"], "gen_kwargs": gen_kwargs,
            "data_dir": str(o["data_dir"]) if o["data_dir"] else None}


def config_for(plan: RunPlan, name: str) -> RunConfig:
    o, policy = plan.options, plan.policies[name]
    return RunConfig(
        backend=o["backend"], model=o["model"], policy=name, policy_options=policy.options(),
        schedule=plan.schedule if policy.evicts else None, sampling=plan.sampling,
        prompts_name=plan.source_name, prompts_sha256=plan.source_hash, limit=o["limit"], dtype=o["dtype"],
        device=o["device"], batch_size=o["batch_size"], chat=o["chat"],
        extra=_task_extra(o, plan.kind) if plan.task is not None else (
            {"protocol": "replay"} if plan.trace_rows is not None else {}),
    )


def check_prompts(plan: RunPlan, engine: Any, replay_items: Sequence[ReplayItem]) -> None:
    """Every prompt (replay: every built item) against every evicting policy's schedule, before any generation."""
    if plan.trace_rows is not None:
        encoded = [GenerationRequest(i.id, i.prompt_ids) for i in replay_items]
    elif plan.task is None:
        encoded = [GenerationRequest(i.id, engine.encode_prompt(i.prompt, chat=plan.options["chat"]))
                   for i in plan.items]
    else:
        return  # lm-eval builds the task's prompts; the backend checks them before generating
    for policy in plan.policies.values():
        check_schedules(encoded, policy, plan.schedule)


def execute_plan(
    plan: RunPlan,
    engine: Any,
    on_start: Callable[[str, int], Callable[[], None]] | None = None,
) -> dict[str, RunOutcome]:
    """Run every policy of the plan; ``on_start(policy, n_items)`` returns a per-sample progress callback."""
    o = plan.options
    replay_items = build_items(engine, plan.trace_rows, o["chat"]) if plan.trace_rows is not None else []
    check_prompts(plan, engine, replay_items)
    outcomes = {}
    references = ReferenceCache()
    for name, policy in plan.policies.items():
        config = config_for(plan, name)
        advance = on_start(name, plan.n_items) if on_start else None
        if plan.trace_rows is not None:
            outcomes[name] = execute_replay(config, engine, policy, replay_items, Path(o["out"]), references,
                                            o["run_id"], advance)
        elif plan.task is not None:
            outcomes[name] = execute_task(config, engine, policy, plan.task, o["samples"], Path(o["out"]),
                                          o["run_id"], advance)
        else:
            outcomes[name] = execute(config, engine, policy, plan.items, Path(o["out"]), o["run_id"], advance)
    return outcomes
