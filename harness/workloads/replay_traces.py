"""Trace replay (``--protocol replay``): force a reference trace through the decode path, policy active.

Models too weak to solve the task themselves (SmolLM2-135M retrieves a value stated once 400 tokens back in
about a quarter of cases) still tell policies apart when they read the *same* tokens: every trace token is
written by the harness instead of the model, eviction runs as in free generation, and each step's next-token
distribution is compared with the full cache's on the same prefix. After the trace the model answers alone.

Per sample: mean KL(full || policy) and top-1 agreement over every forced step and the answer step; for the
*retrievals* (a later step reading a result stated far back, the ground truth's critical tokens), the share
whose statement was still cached (``retrieval_recall``) and the share the model predicted right
(``retrieval_accuracy``); and whether the answer is right -- a weak signal here, since the forced trace ends
with the final result, so answer accuracy mostly measures whether the model can copy it.

``full`` against itself is exactly 0 KL: the reference is the same decode path on the same batches, not a
separate teacher-forced forward.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from backends.base import BackendError, GenerationRequest
from backends.hf.backend import TransformersBackend
from backends.hf.cache import CompactingCache
from backends.hf.decode import generate_batch
from harness.runs.config import RunConfig
from harness.scoring.answers import last_number
from harness.tinyreasoner.problems import DEF_NAME, DEF_VALUE, OTHER, THINK_OPEN, is_result_name, token_roles
from harness.workloads.prompt_file import PromptFileError
from zoo.full import FullCache

#: prepended for models that do not know the task (the tiny reasoner's own prompt is the bare problem)
INSTRUCTION = "Add the values modulo 10, two at a time, thinking step by step. "
ANSWER_TOKENS = 6  # free tokens after the forced trace: the answer and its end


@dataclass(frozen=True)
class TraceRow:
    """A problem with its reference trace (a line of a tiny-reasoner JSONL file)."""

    id: str
    prompt: str
    trace: list[str]  # thinking words up to and including </think>
    answer: str


@dataclass
class ReplayItem:
    id: str
    prompt_ids: list[int]
    forced_ids: list[int]  # the trace, then the answer cue
    answer: str
    retrievals: list[tuple[int, int]]  # (forced index of a stated result's value, forced index reading it)
    think_end: int  # forced index of the first token of </think>
    answer_start: int  # forced index of the first token after </think> (the answer cue)


def load_trace_rows(path: Path, limit: int | None = None) -> list[TraceRow]:
    """Rows with ``prompt``, ``trace`` (space-separated words) and ``answer``: the shipped held-out file's form."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"cannot read prompts file {path}: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append(TraceRow(str(row.get("id", number)), row["prompt"], row["trace"].split(), str(row["answer"])))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            raise PromptFileError(
                f"{path}:{number}: --protocol replay needs rows with 'prompt', 'trace' and 'answer' "
                "(the tiny-reasoner task's files; see `dynts-bench make-task`)"
            ) from None
    if not rows:
        raise PromptFileError(f"{path} holds no problems")
    return rows[:limit] if limit is not None else rows


def retrieval_pairs(words: Sequence[str]) -> list[tuple[int, int]]:
    """(word index of a result's stated value, word index of that value read back by a later step)."""
    roles = token_roles(words)
    stated: dict[str, int] = {}
    pairs = []
    for i, (word, role) in enumerate(zip(words, roles)):
        if role == DEF_VALUE:
            stated[words[i - 1]] = i
        elif role != OTHER and role != DEF_NAME and is_result_name(word) and word in stated and i + 1 < len(words):
            pairs.append((stated.pop(word), i + 1))
    return pairs


