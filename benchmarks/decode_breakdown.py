"""Where a decode step of the transformers backend goes: model forward, cache writes (mask, positions,
metadata), policy observe, sampling and the token readback, dropping finished rows, and per compaction its view,
score, select and gather -- full, window, dynts and snapkv side by side, in rotating order, with spread.

    python benchmarks/decode_breakdown.py                      # tiny reasoner batch 32, SmolLM2 batch 1 and 8
    python benchmarks/decode_breakdown.py --workload tiny-32 --repeats 5 --out results/bench/breakdown.json

Each workload decodes seeded synthetic prompts of varied length (rows out of phase, as in a real batch) for a
fixed number of new tokens (EOS ignored, so every policy does the same work). Per-step columns are ms per decode
step; compaction columns are ms per compaction event (one event compacts every row whose schedule fired then).
Cells are the median over repeats, with the min-max range; ``other`` is the loop's remaining host work
(finishing rows, schedule checks). Timing syncs the device at every section boundary, so on a GPU the sections
add up to more than an unprofiled step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from backends.base import GenerationRequest, SamplingParams
from backends.hf.backend import TransformersBackend
from backends.hf.clock import SectionClock
from backends.hf.decode import generate_batch
from harness.runs.catalog import shipped_predictor
from harness.runs.environment import environment
from zoo import build_policy
from zoo.schedule import EvictionSchedule

POLICIES = ("full", "window", "dynts", "snapkv")
STEP_SECTIONS = ("model", "cache write", "observe", "sample", "drop rows")
COMPACTION_SECTIONS = ("view", "score", "select", "gather")


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    model: str
    batch: int
    prompt: tuple[int, int]  # prompt lengths drawn uniformly from this range
    new_tokens: int
    schedule: EvictionSchedule


WORKLOADS = {
    # the default `run` workload's shape: tiny reasoner, batch 32, budget 96 (+16), window 32
    "tiny-32": Workload("tiny-32", "tiny-reasoner", 32, (20, 40), 320,
                        EvictionSchedule(budget=96, interval=16, window=32)),
    "smollm2-1": Workload("smollm2-1", "smollm2-135m", 1, (480, 520), 160,
                          EvictionSchedule(budget=512, interval=64, window=128, protect_prompt=False)),
    "smollm2-8": Workload("smollm2-8", "smollm2-135m", 8, (480, 520), 160,
                          EvictionSchedule(budget=512, interval=64, window=128, protect_prompt=False)),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS), help="repeatable (default: all)")
    parser.add_argument("--policy", action="append", help=f"repeatable (default: {', '.join(POLICIES)})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=None, help="override every workload's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the CLI's default: 1)")
    parser.add_argument("--out", type=Path, default=None, help="also write the measurements as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.exit(2, "--repeats must be >= 1\n")
    if args.new_tokens is not None and args.new_tokens < 2:
        parser.exit(2, "--new-tokens must be >= 2\n")
    if args.threads < 1:
        parser.exit(2, "--threads must be >= 1\n")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.exit(2, f"--device {args.device}: no CUDA GPU is visible; use --device cpu\n")
    return args


def requests_for(workload: Workload, vocab: int) -> list[GenerationRequest]:
    gen = torch.Generator().manual_seed(0)
    low, high = workload.prompt
    first = min(100, vocab // 2)  # skip a large vocabulary's special tokens; a tiny one has few
    out = []
    for i in range(workload.batch):
        n = int(torch.randint(low, high + 1, (1,), generator=gen))
        out.append(GenerationRequest(f"r{i}", torch.randint(first, vocab, (n,), generator=gen).tolist()))
    return out


def measure(backend: TransformersBackend, policy, workload: Workload, requests, sampling) -> dict:
    """One generation under a section clock: per-step and per-compaction milliseconds."""
    clock = SectionClock(backend.device)
    parts = dataclasses.replace(backend.parts, eos_ids=frozenset())
    schedule = workload.schedule if policy.evicts else None
    started = time.perf_counter()
    generate_batch(parts, requests, policy, schedule, sampling, backend.device, clock=clock)
    wall = time.perf_counter() - started
    steps = max(clock.calls["decode step"], 1)
    decode = clock.seconds["decode step"]
    row = {f"{name} ms": 1000 * clock.seconds[name] / steps for name in STEP_SECTIONS}
    events = clock.calls["compaction"]
    row["compaction ms/step"] = 1000 * clock.seconds["compaction"] / steps
    row["other ms"] = 1000 * (decode - sum(clock.seconds[n] for n in (*STEP_SECTIONS, "compaction"))) / steps
    row["step ms"] = 1000 * decode / steps
    row["compactions"] = events
    for name in (*COMPACTION_SECTIONS, "compaction"):
        row[f"{name} ms/event"] = 1000 * clock.seconds[name] / events if events else 0.0
    row["harness %"] = 100 * (1 - clock.seconds["model"] / decode) if decode else 0.0
    row["tokens/s"] = workload.batch * steps / wall
    return row


def run_workload(workload: Workload, names: list[str], repeats: int, device: str, new_tokens: int | None) -> dict:
    backend = TransformersBackend(workload.model, device=device, batch_size=workload.batch)
    policies = {}
    for name in names:
        policy = build_policy(name)
        if policy.lacks_artefact():
            shipped = shipped_predictor(workload.model)
            if shipped is None:
                print(f"  {name}: no shipped artefact for {workload.model}, left out")
                continue
            policy.provide(str(shipped))
        backend.prepare(policy)
        policies[name] = policy
    sampling = SamplingParams(max_new_tokens=new_tokens or workload.new_tokens)
    requests = requests_for(workload, len(backend.tokenizer))
    order = list(policies)
    runs: dict[str, list[dict]] = {name: [] for name in order}
    measure(backend, policies[order[0]], workload, requests, sampling)  # warm-up, not counted
    for repeat in range(repeats):
        for name in order[repeat % len(order) :] + order[: repeat % len(order)]:
            runs[name].append(measure(backend, policies[name], workload, requests, sampling))
    return {"workload": dataclasses.asdict(workload), "runs": runs, "summary": summarise(runs)}


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per policy and column: (median, min, max) over the repeats."""
    return {name: {key: (statistics.median(r[key] for r in rs), min(r[key] for r in rs), max(r[key] for r in rs))
                   for key in rs[0]} for name, rs in runs.items()}


