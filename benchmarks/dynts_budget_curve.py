"""DynTS accuracy against the KV budget for several predictors, on one problem file, in one process.

The same decode loop, schedule (window 32, interval 16 by default) and greedy sampling as
``dynts-bench run -p dynts --budget B --predictor DIR``, with the model loaded once for every predictor x budget
cell (recipe screening on a validation split). Wilson 95% intervals per cell; a curve is *monotone within the
CI* when no budget's accuracy lies above a larger budget's upper bound.

Usage:
  python -m benchmarks.dynts_budget_curve --prompts val.jsonl --predictor old=DIR --predictor new=DIR2 \\
      --budget 72 --budget 86 --budget 128 --json out.json --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from backends.base import GenerationRequest, SamplingParams
from backends.hf.backend import TransformersBackend
from harness.runs.catalog import default_prompts
from harness.scoring.answers import is_correct
from harness.scoring.passk import wilson_ci
from harness.workloads.prompt_file import PromptItem, load_prompts
from zoo.base import Policy
from zoo.dynts import DynTS
from zoo.schedule import EvictionSchedule

DEFAULT_BUDGETS = (72, 86, 88, 96, 112, 128, 176)


def accuracy(engine: TransformersBackend, items: list[PromptItem], policy: Policy, budget: int, window: int,
             interval: int, max_new_tokens: int = 512) -> int:
    """Correct answers of ``policy`` (here: ``dynts`` with one predictor) at ``budget``, as ``dynts-bench run``
    scores them."""
    engine.prepare(policy)
    requests = [GenerationRequest(i.id, engine.encode_prompt(i.prompt)) for i in items]
    schedule = EvictionSchedule(mode="budget", budget=budget, interval=interval, window=window)
    results = engine.generate(requests, policy, schedule, SamplingParams(max_new_tokens))
    return sum(item.answer is not None and is_correct(item.answer, r.text, thinking=True)
               for item, r in zip(items, results))


def monotone_within_ci(cells: list[dict[str, Any]]) -> bool:
    """No budget's accuracy is above the upper CI bound of a larger budget."""
    ordered = sorted(cells, key=lambda c: c["budget"])
    return all(a["accuracy"] <= b["ci95"][1] + 1e-12 for i, a in enumerate(ordered) for b in ordered[i + 1 :])


def markdown(report: dict[str, Any]) -> str:
    budgets = sorted({c["budget"] for cells in report["curves"].values() for c in cells})
    lines = [f"DynTS accuracy vs budget, {report.get('model', 'tiny-reasoner')}, on {report['problems']} problems of "
             f"{report['prompts']} (window "
             f"{report['window']}, interval {report['interval']}; Wilson 95% CI):", "",
             "| predictor | " + " | ".join(str(b) for b in budgets) + " | monotone within CI |",
             "|---|" + "---|" * (len(budgets) + 1)]
    for name, cells in report["curves"].items():
        by = {c["budget"]: c for c in cells}
        row = [f"{by[b]['accuracy']:.1%} ({by[b]['ci95'][0]:.0%}-{by[b]['ci95'][1]:.0%})" if b in by else "-"
               for b in budgets]
        lines.append(f"| {name} | " + " | ".join(row) + f" | {'yes' if monotone_within_ci(cells) else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-reasoner", help="model alias or directory (default: tiny-reasoner)")
    parser.add_argument("--prompts", type=Path, default=None, help="JSONL of problems (default: held-out)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--predictor", action="append", required=True, help="NAME=DIR; repeatable")
    parser.add_argument("--budget", type=int, action="append", default=None)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--interval", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    predictors = {}
    for spec in args.predictor:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_dir():
            parser.error(f"--predictor {spec!r}: give NAME=DIR with an existing predictor directory")
        predictors[name] = path
    budgets = args.budget or list(DEFAULT_BUDGETS)
    prompts = args.prompts or default_prompts(args.model)
    items = load_prompts(prompts, args.limit)
    engine = TransformersBackend(args.model, batch_size=args.batch_size)
    report: dict[str, Any] = {"model": args.model, "prompts": str(prompts), "problems": len(items),
                              "window": args.window, "interval": args.interval, "predictors": predictors, "curves": {}}
    for name, path in predictors.items():
        cells = []
        for budget in budgets:
            t0 = time.perf_counter()
            correct = accuracy(engine, items, DynTS(predictor=path), budget, args.window, args.interval)
            lo, hi = wilson_ci(correct, len(items))
            cells.append({"budget": budget, "correct": correct, "accuracy": correct / len(items), "ci95": [lo, hi]})
            print(f"{name} budget {budget}: {correct}/{len(items)} ({time.perf_counter() - t0:.0f} s)", flush=True)
        report["curves"][name] = cells
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
