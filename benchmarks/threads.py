"""Which torch thread count to run a shipped model with: 1 vs all cores, interleaved, with the spread.

Each repeat generates the same problems once per thread count, in alternating order, so both see the same
machine load; prints generated tokens/s (median, min, max) per count and the ratio of medians. Run it on a
quiet machine and next to other jobs (``--load N`` starts N busy-looping processes for the duration): intra-op
threads spin at barriers when the cores are oversubscribed, which is what a shared CI runner does.

    python -m benchmarks.threads [--model tiny-reasoner] [--limit 16] [--repeats 3] [--load 0] [--budget 96]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import torch

from backends.base import GenerationRequest, SamplingParams
from backends.hf.backend import TransformersBackend
from harness.workloads.prompt_file import default_prompts_path, load_prompts
from zoo import build_policy
from zoo.schedule import EvictionSchedule


def _spin(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-reasoner")
    p.add_argument("--limit", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--load", type=int, default=0, help="busy processes to run alongside (a loaded machine)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--budget", type=int, default=96, help="window policy's KV budget (SmolLM2's chat prompts: 160)")
    a = p.parse_args(argv)
    counts = sorted({1, os.cpu_count() or 1})
    backend = TransformersBackend(a.model, batch_size=a.limit)
    items = load_prompts(default_prompts_path(), a.limit)
    requests = [GenerationRequest(i.id, backend.encode_prompt(i.prompt)) for i in items]
    policy = build_policy("window")
    backend.prepare(policy)
    schedule = EvictionSchedule(budget=a.budget, interval=16, window=32)
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(a.load)]
    for proc in spinners:
        proc.start()
    rates: dict[int, list[float]] = {n: [] for n in counts}
    try:
        for repeat in range(a.repeats):
            for n in counts if repeat % 2 == 0 else reversed(counts):
                torch.set_num_threads(n)
                started = time.perf_counter()
                results = backend.generate(requests, policy, schedule, SamplingParams(a.max_new_tokens))
                rates[n].append(sum(r.generated_tokens for r in results) / (time.perf_counter() - started))
                print(f"repeat {repeat}, {n} threads: {rates[n][-1]:.2f} tok/s", flush=True)
    finally:
        stop.set()
        for proc in spinners:
            proc.join()
    print(f"{a.model}, {a.limit} problems in one batch, window policy, {a.repeats} interleaved repeats, "
          f"{a.load} busy processes alongside, {os.cpu_count()} cores")
    print("threads | tok/s median | min | max")
    for n in counts:
        print(f"{n} | {statistics.median(rates[n]):.0f} | {min(rates[n]):.0f} | {max(rates[n]):.0f}")
    if len(counts) > 1:
        print(f"ratio {counts[0]} / {counts[-1]} threads (medians): "
              f"{statistics.median(rates[counts[0]]) / statistics.median(rates[counts[-1]]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
