"""How far DynTS's cache is from window's on forced traces: at every compression of a DynTS trace replay, the
tokens DynTS keeps that window, choosing from the same cache with the same keep count, would have evicted.

    OMP_NUM_THREADS=1 python -m benchmarks.replay_cache_overlap --model smollm2-135m --budget 256 --window 48 \
        --limit 16

Replay KL compares caches through the next-token distributions they give; when DynTS's options make it keep
almost what window keeps, the two KLs cannot differ by much, whoever is ahead. This counts the difference
directly, on DynTS's own trajectory (the trace forced token by token as ``run --protocol replay`` forces it, the
predictor's stored options at the budget, interval 16, one batch): per compression, ``swapped`` = kept by DynTS
and not by window (as many as the other way round), out of ``evicted`` = tokens each drops. No KL reference is
computed, so this is one decode pass.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from backends.base import GenerationRequest, SamplingParams
from backends.hf.backend import TransformersBackend
from backends.hf.decode import generate_batch
from harness.runs.catalog import default_prompts, shipped_predictor
from harness.workloads.replay_traces import ANSWER_TOKENS, build_items, load_trace_rows
from zoo import build_policy
from zoo.base import CacheView
from zoo.dynts import DynTS
from zoo.schedule import EvictionSchedule


@dataclass
class ComparedDynTS(DynTS):
    """DynTS that, at each compression, also asks window what it would keep from the same view."""

    swapped: list[int] = field(default_factory=list, init=False, repr=False)
    evicted: list[int] = field(default_factory=list, init=False, repr=False)

    def select(self, scores: torch.Tensor, view: CacheView, keep: torch.Tensor, window: int,
               protect_prompt: bool) -> tuple[torch.Tensor, torch.Tensor]:
        kept, kept_valid = super().select(scores, view, keep, window, protect_prompt)
        recent = build_policy("window")
        other, other_valid = recent.select(recent.score(view), view, keep, window, protect_prompt)
        for row in range(view.batch_size):
            mine = set(kept[row][kept_valid[row]].tolist())
            theirs = set(other[row][other_valid[row]].tolist())
            self.swapped.append(len(mine - theirs))
            self.evicted.append(int(view.valid[row].sum()) - len(mine))
        return kept, kept_valid


def overlap(engine: TransformersBackend, prompts: Path, limit: int, budget: int, window: int,
            predictor: Path) -> ComparedDynTS:
    """DynTS's replay of the first ``limit`` traces of ``prompts`` at ``budget``, each compression compared."""
    policy = ComparedDynTS()
    policy.provide(str(predictor))
    policy.prepare(engine.model_info())
    items = build_items(engine, load_trace_rows(prompts, limit), chat=True)
    requests = [GenerationRequest(i.id, i.prompt_ids, forced_ids=i.forced_ids) for i in items]
    longest = max(len(i.forced_ids) for i in items)
    generate_batch(engine.parts, requests, policy, EvictionSchedule(budget=budget, interval=16, window=window),
                   SamplingParams(max_new_tokens=longest + ANSWER_TOKENS), engine.device)
    return policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--budget", type=int, action="append", default=None)
    parser.add_argument("--window", type=int, default=48)
    args = parser.parse_args()
    predictor = shipped_predictor(args.model)
    if predictor is None:
        parser.error(f"no DynTS predictor is shipped for {args.model}")
    engine = TransformersBackend(args.model, batch_size=args.limit)
    print("| budget | options (pool_next, recency) | compressions | evicted per compression | swapped: mean | "
          "median | max | identical to window |\n|---|---|---|---|---|---|---|---|")
    for budget in args.budget or [160, 256]:
        done = overlap(engine, args.prompts or default_prompts(args.model), args.limit, budget, args.window,
                       predictor)
        n = len(done.swapped)
        identical = sum(s == 0 for s in done.swapped)
        print(f"| {budget} | {done.selection(budget)} | {n} | {statistics.mean(done.evicted):.1f} | "
              f"{statistics.mean(done.swapped):.2f} | {statistics.median(done.swapped):g} | {max(done.swapped)} | "
              f"{identical} ({identical / n:.0%}) |")
    engine.close()


if __name__ == "__main__":
    main()
