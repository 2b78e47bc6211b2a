"""Reasoning traces for the DynTS predictor: tokens and final-layer hidden states, stored compactly.

A *trace store* is a directory::

    meta.json            model id, hidden size, source file and its hash, sampling
    index.jsonl          one line per trace: id, shard, correct, prompt_len, think_end, length, answer, extracted
    shards/NNNNN.safetensors   per trace: ``<id>/tokens`` (int64 [T]) and ``<id>/hidden`` (float16 [n_think, H])

Hidden states are kept for the thinking tokens only (positions ``prompt_len .. think_end - 1``): the predictor
is trained and evaluated there, and they are what dominates the size (a 7B model: 7 KiB per token). A shard is
written atomically before its index lines are appended, so an interrupted collection resumes from the index
without duplicates; a partial last index line (an append cut short) is ignored and repaired by the next append.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from backends.base import GenerationRequest, SamplingParams
from backends.hf.backend import TransformersBackend
from harness.results.rundir import atomic_write_json
from harness.scoring.answers import final_answer, is_correct
from harness.workloads.prompt_file import PromptItem
from harness.workloads.replay_traces import ANSWER_TOKENS, TraceRow, answer_after, build_items
from zoo.base import Policy, StepObservation
from zoo.errors import UserError
from zoo.full import FullCache
from zoo.schedule import EvictionSchedule


class TraceStoreError(UserError, ValueError):
    """A trace store cannot be used as asked; the message names the fix."""


@dataclass(frozen=True)
class TraceRecord:
    id: str
    shard: str
    correct: bool
    prompt_len: int
    think_end: int | None  # index of (the first token of) </think>; None: the thinking never closed
    answer_start: int | None  # index of the first token after </think>
    length: int
    answer: str | None
    extracted: str | None

    @property
    def thinking(self) -> slice:
        return slice(self.prompt_len, self.think_end if self.think_end is not None else self.length)


@dataclass
class Trace:
    record: TraceRecord
    tokens: torch.Tensor  # long [T]: prompt + generated
    hidden: torch.Tensor  # float16 [n_think, H]


class TraceStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def meta(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "meta.json").read_text())
        except (OSError, json.JSONDecodeError):
            raise TraceStoreError(f"{self.path} is not a trace store (no readable meta.json): collect traces "
                                  "first with dynts-bench collect-traces") from None

    def open_for(self, meta: dict[str, Any]) -> None:
        """Create the store, or check that an existing one was collected the same way (then resume it)."""
        if (self.path / "meta.json").is_file():
            old = self.meta
            if {k: old.get(k) for k in meta} != meta:
                raise TraceStoreError(f"{self.path} holds traces collected differently ({old.get('model')}, "
                                      f"{old.get('source')}): use another --out")
            return
        (self.path / "shards").mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / "meta.json", meta)

    def _index(self) -> tuple[list[TraceRecord], int]:
        """The index's records and the byte length of its complete lines. A last line without its newline is an
        append that was interrupted (its shard was written first, so nothing is lost but its index entry): it
        is ignored here and cut off by the next ``add``. Any other unreadable line is an error."""
        index = self.path / "index.jsonl"
        if not index.is_file():
            return [], 0
        data = index.read_bytes()
        complete = data.rfind(b"\n") + 1
        rows = []
        for number, line in enumerate(data[:complete].decode(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(TraceRecord(**json.loads(line)))
            except (ValueError, TypeError):
                raise TraceStoreError(f"{index} line {number} is not a trace record: remove that line (its traces "
                                      "are collected again on resume) or collect into a new --out") from None
        return rows, complete

    def records(self, correct: bool | None = None) -> list[TraceRecord]:
        rows, _ = self._index()
        return [r for r in rows if correct is None or r.correct == correct]

    def add(self, traces: Sequence[Trace]) -> None:
        if not traces:
            return
        index = self.path / "index.jsonl"
        _, complete = self._index()
        if index.is_file() and index.stat().st_size > complete:  # an interrupted append: drop its partial line
            with index.open("r+b") as fh:
                fh.truncate(complete)
        shard = f"{len(list((self.path / 'shards').glob('*.safetensors'))):05d}"
        tensors = {}
        for trace in traces:
            tensors[f"{trace.record.id}/tokens"] = trace.tokens.contiguous()
            tensors[f"{trace.record.id}/hidden"] = trace.hidden.contiguous()
        target = self.path / "shards" / f"{shard}.safetensors"
        tmp = target.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, target)
        with (self.path / "index.jsonl").open("a") as fh:
            for trace in traces:
                fh.write(json.dumps(asdict(TraceRecord(**{**asdict(trace.record), "shard": shard}))) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def load(self, records: Sequence[TraceRecord]) -> Iterator[Trace]:
        """Traces in the order given, reading each shard once."""
        cache: dict[str, dict[str, torch.Tensor]] = {}
        for record in records:
            if record.shard not in cache:
                cache = {record.shard: load_file(str(self.path / "shards" / f"{record.shard}.safetensors"))}
            shard = cache[record.shard]
            yield Trace(record, shard[f"{record.id}/tokens"], shard[f"{record.id}/hidden"])


def final_hidden(engine: TransformersBackend, ids: list[int]) -> torch.Tensor:
    """Final (post-norm) hidden states of every token of ``ids``: one teacher-forced forward."""
    with torch.inference_mode():
        out = engine.parts.decoder(input_ids=torch.tensor([ids], device=engine.device), use_cache=False)
    return out.last_hidden_state[0].float().cpu()


ROW_ID = "trace_row_id"


def tap_hidden(policy: Policy) -> tuple[Policy, dict[int, list[torch.Tensor]]]:
    """A copy of ``policy`` that also records, per batch row, the final hidden state of every decoded token as the
    policy saw it (under its own evictions): what a predictor meets at run time. Rows are told apart by a state
    tensor that the backend compacts and row-selects with the cache."""
    captured: dict[int, list[torch.Tensor]] = {}
    base = type(policy)

    def observe(self, obs: StepObservation, state: dict[str, torch.Tensor]) -> None:
        base.observe(self, obs, state)
        ids = state[ROW_ID]
        if obs.is_prefill:
            ids[:] = torch.arange(ids.shape[0], device=ids.device)[:, None].float()
            return
        assert obs.hidden is not None
        # Every observed slot carries its row's id (any slot may since have been freed, overwritten or moved),
        # and the new slots hold zeros until written: the row's maximum is its id.
        rows = ids.amax(-1)
        obs.write(ids, rows[:, None].expand_as(obs.token_ids))
        for b, row in enumerate(rows.long().tolist()):
            captured.setdefault(row, []).append(obs.hidden[b, -1].float().cpu())

    tapped_cls = type(f"Tapped{base.__name__}", (base,), {
        "state_names": (*base.state_names, ROW_ID), "needs": base.needs | {"hidden"}, "observe": observe})
    tapped = copy.copy(policy)
    tapped.__class__ = tapped_cls
    return tapped, captured


def collect(
    engine: TransformersBackend,
    items: Sequence[PromptItem] | Sequence[TraceRow],
    store: TraceStore,
    sampling: SamplingParams,
    chat: bool = True,
    on_trace: Callable[[], None] | None = None,
    policy: Policy | None = None,
    schedule: EvictionSchedule | Sequence[EvictionSchedule] | None = None,
) -> dict[str, int]:
    """Generate every item with the full cache (skipping those already stored) and store the traces.

    With ``policy`` and ``schedule`` (on-policy traces): generated under that policy's evictions instead, and the
    stored hidden states are the ones the policy saw while generating, not a full-cache forward's. Several
    schedules: item ``i`` of ``items`` runs under schedule ``i % len(schedules)`` -- by its place in ``items``, so
    a resumed collection gives each item the schedule it would have had.

    ``PromptItem``s: the model writes its own trace (it must close it with a single ``</think>`` token).
    ``TraceRow``s (a tiny-reasoner task file): the reference trace is forced, as in replay, and the model only
    answers -- how models that do not think (SmolLM2) get traces to label.
    """
    done = {r.id for r in store.records()}
    schedules = [schedule] if schedule is None or isinstance(schedule, EvictionSchedule) else list(schedule)
    forced = bool(items) and isinstance(items[0], TraceRow)
    if not forced and engine.parts.think_end_id is None:
        raise TraceStoreError(f"{engine.source.spec} has no single </think> token to end its own traces: collect "
                              "forced traces instead (--prompts with a tiny-reasoner task file, --forced)")
    todo = []
    for position, kept in enumerate(schedules):
        group = [i for i in items[position :: len(schedules)] if i.id not in done]
        todo += group
        for start in range(0, len(group), engine.batch_size):
            _collect_batch(engine, group[start : start + engine.batch_size], store, sampling, chat, on_trace,
                           policy, kept, forced)
    records = store.records()
    return {"traces": len(records), "correct": sum(r.correct for r in records), "new": len(todo)}


def _collect_batch(
    engine: TransformersBackend,
    batch: Sequence[PromptItem] | Sequence[TraceRow],
    store: TraceStore,
    sampling: SamplingParams,
    chat: bool,
    on_trace: Callable[[], None] | None,
    policy: Policy | None,
    schedule: EvictionSchedule | None,
    forced: bool,
) -> None:
    """Generate one batch (under ``policy`` and ``schedule`` when given) and add its traces to ``store``."""
    if forced:
        replay = build_items(engine, batch, chat)  # type: ignore[arg-type]
        requests = [GenerationRequest(r.id, r.prompt_ids, forced_ids=r.forced_ids) for r in replay]
        longest = max(len(r.forced_ids) for r in replay)
        results = engine.generate(requests, FullCache(), None,
                                  replace(sampling, max_new_tokens=longest + ANSWER_TOKENS))
    else:
        requests = [GenerationRequest(i.id, engine.encode_prompt(i.prompt, chat=chat)) for i in batch]
        if policy is not None:
            tapped, captured = tap_hidden(policy)
            engine.prepare(tapped)
            results = engine.generate(requests, tapped, schedule, sampling)
        else:
            results = engine.generate(requests, FullCache(), None, sampling)
    traces = []
    for index, (item, request, result) in enumerate(zip(batch, requests, results)):
        ids = request.prompt_ids + result.output_ids
        prompt_len = len(request.prompt_ids)
        if forced:
            ri = replay[index]
            think_end, answer_start = prompt_len + ri.think_end, prompt_len + ri.answer_start
            extracted = answer_after(engine, ri, result.output_ids)
            correct = extracted == item.answer
        else:
            think_end = next((p for p in range(prompt_len, len(ids)) if ids[p] == engine.parts.think_end_id),
                             None)
            answer_start = None if think_end is None else think_end + 1
            extracted = final_answer(result.text, thinking=True)
            correct = item.answer is not None and is_correct(item.answer, result.text, thinking=True)
        if policy is not None and not forced:
            # hidden states of output tokens 0, 1, ... as the policy saw them; the last sampled token is never
            # fed back, so an unclosed trace's last one comes from a full forward
            needed = (think_end or len(ids)) - prompt_len
            seen = captured.get(index, [])[:needed]
            if len(seen) < needed:
                seen += list(final_hidden(engine, ids)[prompt_len + len(seen) : prompt_len + needed])
            hidden = torch.stack(seen)
        else:
            hidden = final_hidden(engine, ids)[prompt_len : think_end or len(ids)]
        record = TraceRecord(item.id, "", correct, prompt_len, think_end, answer_start, len(ids), item.answer,
                             extracted)
        traces.append(Trace(record, torch.tensor(ids), hidden.half()))
        if on_trace is not None:
            on_trace()
    store.add(traces)
