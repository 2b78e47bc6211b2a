"""lm-evaluation-harness integration: our backends + a policy as a registered lm-eval model.

lm-eval builds the requests from the task YAMLs in ``harness/tasks`` and scores them with their
``process_results``; ``DyntsLM`` generates under the chosen policy, writes every finished sample (output,
extracted answer, correctness, tokens, KV bytes) to the run directory at once, and on a rerun returns the
saved outputs instead of generating them again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from backends.base import Backend, GenerationRequest, SamplingParams, SequenceResult
from harness.answers import GeneratedText, score
from harness.prompts import DataError, TaskError
from zoo.base import Policy
from zoo.schedule import EvictionSchedule

TASKS_DIR = Path(__file__).parent / "tasks"


class NotSupportedError(NotImplementedError):
    """A request type that generation-only benchmarks never make."""


def sampling_from(gen_kwargs: dict[str, Any], default: SamplingParams) -> SamplingParams:
    """lm-eval ``gen_kwargs`` (until, max_gen_toks, temperature, top_p, top_k, do_sample, seed) as our params."""
    until = gen_kwargs.get("until", list(default.stop))
    until = [until] if isinstance(until, str) else list(until or [])
    do_sample = bool(gen_kwargs.get("do_sample", default.temperature > 0))
    temperature = float(gen_kwargs.get("temperature", default.temperature or 1.0)) if do_sample else 0.0
    return SamplingParams(
        max_new_tokens=int(gen_kwargs.get("max_gen_toks", default.max_new_tokens)),
        temperature=temperature,
        top_p=float(gen_kwargs.get("top_p", default.top_p)),
        top_k=int(gen_kwargs.get("top_k", default.top_k)),
        seed=int(gen_kwargs.get("seed", default.seed)),
        stop=tuple(until),
    )


@register_model("dynts-bench")
class DyntsLM(LM):
    """A backend + policy + schedule as an lm-eval model. ``done`` maps sample ids to rows saved earlier."""

    def __init__(
        self,
        backend: Backend,
        policy: Policy,
        schedule: EvictionSchedule | None,
        sampling: SamplingParams,
        task_kinds: dict[str, str],
        seed_of: Callable[[str], int],
        done: dict[str, dict[str, Any]] | None = None,
        on_sample: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.policy = policy
        self.schedule = schedule
        self.sampling = sampling
        self.task_kinds = task_kinds
        self.seed_of = seed_of
        self.done = dict(done or {})
        self.on_sample = on_sample

    # ------------------------------------------------------------------ built by lm-eval's own CLI
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> DyntsLM:
        """``--model_args model=tiny-reasoner,policy=window,budget=96``: any ``dynts-bench run`` option."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> DyntsLM:
        """Options come from ``--model_args`` only: lm-eval's own ``--batch_size`` / ``--device`` defaults (1,
        cuda) would silently override ours, so pass ``batch_size=`` and ``device=`` there."""
        from harness.options import RunOptions

        return cls.from_options(RunOptions.from_mapping(arg_dict, where="--model_args"))

    @classmethod
    def from_options(cls, options: Any) -> DyntsLM:
        """A backend and one policy built from ``RunOptions``; every shipped task scored by its own kind."""
        from backends import build_backend
        from harness.runplan import build_policies, build_sampling, build_schedule
        from harness.workloads import request_seed

        policies = build_policies(options)
        if len(policies) != 1:
            raise TaskError(f"--model_args names {len(policies)} policies: lm-eval runs one, pass policy=NAME")
        ((_, policy),) = policies.items()
        schedule = build_schedule(options)
        backend = build_backend(options.backend, **options.backend_kwargs())
        backend.prepare(policy)
        kinds = {name: info["kind"] for name, info in shipped_tasks().items()}
        return cls(backend, policy, schedule if policy.evicts else None, build_sampling(options), kinds,
                   seed_of=lambda sample_id: request_seed(options.seed, sample_id))

    # ------------------------------------------------------------------ lm-eval interface
    def loglikelihood(self, requests):
        raise NotSupportedError("dynts-bench models generate only: loglikelihood tasks are not supported")

    def loglikelihood_rolling(self, requests):
        raise NotSupportedError("dynts-bench models generate only: perplexity tasks are not supported")

    @property
    def tokenizer_name(self) -> str:
        return self.backend.model_info().model_id.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.backend.chat_template()

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.backend.render_chat(chat_history, add_generation_prompt=add_generation_prompt)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """One string per request entry; a request repeated K times (``repeats``) gives K samples."""
        seen: Counter = Counter()
        ids: list[str] = []
        for inst in requests:
            doc_key = str(inst.doc.get("id", inst.doc_id))
            repeat = seen[(inst.task_name, doc_key)]
            seen[(inst.task_name, doc_key)] += 1
            ids.append(f"{inst.task_name}/{doc_key}/{repeat}")
        todo: dict[tuple, list[tuple[str, Any]]] = {}
        for sample_id, inst in zip(ids, requests):
            if sample_id not in self.done:
                context, gen_kwargs = inst.args
                key = tuple(sorted((k, str(v)) for k, v in gen_kwargs.items()))
                todo.setdefault(key, []).append((sample_id, inst))
        for group in todo.values():
            self._generate(group)
        return [GeneratedText.of(self.done[sid]["text"], self.done[sid].get("finish_reason")) for sid in ids]

    # ------------------------------------------------------------------ generation
    def _generate(self, group: list[tuple[str, Any]]) -> None:
        sampling = sampling_from(group[0][1].args[1], self.sampling)
        by_id = dict(group)
        requests = [
            GenerationRequest(sid, self.backend.encode(inst.args[0]), self.seed_of(sid))
            for sid, inst in group
        ]

        def record(results: list[SequenceResult]) -> None:
            for result in results:
                inst = by_id[result.request_id]
                kind = self.task_kinds.get(inst.task_name, "math")
                scored = score(kind, str(inst.doc["answer"]), GeneratedText.of(result.text, result.finish_reason))
                task, doc_key, repeat = result.request_id.rsplit("/", 2)
                row = {"sample_id": result.request_id, "task": task, "doc_id": doc_key, "repeat": int(repeat),
                       "seed": self.seed_of(result.request_id), "gold": inst.doc["answer"], **scored.to_dict()}
                row.update(result.to_dict())
                row["truncated"] = result.finish_reason == "length"  # counted wrong by ``score``
                self.done[result.request_id] = row
                if self.on_sample is not None:
                    self.on_sample(row)

        self.backend.generate(requests, self.policy, self.schedule, sampling, on_batch=record)