def build_items(engine: TransformersBackend, rows: Sequence[TraceRow], chat: bool) -> list[ReplayItem]:
    """Tokenize prompts and traces for ``engine``'s model, mapping trace words to token indices."""
    tokenizer = engine.tokenizer
    items = []
    for row in rows:
        words = [*row.trace, "answer"]
        native = len(tokenizer.encode(" ".join(words), add_special_tokens=False)) == len(words)
        prompt_ids = engine.encode_prompt(row.prompt if native else INSTRUCTION + row.prompt, chat=chat)
        opened = tokenizer.decode(prompt_ids[-1:]).strip() == THINK_OPEN
        prefix = "" if opened else f"{THINK_OPEN}\n"
        text = prefix + " ".join(words)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts, offset = [], len(prefix)
        for word in words:
            starts.append(offset)
            offset += len(word) + 1
        spans = encoded["offset_mapping"]
        token_of = []
        for start in starts:  # the token holding the word's first character
            index = next((j for j, (a, b) in enumerate(spans) if a <= start < b), None)
            if index is None:
                raise BackendError(f"cannot align trace word at character {start} of problem {row.id} to tokens")
            token_of.append(index)
        retrievals = [(token_of[d], token_of[u]) for d, u in retrieval_pairs(words)]
        items.append(ReplayItem(row.id, prompt_ids, list(encoded["input_ids"]), row.answer, retrievals,
                                token_of[-2], token_of[-1]))
    return items


class Recorder:
    """The decode loop's per-forward hook: log-probabilities of every step, and which positions are cached."""

    def __init__(self, items: dict[str, ReplayItem], reference: dict[str, torch.Tensor] | None) -> None:
        self.items, self.reference = items, reference
        self.step: dict[str, int] = {}
        self.logprobs: dict[str, list[torch.Tensor]] = {}
        self.kl: dict[str, list[float]] = {}
        self.top1: dict[str, list[bool]] = {}
        self.kept: dict[str, list[bool]] = {}
        self.retrieved: dict[str, list[bool]] = {}

    def __call__(self, cache: CompactingCache, logits: torch.Tensor, request_ids: list[str]) -> None:
        logprobs = logits.float().log_softmax(-1)
        t = cache.length
        for b, rid in enumerate(request_ids):
            item = self.items[rid]
            s = self.step.get(rid, 0)
            self.step[rid] = s + 1
            if s > len(item.forced_ids):
                continue  # free generation after the answer step
            if self.reference is None:
                self.logprobs.setdefault(rid, []).append(logprobs[b].cpu())
                continue
            ref = self.reference[rid][s]
            mine = logprobs[b].cpu()
            kl = float((ref.exp() * (ref - mine)).sum())
            self.kl.setdefault(rid, []).append(max(kl, 0.0))
            self.top1.setdefault(rid, []).append(int(ref.argmax()) == int(mine.argmax()))
            base = len(item.prompt_ids)
            wanted = [base + d for d, u in item.retrievals if u == s]
            if wanted:
                held = set(cache.positions[b, :t][cache.valid[b, :t]].tolist())
                self.kept.setdefault(rid, []).extend(p in held for p in wanted)
                self.retrieved.setdefault(rid, []).append(int(mine.argmax()) == item.forced_ids[s])


class ReferenceCache:
    """Full-cache log-probabilities per batch, computed once per invocation and shared by every policy."""

    def __init__(self) -> None:
        self._batches: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}

    def get(self, engine: TransformersBackend, requests: list[GenerationRequest], items: dict[str, ReplayItem],
            config: RunConfig) -> dict[str, torch.Tensor]:
        key = tuple(r.request_id for r in requests)
        if key not in self._batches:
            recorder = Recorder(items, None)
            generate_batch(engine.parts, requests, FullCache(), None, replay_sampling(config, items), engine.device,
                           on_forward=recorder)
            self._batches[key] = {rid: torch.stack(rows) for rid, rows in recorder.logprobs.items()}
        return self._batches[key]


def replay_sampling(config: RunConfig, items: dict[str, ReplayItem]):
    from dataclasses import replace

    longest = max(len(i.forced_ids) for i in items.values())
    return replace(config.sampling, max_new_tokens=longest + ANSWER_TOKENS, temperature=0.0, stop=())


def answer_after(engine: TransformersBackend, item: ReplayItem, output_ids: list[int]) -> str | None:
    """The model's answer after the forced trace: the first word it writes, if that is a number."""
    words = engine.tokenizer.decode(output_ids[len(item.forced_ids) :], skip_special_tokens=True).split()
    return last_number(words[0]) if words else None


def mean(values: list[Any]) -> float | None:
    return sum(values) / len(values) if values else None
