"""What an evicting policy keeps on the tiny-reasoner task, and why an answer is lost (``analyze --mode eviction``).

Generation runs exactly as ``dynts-bench run`` does (same decode loop, schedule and sampling); the policy's
``select`` is wrapped so that every compression of every sequence is recorded: the cached logical positions,
the policy's scores and which slots survived. Afterwards each generated token gets its task role
(``task.token_roles``) and every *result statement* (``r7 6`` after a step's sum) its lifetime: from when it is
written to the first later step line that reads its name. A statement is *live* in between.

Per compression this gives what was kept outside the protected prompt + window, by role, and how many live names
and values survived; per sequence and kind (name / value) the first compression that evicted a live one, with
its score's percentile among the cached thinking tokens and the roles of the kept tokens that outscored it;
per failure a cause:

* ``value-lost:ranked-low`` -- a live value was evicted at the first compression that could evict it (it had
  just left the window): scored, at write time, below the tokens kept;
* ``value-lost:displaced`` -- it survived at least one compression outside the window and was evicted later,
  by tokens written after it that scored higher;
* ``name-lost`` -- every live value survived, but a live result name did not;
* ``none-lost`` -- every live statement was cached whenever a compression ran, yet the answer is wrong.

``dynts+names`` (the same scores, but live result names kept) and ``oracle-names`` (the oracle with names
evicted first) are the interventions that test whether lost names cause a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from backends.base import GenerationRequest, SamplingParams
from backends.hf.backend import TransformersBackend
from harness.scoring.answers import is_correct
from harness.tinyreasoner.oracle import ROLE, Oracle
from harness.tinyreasoner.problems import (
    DEF_NAME,
    DEF_VALUE,
    DIGITS,
    EQUALS,
    OTHER,
    STEP,
    SUM,
    is_result_name,
    token_roles,
)
from harness.workloads.prompt_file import PromptItem
from zoo.base import CacheView, ModelInfo, Policy, StepObservation
from zoo.dynts import DynTS
from zoo.full import FullCache
from zoo.schedule import EvictionSchedule

# Finer roles than the task's, for the tables: filler by the word that opens its line.
ROLE_NAMES = ("statement-name", "statement-value", "spent-statement", "step-line", "filler-note", "filler-maybe",
              "filler-check", "filler-hmm", "filler-sofar", "answer", "other")
_FILLER = {"note": "filler-note", "maybe": "filler-maybe", "wait": "filler-check", "hmm": "filler-hmm",
           "so": "filler-sofar"}


@dataclass
class Compression:
    """One compression of one sequence: logical positions in the cache, their scores and what was kept."""

    positions: list[int]
    scores: list[float]
    kept: list[bool]
    protected: list[bool]  # prompt or window: kept whatever the score


@dataclass
class SequenceLog:
    item_id: str
    prompt_ids: list[int]
    compressions: list[Compression] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    correct: bool = False


def _recorder(policy: Policy, logs: dict[tuple[int, ...], SequenceLog]) -> None:
    """Wrap ``policy.select`` so that every compression is appended to the log of its sequence (found by the
    prompt's token ids, since the batch shrinks as sequences finish)."""
    select = policy.select

    def recording_select(scores, view, keep, window, protect_prompt):
        kept, kept_valid = select(scores, view, keep, window, protect_prompt)
        must = policy.must_keep(view, window, protect_prompt)
        for b in range(view.batch_size):
            valid = view.valid[b]
            if int(valid.sum()) <= int(keep[b]):
                continue  # this row did not fire (another row did)
            prompt = tuple(view.token_ids[b][valid & view.is_prompt[b]].tolist())
            log = logs[prompt]
            survived = torch.zeros_like(valid)
            survived[kept[b][kept_valid[b]]] = True
            log.compressions.append(Compression(
                view.positions[b][valid].tolist(), scores[b][valid].float().tolist(), survived[valid].tolist(),
                must[b][valid].tolist()))
        return kept, kept_valid

    policy.select = recording_select  # type: ignore[method-assign]


def generate_logged(engine: TransformersBackend, items: Sequence[PromptItem], policy: Policy,
                    schedule: EvictionSchedule | None, sampling: SamplingParams,
                    chat: bool = True) -> list[SequenceLog]:
    """Generate every item under ``policy`` (as ``dynts-bench run`` does) and log each compression."""
    engine.prepare(policy)
    requests = [GenerationRequest(i.id, engine.encode_prompt(i.prompt, chat=chat)) for i in items]
    logs = {tuple(r.prompt_ids): SequenceLog(r.request_id, r.prompt_ids) for r in requests}
    if policy.evicts:
        _recorder(policy, logs)
    results = engine.generate(requests, policy, schedule, sampling)
    out = []
    for item, request, result in zip(items, requests, results):
        log = logs[tuple(request.prompt_ids)]
        log = SequenceLog(item.id, request.prompt_ids, list(log.compressions), result.output_ids,
                          item.answer is not None and is_correct(item.answer, result.text, thinking=True))
        out.append(log)
    return out


# ------------------------------------------------------------------------------------ interventions (diagnosis)
@dataclass
class DynTSKeepNames(DynTS):
    """DynTS with the predictor's scores, except that every result name no step has read yet is kept (the
    oracle's online roles find them). Not a policy to use: the test of whether lost names cause the dip."""

    name = "dynts+names"
    state_names = (*DynTS.state_names, *Oracle.state_names)
    _roles: Oracle = field(default_factory=Oracle, init=False, repr=False)

    def prepare(self, model: ModelInfo) -> None:
        super().prepare(model)
        self._roles.prepare(model)

    def observe(self, obs: StepObservation, state: dict[str, torch.Tensor]) -> None:
        super().observe(obs, state)
        self._roles.observe(obs, state)

    def score(self, view: CacheView) -> torch.Tensor:
        return super().score(view).masked_fill(view.state[ROLE] == DEF_NAME, float("inf"))


@dataclass
class OracleWithoutNames(Oracle):
    """The oracle, but result names are the first to go: can the model read a value whose name is gone?"""

    name = "oracle-names"

    def score(self, view: CacheView) -> torch.Tensor:
        return super().score(view).masked_fill(view.state[ROLE] == DEF_NAME, -1e4)


# ----------------------------------------------------------------------------------------------- roles and lives
@dataclass
class Statement:
    name_pos: int  # logical position of the result name (the value follows)
    read_pos: int | None  # position of the first later step-line token that reads the name; None: never read


def fine_roles(words: Sequence[str], roles: Sequence[int], spent: set[int]) -> list[str]:
    """A table role per generated token (``spent``: positions of statements already read at that time)."""
    out, opener = [], ""
    for i, (word, role) in enumerate(zip(words, roles)):
        if i == 0 or words[i - 1] == ".":
            opener = word
        if word == "</think>" or (out and out[-1] == "answer"):
            out.append("answer")
        elif role in (DEF_NAME, DEF_VALUE):
            out.append("spent-statement" if i in spent else
                       "statement-name" if role == DEF_NAME else "statement-value")
        elif role in (STEP, EQUALS, SUM):
            out.append("step-line")
        elif role == OTHER:
            out.append(_FILLER.get(opener, "other"))
        else:
            out.append("other")
    return out


def statements(words: Sequence[str], roles: Sequence[int]) -> list[Statement]:
    """Every result statement of a generated trace and where a later step line first reads it."""
    found = []
    for i, (word, role) in enumerate(zip(words, roles)):
        if role != DEF_NAME:
            continue
        read = next((j for j in range(i + 2, len(words))
                     if words[j] == word and roles[j] == STEP and is_result_name(word)), None)
        found.append(Statement(i, read))
    return found


@dataclass
class Loss:
    """The first compression that evicted a live statement token of one kind (``name`` or ``value``)."""

    compression: int
    position: int
    displaced: bool  # it had survived an earlier compression outside the window
    score_percentile: float  # its score's percentile among the unprotected thinking tokens then cached
    outranked_by_later: float  # share of the kept unprotected tokens above it that were written after it
    outranked_by: dict[str, int]  # roles of the kept unprotected tokens that outscored it


@dataclass
class SequenceAnalysis:
    item_id: str
    correct: bool
    compressions: int
    kept_roles: dict[str, int]  # kept unprotected tokens, by role, summed over compressions
    live_seen: dict[str, int]  # live statement tokens (name / value) outside the window at a compression
    live_kept: dict[str, int]  # ... and how many of those survived it
    losses: dict[str, Loss]  # by kind: the first compression that evicted a live name / value
    cause: str | None  # failures only: value-lost:ranked-low | value-lost:displaced | name-lost | none-lost
    orphan_digits: float  # per compression: kept digits whose preceding token was evicted (names gone)
    divergence: int | None  # first generated index where the output differs from the full cache's


def _loss(log: SequenceLog, c: int, p: int, fine: list[str], prompt_len: int) -> Loss:
    comp = log.compressions[c]
    idx = comp.positions.index(p)
    free = [i for i, prot in enumerate(comp.protected) if not prot and comp.positions[i] >= prompt_len]
    mine = comp.scores[idx]
    above = [i for i in free if comp.kept[i] and comp.scores[i] >= mine]
    by: dict[str, int] = {}
    for i in above:
        by[fine[comp.positions[i] - prompt_len]] = by.get(fine[comp.positions[i] - prompt_len], 0) + 1
    earlier = any(p in e.positions and not e.protected[e.positions.index(p)] for e in log.compressions[:c])
    return Loss(c, p, earlier, sum(comp.scores[i] < mine for i in free) / max(1, len(free)),
                sum(comp.positions[i] > p for i in above) / len(above) if above else 0.0, by)


def analyze_sequence(log: SequenceLog, words: list[str], reference: list[int] | None) -> SequenceAnalysis:
    """``words``: prompt + output as task words; ``reference``: the full cache's output ids (for divergence)."""
    prompt_len = len(log.prompt_ids)
    think = words[prompt_len:]
    roles = token_roles(think)
    live_tokens: dict[int, tuple[int, str]] = {}  # logical position -> (read position, name|value)
    for s in statements(think, roles):
        read = prompt_len + (s.read_pos if s.read_pos is not None else len(think))
        live_tokens[prompt_len + s.name_pos] = (read, "name")
        if s.name_pos + 1 < len(think):
            live_tokens[prompt_len + s.name_pos + 1] = (read, "value")
    kept_roles: dict[str, int] = {}
    seen = {"name": 0, "value": 0}
    kept_live = {"name": 0, "value": 0}
    losses: dict[str, Loss] = {}
    orphans = 0
    for c, comp in enumerate(log.compressions):
        now = max(comp.positions)
        alive = {p for p, k in zip(comp.positions, comp.kept) if k}
        orphans += sum(1 for p in alive if p >= prompt_len and think[p - prompt_len] in DIGITS and p - 1 not in alive)
        spent = {p - prompt_len for p, (read, _) in live_tokens.items() if read <= now}
        fine = fine_roles(think[: now - prompt_len + 1], roles, spent)
        for p, k, prot in zip(comp.positions, comp.kept, comp.protected):
            if prot or p < prompt_len:
                continue
            if k:
                kept_roles[fine[p - prompt_len]] = kept_roles.get(fine[p - prompt_len], 0) + 1
            if p in live_tokens and live_tokens[p][0] > now:
                kind = live_tokens[p][1]
                seen[kind] += 1
                kept_live[kind] += int(k)
                if not k and kind not in losses:
                    losses[kind] = _loss(log, c, p, fine, prompt_len)
    divergence = None
    if reference is not None:
        divergence = next((i for i, (a, b) in enumerate(zip(log.output_ids, reference)) if a != b),
                          None if len(log.output_ids) == len(reference) else min(len(log.output_ids), len(reference)))
    cause = None
    if not log.correct:
        if "value" in losses:
            cause = "value-lost:displaced" if losses["value"].displaced else "value-lost:ranked-low"
        else:
            cause = "name-lost" if "name" in losses else "none-lost"
    return SequenceAnalysis(log.item_id, log.correct, len(log.compressions), kept_roles, seen, kept_live, losses,
                            cause, orphans / max(1, len(log.compressions)), divergence)


# ----------------------------------------------------------------------------------------------------- the report
def summarize(rows: Sequence[SequenceAnalysis]) -> dict[str, Any]:
    """Aggregates over the sequences of one (policy, budget)."""
    n = max(1, len(rows))
    kept_total: dict[str, int] = {}
    for r in rows:
        for k, v in r.kept_roles.items():
            kept_total[k] = kept_total.get(k, 0) + v
    all_kept = sum(kept_total.values()) or 1
    causes: dict[str, int] = {}
    for r in rows:
        if not r.correct:
            causes[r.cause or "?"] = causes.get(r.cause or "?", 0) + 1

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    out: dict[str, Any] = {
        "sequences": len(rows),
        "accuracy": sum(r.correct for r in rows) / n,
        "compressions_mean": mean([float(r.compressions) for r in rows]),
        "orphan_digits_mean": mean([r.orphan_digits for r in rows]),
        "kept_share": {k: kept_total.get(k, 0) / all_kept for k in ROLE_NAMES if kept_total.get(k)},
        "failure_causes": causes,
    }
    for kind in ("name", "value"):
        seen = sum(r.live_seen[kind] for r in rows)
        lost = [r for r in rows if kind in r.losses]
        outranked: dict[str, int] = {}
        for r in lost:
            for k, v in r.losses[kind].outranked_by.items():
                outranked[k] = outranked.get(k, 0) + v
        all_out = sum(outranked.values()) or 1
        out[kind] = {
            "live_survival": sum(r.live_kept[kind] for r in rows) / seen if seen else None,
            "lost_any": len(lost) / n,
            "lost_and_wrong": sum(not r.correct for r in lost) / n,
            "kept_all_and_wrong": sum(not r.correct for r in rows if kind not in r.losses) / n,
            "first_loss_compression_mean": mean([float(r.losses[kind].compression) for r in lost]),
            "first_loss_displaced": mean([float(r.losses[kind].displaced) for r in lost]),
            "lost_score_percentile_mean": mean([r.losses[kind].score_percentile for r in lost]),
            "outranked_by_later_mean": mean([r.losses[kind].outranked_by_later for r in lost]),
            "outranked_by_share": {k: outranked.get(k, 0) / all_out for k in ROLE_NAMES if outranked.get(k)},
        }
    return out


def eviction_report(engine: TransformersBackend, items: Sequence[PromptItem], policies: dict[str, Callable[[], Policy]],
                    budgets: Sequence[int], window: int = 32, interval: int = 16, max_new_tokens: int = 512,
                    on_cell: Callable[[str, int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Per policy and budget: :func:`summarize` of every item, plus the full cache's accuracy and outputs as the
    reference for divergence. ``policies`` maps a name to a factory (each cell gets a fresh policy)."""
    sampling = SamplingParams(max_new_tokens)
    full = generate_logged(engine, items, FullCache(), None, sampling)
    reference = {log.item_id: log.output_ids for log in full}
    report: dict[str, Any] = {"full_accuracy": sum(log.correct for log in full) / max(1, len(full)), "cells": {}}
    for name, factory in policies.items():
        for budget in budgets:
            schedule = EvictionSchedule(mode="budget", budget=budget, interval=interval, window=window)
            logs = generate_logged(engine, items, factory(), schedule, sampling)
            rows = [analyze_sequence(log, engine.tokenizer.convert_ids_to_tokens(log.prompt_ids + log.output_ids),
                                     reference.get(log.item_id)) for log in logs]
            cell = summarize(rows)
            report["cells"][f"{name}@{budget}"] = {"policy": name, "budget": budget, **cell}
            if on_cell is not None:
                on_cell(name, budget, cell)
    return report


def tiny_policies(predictors: dict[str, str], oracle: bool = True, interventions: bool = False
                  ) -> dict[str, Callable[[], Policy]]:
    """Factories for ``dynts`` under each named predictor directory and the task's oracle; with
    ``interventions`` also ``<name>+names`` (the same scores, but every live result name kept, as its value is)
    and ``oracle-names`` (the oracle with every result name evicted first): the causal test of the name story."""
    out: dict[str, Callable[[], Policy]] = {
        name: (lambda path=path: DynTS(predictor=path)) for name, path in predictors.items()}
    if interventions:
        out.update({f"{name}+names": (lambda path=path: DynTSKeepNames(predictor=path))
                    for name, path in predictors.items()})
    if oracle:
        out["oracle"] = Oracle
        if interventions:
            out["oracle-names"] = OracleWithoutNames
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def eviction_markdown(report: dict[str, Any]) -> str:
    """The report's tables: accuracy per policy and budget, then what dynts keeps and how its answers are lost."""
    cells = report["cells"]
    policies = list(dict.fromkeys(c["policy"] for c in cells.values()))
    budgets = sorted({c["budget"] for c in cells.values()})
    lines = [f"Eviction analysis ({report.get('model', 'tiny-reasoner')}): {report.get('problems', '?')} problems of "
             f"{report.get('prompts', '?')}, window "
             f"{report.get('window', '?')}, interval {report.get('interval', '?')}, predictor "
             f"{report.get('predictor', '?')}; full cache {_pct(report['full_accuracy'])}.", "",
             "Accuracy (`+names`: the same scores, every live result name kept; `oracle-names`: the oracle with "
             "result names evicted first):", "",
             "| budget | " + " | ".join(policies) + " |", "|---|" + "---|" * len(policies)]
    for b in budgets:
        lines.append(f"| {b} | " + " | ".join(_pct(cells.get(f"{p}@{b}", {}).get("accuracy")) for p in policies)
                     + " |")
    for p in policies:
        if not p.startswith("dynts") and p != "oracle":
            continue
        lines += ["", f"`{p}`: live result statements (written, not yet read by a step) outside the window at a "
                  "compression, and the failures' causes:", "",
                  "| budget | acc | live names kept | live values kept | orphan digits | lost a name | first name loss "
                  "(compression, score pct, displaced, outranked by later) | wrong with every live value kept | "
                  "failures |", "|---|---|---|---|---|---|---|---|---|"]
        for b in budgets:
            c = cells.get(f"{p}@{b}")
            if c is None:
                continue
            n = c["name"]
            loss = (f"{n['first_loss_compression_mean']:.1f}, {_pct(n['lost_score_percentile_mean'])}, "
                    f"{_pct(n['first_loss_displaced'])}, {_pct(n['outranked_by_later_mean'])}"
                    if n["first_loss_compression_mean"] is not None else "-")
            causes = ", ".join(f"{k} {v}" for k, v in sorted(c["failure_causes"].items())) or "-"
            lines.append(f"| {b} | {_pct(c['accuracy'])} | {_pct(n['live_survival'])} | "
                         f"{_pct(c['value']['live_survival'])} | {c['orphan_digits_mean']:.1f} | {_pct(n['lost_any'])} "
                         f"| {loss} | {_pct(c['value']['kept_all_and_wrong'])} | {causes} |")
    roles = [r for r in ROLE_NAMES if any(r in c["kept_share"] for c in cells.values())]
    lines += ["", "Kept tokens outside prompt + window, by role (share of all kept, over every compression):", "",
              "| policy@budget | " + " | ".join(roles) + " |", "|---|" + "---|" * len(roles)]
    for key, c in cells.items():
        if c["policy"] in ("dynts", "oracle"):
            lines.append(f"| {key} | " + " | ".join(_pct(c["kept_share"].get(r, 0.0)) for r in roles) + " |")
    return "\n".join(lines) + "\n"
