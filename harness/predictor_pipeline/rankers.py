"""Rank thinking tokens: the DynTS predictor against the baselines' own scores, on the same traces.

Every ranker scores the thinking tokens of a trace as its policy would at the end of thinking (just before
``</think>``, the whole trace cached): recency (``window``), accumulated attention (``h2o``), attention from
the last queries (``snapkv``), attention minus redundancy (``rkv``), random, and the predictor on each
token's hidden state. The zoo's own ``score`` functions are used, so the comparison is with the policies
that run, not with re-implementations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from scipy.stats import kendalltau, spearmanr

from backends.hf.backend import TransformersBackend
from harness.predictor_pipeline.labels import observed_forward
from harness.predictor_pipeline.traces import Trace
from zoo import build_policy
from zoo.base import CacheView
from zoo.predictor import ImportancePredictor

BASELINE_RANKERS = ("recency", "h2o", "snapkv", "rkv", "random")
KEEP_FRACTIONS = (0.2, 0.3, 0.4)
TOP_FRACTION = 0.2


def baseline_scores(engine: TransformersBackend, trace: Trace,
                    names: Sequence[str] = BASELINE_RANKERS) -> dict[str, torch.Tensor]:
    """Scores over the trace's thinking tokens, as each baseline policy computes them at the end of thinking."""
    r = trace.record
    end = r.think_end if r.think_end is not None else r.length
    policies = {n: build_policy(n) for n in names if n in ("snapkv", "rkv")}
    window = max((p.query_window for p in policies.values()), default=1)
    keys, queries, received = observed_forward(engine, trace.tokens[:end], window, accumulate="h2o" in names)
    positions = torch.arange(end, device=engine.device)[None]
    view = CacheView(
        valid=torch.ones(1, end, dtype=torch.bool, device=engine.device), positions=positions,
        token_ids=trace.tokens[None, :end].to(engine.device), is_prompt=positions < r.prompt_len, keys=keys,
        queries=queries, state={"attention": received} if received is not None else {},
    )
    thinking = slice(r.prompt_len, end)
    out: dict[str, torch.Tensor] = {}
    for name in names:
        if name == "recency":
            out[name] = positions[0, thinking].float().cpu()
        elif name == "random":
            seed = int.from_bytes(hashlib.sha256(r.id.encode()).digest()[:4], "little")
            out[name] = torch.rand(end - r.prompt_len, generator=torch.Generator().manual_seed(seed))
        elif name == "h2o":
            assert received is not None
            out[name] = received[0, thinking].float().cpu()
        else:
            out[name] = policies[name].score(view)[0, thinking].float().cpu()
    return out


def predictor_scores(predictor: ImportancePredictor, trace: Trace) -> torch.Tensor:
    with torch.inference_mode():
        return predictor(trace.hidden.float()).float().cpu()


def top_set(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask of the ``ceil(fraction * n)`` highest values (ties broken by position)."""
    n = values.numel()
    k = max(1, int(-(-fraction * n // 1)))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[values.argsort(descending=True, stable=True)[:k]] = True
    return mask


def ranking_metrics(scores: torch.Tensor, labels: torch.Tensor, critical: torch.Tensor | None = None
                    ) -> dict[str, float]:
    """Kendall tau / Spearman against the labels; recall of the top-20% (by label) tokens when the ranker keeps
    20/30/40%; with ground truth (the tiny task), recall of the critical tokens at the same fractions."""
    s, y = scores.double().numpy(), labels.double().numpy()
    out = {"kendall_tau": float(kendalltau(s, y).statistic), "spearman": float(spearmanr(s, y).statistic)}
    important = top_set(labels, TOP_FRACTION)
    for keep in KEEP_FRACTIONS:
        kept = top_set(scores, keep)
        out[f"top20_recall@{int(keep * 100)}"] = float((kept & important).sum() / important.sum())
        if critical is not None and critical.any():
            out[f"critical_recall@{int(keep * 100)}"] = float((kept & critical).sum() / critical.sum())
    return {k: (0.0 if v != v else v) for k, v in out.items()}  # a constant ranker has no correlation: 0


def mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys() if rows else []
    return {k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys}
