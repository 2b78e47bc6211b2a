"""``dynts-bench eval-predictor`` and ``analyze``: how good is a predictor, and how concentrated is importance.

Evaluation ranks the thinking tokens of held-out traces with the predictor and with every baseline ranker,
against the labels (and, on the tiny-reasoner task, against the generator's ground truth).

Analysis reproduces the paper's observation on any model: what fraction of thinking tokens carries 80% / 90%
of the answer's attention, and what happens to the answer when only the top / bottom / random k% of thinking
tokens are kept and the model answers again from that (re-feeding); on incorrect traces too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from backends.hf.backend import TransformersBackend
from harness.predictor_pipeline.labels import load_labels
from harness.predictor_pipeline.rankers import (
    BASELINE_RANKERS,
    baseline_scores,
    mean_metrics,
    predictor_scores,
    ranking_metrics,
    top_set,
)
from harness.predictor_pipeline.traces import Trace, TraceStore, TraceStoreError
from harness.scoring.answers import is_correct
from harness.tinyreasoner.problems import critical_mask
from harness.tinyreasoner.vocab import VOCAB
from zoo.predictor import ImportancePredictor

_TASK_WORDS = frozenset(VOCAB)


def ground_truth(engine: TransformersBackend, trace: Trace) -> torch.Tensor | None:
    """The generator's critical tokens, when the trace is in the tiny-reasoner task's words."""
    words = engine.tokenizer.convert_ids_to_tokens(trace.tokens[trace.record.thinking].tolist())
    if not words or not set(words) <= _TASK_WORDS:
        return None
    return torch.tensor(critical_mask(words))


def evaluate(engine: TransformersBackend, store: TraceStore, predictor: ImportancePredictor | None, label_method: str,
             limit: int | None = None, on_trace: Callable[[], None] | None = None,
             correct_only: bool = True) -> dict[str, dict[str, float]]:
    """Mean ranking metrics per ranker (``dynts`` = the predictor) over the store's (correct) labelled traces."""
    labels = load_labels(store, label_method)
    records = [r for r in store.records(True if correct_only else None) if r.id in labels][:limit]
    if not records:
        raise TraceStoreError(f"{store.path} has no {'correct ' if correct_only else ''}traces with "
                              f"{label_method} labels to evaluate on")
    rows: dict[str, list[dict[str, float]]] = {}
    for trace in store.load(records):
        if trace.hidden.shape[0] < 3:
            continue
        truth = ground_truth(engine, trace)
        scores = baseline_scores(engine, trace, BASELINE_RANKERS)
        if predictor is not None:
            scores = {"dynts": predictor_scores(predictor, trace), **scores}
        for name, s in scores.items():
            rows.setdefault(name, []).append(ranking_metrics(s, labels[trace.record.id], truth))
        if on_trace is not None:
            on_trace()
    return {name: mean_metrics(r) for name, r in rows.items()}


# ------------------------------------------------------------------------------------------------ analysis
def concentration(labels: torch.Tensor, mass: float) -> float:
    """Smallest fraction of tokens whose labels add up to ``mass`` of the total."""
    ordered = labels.clamp(min=0).sort(descending=True).values
    total = float(ordered.sum())
    if total <= 0:
        return 1.0
    needed = int((ordered.cumsum(0) < mass * total).sum()) + 1
    return min(needed, labels.numel()) / labels.numel()


def refeed(engine: TransformersBackend, trace: Trace, keep: torch.Tensor, target: str,
           max_new_tokens: int = 16) -> bool:
    """Answer again from the prompt + the kept thinking tokens (original positions) + ``</think>``: is the
    answer still ``target``?"""
    r = trace.record
    assert r.think_end is not None and r.answer_start is not None
    tokens = trace.tokens
    positions = torch.cat([torch.arange(r.prompt_len), r.prompt_len + keep.nonzero().flatten(),
                           torch.arange(r.think_end, r.answer_start)])
    ids = tokens[positions]
    device = engine.device
    from transformers import DynamicCache

    cache = DynamicCache(config=engine.model.config)
    out: list[int] = []
    next_pos = r.answer_start
    with torch.inference_mode():
        logits = engine.model(input_ids=ids[None].to(device), position_ids=positions[None].to(device),
                              past_key_values=cache, use_cache=True).logits[0, -1]
        for _ in range(max_new_tokens):
            token = int(logits.argmax())
            if token in engine.parts.eos_ids:
                break
            out.append(token)
            logits = engine.model(input_ids=torch.tensor([[token]], device=device),
                                  position_ids=torch.tensor([[next_pos]], device=device),
                                  past_key_values=cache, use_cache=True).logits[0, -1]
            next_pos += 1
    text = engine.tokenizer.decode(out, skip_special_tokens=True)
    return is_correct(target, "</think>" + text, thinking=True)


def _random_keep(n: int, fraction: float, key: str) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    keep = torch.zeros(n, dtype=torch.bool)
    keep[order[: max(1, round(fraction * n))]] = True
    return keep


def analyze(engine: TransformersBackend, store: TraceStore, label_method: str, fractions: Sequence[float],
            predictor: ImportancePredictor | None = None, limit: int | None = None,
            on_trace: Callable[[], None] | None = None) -> dict[str, Any]:
    labels = load_labels(store, label_method)
    report: dict[str, Any] = {}
    for correct in (True, False):
        # correct traces: does the answer stay right? incorrect ones: does the wrong line of thought survive,
        # i.e. does the model still give the same (wrong) answer?
        records = [r for r in store.records(correct) if r.id in labels
                   and (r.answer if correct else r.extracted) is not None][:limit]
        part: dict[str, Any] = {"traces": len(records)}
        if not records:
            report["correct" if correct else "incorrect"] = part
            continue
        mass80, mass90, kept_ok, tau = [], [], {}, []
        for trace in store.load(records):
            y = labels[trace.record.id]
            n = y.numel()
            target = trace.record.answer if correct else trace.record.extracted
            assert target is not None
            if n < 3:
                continue
            mass80.append(concentration(y, 0.8))
            mass90.append(concentration(y, 0.9))
            rankers = {"top": y, "bottom": -y}
            if predictor is not None:
                s = predictor_scores(predictor, trace)
                rankers["predictor"] = s
                tau.append(ranking_metrics(s, y)["kendall_tau"])
            for fraction in fractions:
                for name, score in rankers.items():
                    kept_ok.setdefault(f"{name}@{fraction:g}", []).append(
                        refeed(engine, trace, top_set(score, fraction), target))
                kept_ok.setdefault(f"random@{fraction:g}", []).append(
                    refeed(engine, trace, _random_keep(n, fraction, trace.record.id), target))
            if on_trace is not None:
                on_trace()
        part.update({
            "tokens_for_80pct_attention": sum(mass80) / len(mass80) if mass80 else None,
            "tokens_for_90pct_attention": sum(mass90) / len(mass90) if mass90 else None,
            "refeed_same_answer": {k: sum(v) / len(v) for k, v in kept_ok.items()},
        })
        if tau:
            part["predictor_kendall_tau"] = sum(tau) / len(tau)
        report["correct" if correct else "incorrect"] = part
    return report
