"""Our backends + a policy as an lm-eval model: ``PolicyLM`` generates under the chosen policy, writes every
finished sample (output, extracted answer, correctness, tokens, KV bytes) to the run directory at once, and on a
rerun returns the saved outputs instead of generating them again. lm-eval builds the requests from the task YAMLs
(``lmeval_tasks``) and scores them with their ``process_results``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from lm_eval.api.model import LM

from backends.base import Backend, GenerationRequest, SamplingParams, SequenceResult
from harness.scoring.answers import GeneratedText, score
from zoo.base import Policy
from zoo.schedule import EvictionSchedule


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


class PolicyLM(LM):
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
