"""What ``dynts-bench run`` does, as functions a sweep can call too: validate options into a plan (no model
loaded yet, so option errors come first), then run the plan's policies, one run lifecycle each."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends import BACKENDS, Backend, BackendError
from backends.base import SamplingParams
from harness.runs.catalog import PREDICTOR, default_policies, shipped_predictor
from harness.runs.config import RunConfig
from harness.runs.fingerprints import model_fingerprint, predictor_fingerprint
from harness.runs.lifecycle import ActiveRun, RunOutcome
from harness.runs.options import RunOptions
from harness.workloads.interface import Workload
from harness.workloads.selection import build_workload
from zoo import build_policy, policy_options, registry
from zoo.base import Policy, PolicyError
from zoo.predictor import CONFIG
from zoo.schedule import EvictionSchedule, ScheduleError

#: ``on_start(policy, n_items)`` returns the per-sample progress callback of that policy's run
OnStart = Callable[[str, int], Callable[[], None]]


@dataclass
class RunPlan:
    options: RunOptions
    policies: dict[str, Policy]
    schedule: EvictionSchedule
    sampling: SamplingParams
    workload: Workload
    model_fingerprint: str

    def _extra(self) -> dict[str, Any]:
        """The workload's config extras, and the rank count when it is not 1 (so one-rank hashes stay as they were)."""
        extra = dict(self.workload.config_extra())
        if self.options.tensor_parallel > 1:
            extra["tensor_parallel"] = self.options.tensor_parallel
        return extra

    def config_for(self, name: str) -> RunConfig:
        o, policy = self.options, self.policies[name]
        artefacts = {"model": self.model_fingerprint}
        if policy.artefact():
            artefacts[policy.requires or "artefact"] = predictor_fingerprint(policy.artefact())
        return RunConfig(
            backend=o.backend, model=o.model, policy=name, policy_options=policy.options(),
            schedule=self.schedule if policy.evicts else None, sampling=self.sampling,
            prompts_name=self.workload.source_name, prompts_sha256=self.workload.source_hash, limit=o.limit,
            dtype=o.dtype, device=o.device, batch_size=o.batch_size, chat=o.chat,
            extra=self._extra(), artefacts=artefacts,
        )


def parse_policy_args(pairs: tuple[str, ...] | list[str], policies: list[str]) -> dict[str, dict[str, Any]]:
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


def _policy_names(o: RunOptions) -> list[str]:
    names: list[str] = list(dict.fromkeys(o.policy or default_policies(o.model)))
    known = registry()
    for name in names:
        if name not in known:
            raise PolicyError(f"unknown policy {name!r}: choose one of {', '.join(known)}")
    return names


def build_policies(o: RunOptions) -> dict[str, Policy]:
    """Fresh policy instances for the run; a policy that needs a predictor gets ``--predictor`` or the one the
    project ships for the model."""
    names = _policy_names(o)
    args = parse_policy_args(o.policy_arg, names)
    if o.predictor is not None:
        if "dynts" not in names:
            raise PolicyError("--predictor is for --policy dynts, which is not selected")
        args["dynts"]["predictor"] = str(o.predictor)
    built = {name: build_policy(name, **args[name]) for name in names}
    for name, policy in built.items():
        if policy.requires == PREDICTOR and policy.lacks_artefact():
            shipped = shipped_predictor(o.model)
            if shipped is None:
                raise PolicyError(f"{name} needs an importance predictor trained for {o.model}: pass --predictor DIR"
                                  " (a directory with predictor.json and model.safetensors)")
            policy.provide(str(shipped))
    return built


def build_schedule(o: RunOptions) -> EvictionSchedule:
    return EvictionSchedule(
        mode=o.mode, budget=o.budget, interval=o.interval, window=o.window,
        trigger_len=o.trigger_len, ratio=o.ratio, protect_prompt=not o.evict_prompt,
    )


def build_sampling(o: RunOptions) -> SamplingParams:
    try:
        return SamplingParams(o.max_tokens, o.temperature, o.top_p, o.top_k, o.seed, tuple(o.stop))
    except ValueError as exc:
        raise ScheduleError(str(exc)) from None


def check_binding(policies: dict[str, Policy], model: str, fingerprint: str) -> None:
    """A predictor that recorded the fingerprint of the model it was trained on (``extra.base_fingerprint``)
    serves only that model: the same name on other weights gives scores that are noise but look like a
    ranking."""
    for name, policy in policies.items():
        source = policy.artefact()
        if policy.requires != PREDICTOR or not source:
            continue
        try:
            bound = json.loads((Path(source) / CONFIG).read_text()).get("extra", {}).get("base_fingerprint")
        except (OSError, ValueError, AttributeError):
            continue  # unreadable configs were refused when the predictor loaded
        if bound and bound != fingerprint:
            raise PolicyError(f"{name}'s predictor {source} was trained on model weights {bound}, but {model} is "
                              f"{fingerprint}: use a predictor trained for these weights")


def prepare(o: RunOptions) -> RunPlan:
    """Validate ``run`` options into a plan; raises one-line user errors before any model is loaded."""
    o.check_device()
    policies = build_policies(o)
    if o.backend not in BACKENDS:
        raise BackendError(f"unknown backend {o.backend!r}: choose one of {', '.join(BACKENDS)}")
    schedule = build_schedule(o)
    sampling = build_sampling(o)
    workload = build_workload(o)
    capabilities = BACKENDS[o.backend].capabilities
    if capabilities is not None:  # known without building the engine: refuse before loading any model
        for policy in policies.values():
            capabilities.require(o.backend, policy, workload.protocol)
    fingerprint = model_fingerprint(o.model)
    check_binding(policies, o.model, fingerprint)
    return RunPlan(o, policies, schedule, sampling, workload, fingerprint)


def execute_plan(plan: RunPlan, backend: Backend, on_start: OnStart | None = None) -> dict[str, RunOutcome]:
    """Run every policy of the plan on ``backend``: capability and prompt checks first, then one run each."""
    workload = plan.workload
    for policy in plan.policies.values():
        backend.capabilities.require(backend.name, policy, workload.protocol)
    workload.check(backend, plan.policies, plan.schedule)
    for policy in plan.policies.values():  # a policy that cannot bind to the model fails before any run dir
        backend.prepare(policy)
    outcomes = {}
    for name, policy in plan.policies.items():
        advance = on_start(name, workload.n_items) if on_start else None
        with ActiveRun(plan.config_for(name), backend, policy, plan.options.out, plan.options.run_id,
                       plan.options.allow_stale) as run:
            if run.reused is None:
                workload.generate(run, backend, policy, advance)
        outcomes[name] = run.finish(workload.quality(run.rows()) if run.reused is None else {})
    return outcomes
