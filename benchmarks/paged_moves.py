"""Token moves and key reads in vLLM's CPU KV layout: the element map vs the strided store, side by side.

    OMP_NUM_THREADS=1 python -m benchmarks.paged_moves --requests 64 --length 576 --keep 512 --heads 3 --head-dim 64

One layer's cache in the ``vec`` layout (AVX2 / AVX-512 without AMX), a batch of requests on shuffled blocks,
each compacted as a window policy compacts (the prompt and the newest tokens kept, everything after the first
evicted slot moving forward), and the kept keys read back as a score-based policy reads them. Each repetition
times both implementations on the same plan, in alternating order; the table gives medians, ranges and the
ratio within each repetition. Results are checked equal before timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from backends.paged import merge_plans, plan_compaction
from backends.vllm.layouts import SlabStore, VecStore, layout_for


def timed(fn: Callable[[], object], reset: Callable[[], None]) -> float:
    reset()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--length", type=int, default=576, help="physical tokens per request before compaction")
    parser.add_argument("--keep", type=int, default=512, help="tokens kept per request")
    parser.add_argument("--prompt", type=int, default=20, help="leading tokens that never move")
    parser.add_argument("--heads", type=int, default=3, help="KV heads (SmolLM2-135M: 3)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from rich.console import Console
    from rich.table import Table

    bs, d = args.block_size, args.head_dim
    per_request = -(-args.length // bs)
    blocks = args.requests * per_request + 1
    layout = layout_for("vec", bs, d, torch.float32)
    cache = torch.randn(blocks, args.heads, bs, 2 * d)
    original = cache.clone()
    element, strided = SlabStore(cache, layout), VecStore(cache, layout)
    order = torch.randperm(blocks, generator=torch.Generator().manual_seed(0)).tolist()
    kept = torch.cat([torch.arange(args.prompt), torch.arange(args.length - args.keep + args.prompt, args.length)])
    plans = [plan_compaction(f"r{r}", order[r * per_request:(r + 1) * per_request], args.length, kept, bs)
             for r in range(args.requests)]
    batch = merge_plans(plans)
    table = torch.tensor([p.kept_blocks for p in plans])  # [R, kept blocks]
    slots = torch.arange(args.keep)
    read_blocks, read_offsets = table[:, slots // bs], (slots % bs).expand(args.requests, -1)

    def reset() -> None:
        cache.copy_(original)

    results = {}
    for name, store in (("element map", element), ("strided", strided)):
        reset()
        store.move(batch)
        results[name] = (cache.clone(), store.keys(read_blocks, read_offsets))
    if not all(torch.equal(a, b) for a, b in zip(results["element map"], results["strided"])):
        raise SystemExit("the two stores disagree: not timing")

    times: dict[str, list[float]] = {f"{op} {name}": [] for op in ("move", "keys") for name in results}
    for r in range(args.repeats):
        stores = [("element map", element), ("strided", strided)]
        for name, store in stores if r % 2 == 0 else stores[::-1]:
            times[f"move {name}"].append(timed(lambda s=store: s.move(batch), reset))
            times[f"keys {name}"].append(timed(lambda s=store: s.keys(read_blocks, read_offsets), reset))

    out = Table(title=f"one layer, vec layout: {args.requests} requests x {args.length} -> {args.keep} tokens, "
                      f"{batch.num_moves} moved, {args.heads} KV heads x {d}, block {bs}, "
                      f"{torch.get_num_threads()} thread(s), {args.repeats} repeats")
    for column in ("operation", "element map ms", "strided ms", "speed-up (min-max)"):
        out.add_column(column)
    for op in ("move", "keys"):
        old, new = times[f"{op} element map"], times[f"{op} strided"]
        ratios = [a / b for a, b in zip(old, new)]
        out.add_row(op, f"{1e3 * statistics.median(old):.1f}", f"{1e3 * statistics.median(new):.1f}",
                    f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    Console(width=160).print(out)


if __name__ == "__main__":
    main()