COLUMNS = ("step ms", "model ms", "cache write ms", "observe ms", "sample ms", "drop rows ms", "other ms",
           "compaction ms/step", "compactions", "view ms/event", "score ms/event", "select ms/event",
           "gather ms/event", "harness %", "tokens/s")


def table(name: str, summary: dict) -> str:
    lines = [f"## {name}: median [min-max] over repeats", "| column | " + " | ".join(summary) + " |",
             "|---|" + "---|" * len(summary)]
    for col in COLUMNS:
        cells = []
        for policy in summary:
            mid, low, high = summary[policy][col]
            cells.append(f"{mid:.3g} [{low:.3g}-{high:.3g}]")
        lines.append(f"| {col} | " + " | ".join(cells) + " |")
    full = summary.get("full")
    if full:
        ratio = " | ".join(f"{full['step ms'][0] / summary[p]['step ms'][0]:.2f}x" for p in summary)
        lines.append(f"| speed vs full (step ms) | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    names = args.policy or list(POLICIES)
    torch.set_num_threads(args.threads)
    results = {}
    for key in args.workload or list(WORKLOADS):
        workload = WORKLOADS[key]
        print(f"{key}: {workload.model}, batch {workload.batch}, prompts {workload.prompt[0]}-{workload.prompt[1]} "
              f"tokens, {args.new_tokens or workload.new_tokens} new, {args.repeats} repeats", flush=True)
        results[key] = run_workload(workload, names, args.repeats, args.device, args.new_tokens)
        print(table(key, results[key]["summary"]), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        env = environment()
        args.out.write_text(json.dumps({"environment": env, "results": results}, indent=1, default=str))
        print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