def _manager():
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its per-task notices are not for our users
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


def task_names() -> list[str]:
    """The shipped tasks' names, read from their YAML files' ``task:`` lines (no lm-eval import: for help text)."""
    import re

    found = (re.search(r"^task:\s*(\S+)", path.read_text(), re.MULTILINE) for path in TASKS_DIR.glob("*.yaml"))
    return sorted(m.group(1) for m in found if m)


def shipped_tasks() -> dict[str, dict[str, Any]]:
    """The project's task YAMLs: name -> {kind, hub_path, hub_name, yaml}."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out = {}
    for name, entry in sorted(_manager().task_index.items()):
        cfg = load_yaml(entry.yaml_path, resolve_func=False)
        kwargs = cfg.get("dataset_kwargs", {})
        out[name] = {"kind": kwargs.get("kind", "math"), "hub_path": kwargs.get("hub_path"),
                     "hub_name": kwargs.get("hub_name"), "yaml": str(entry.yaml_path)}
    return out


def build_task(name: str, data_dir: Path | None, samples: int) -> tuple[Any, str]:
    """The lm-eval task ``name`` with ``samples`` responses per problem, reading ``data_dir`` when given."""
    from lm_eval.tasks._yaml_loader import load_yaml

    manager = _manager()
    if name not in manager.task_index:
        raise TaskError(f"unknown task {name!r}: choose one of {', '.join(sorted(manager.task_index))}")
    if samples < 1:
        raise TaskError(f"--samples must be >= 1, got {samples}")
    cfg = load_yaml(manager.task_index[name].yaml_path, resolve_func=True)
    kwargs = dict(cfg.get("dataset_kwargs", {}))
    if data_dir is not None:
        kwargs["data_dir"] = str(data_dir)
    cfg.update(
        repeats=samples,
        filter_list=[{"name": "all_samples", "filter": [{"function": "take_first_k", "k": samples}]}],
        dataset_kwargs=kwargs,
    )
    try:
        task = manager.load([cfg])["tasks"][name]
    except DataError as exc:
        raise TaskError(str(exc)) from None
    return task, kwargs.get("kind", "math")


if __name__ == "__main__":  # lm-eval's own CLI with our model registered: python -m harness.lmeval run ...
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
