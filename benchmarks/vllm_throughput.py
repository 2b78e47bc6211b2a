"""Throughput of vLLM with and without eviction under a fixed KV memory (issue 15's engine benchmark).

    OMP_NUM_THREADS=1 python -m benchmarks.vllm_throughput --model smollm2-135m --requests 64 \
        --new-tokens 2048 --budget 256 --kv-mib 1024 --rounds 2 --json results/bench/vllm-throughput-cpu.json

One engine, policies side by side: ``full`` (vanilla vLLM: once the block pool is full the scheduler queues the
other requests, or preempts running ones and recomputes them later), ``window`` and ``dynts``. EOS is ignored, so
every request generates exactly ``--new-tokens``. DynTS uses the model's shipped predictor if there is one, else
an untrained head of the default shape (speed does not depend on its weights).

The policies run in interleaved rounds (round r runs every policy once, in an order rotated by r), and every
ratio is taken within a round, so a machine whose load drifts moves numerator and denominator together. Both
wall-clock tokens/s and tokens per CPU-second of this process are reported: with one intra-op thread the CPU
figure is what the work costs, whatever else runs on the machine. Also: preemptions, the most requests running
at once, peak blocks per request, and the policy's share of step time (every second the worker spent in observe,
query capture and score + select + evict, counted once, over wall time): over the whole run, and "once evicting",
from the first compaction to the end (the steady state; before it no policy evicts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backends.base import GenerationRequest, SamplingParams
    from backends.vllm.backend import VLLMBackend
    from zoo.base import Policy
    from zoo.schedule import EvictionSchedule

PROMPT = "Count from one to ten thousand, one number per line."


def default_prompt(model: str) -> str:
    """A prompt the model's tokenizer can encode: the tiny reasoners know only their task's words."""
    from harness.runs.catalog import model_task

    task = model_task(model)
    if task is not None:
        from harness.tinyreasoner.tasks import embedded_task

        return " ".join(next(iter(embedded_task(task).problems(1, 0, "heldout"))).prompt)
    return PROMPT


def untrained_predictor(hidden_size: int, model_id: str) -> str:
    from zoo.predictor import ImportancePredictor, PredictorConfig

    out = Path(tempfile.mkdtemp(prefix="dynts-untrained-"))
    config = PredictorConfig(model_id, hidden_size, PredictorConfig.default_sizes(hidden_size))
    ImportancePredictor(config).save(out)
    return str(out)


def build(name: str, backend: VLLMBackend, model: str) -> tuple[Policy, str]:
    """The policy, and where DynTS's predictor came from."""
    from harness.runs.catalog import shipped_predictor
    from zoo import build_policy

    if name != "dynts":
        return build_policy(name), ""
    shipped = shipped_predictor(model)
    if shipped is not None:
        return build_policy(name, predictor=str(shipped)), f"shipped ({shipped})"
    head = untrained_predictor(backend.model_info().hidden_size, model)
    return build_policy(name, predictor=head), "untrained head of the default shape"


def one_run(backend: VLLMBackend, policy: Policy, requests: list[GenerationRequest], schedule: EvictionSchedule,
            sampling: SamplingParams) -> dict[str, Any]:
    backend.prepare(policy)
    backend._configure(policy)
    backend.scheduler.peak_running = 0
    runtime = backend.model_runner.dynts
    policy0 = runtime.total_policy_s if runtime is not None else 0.0
    if runtime is not None:
        runtime.first_compaction = None
    wall0, cpu0 = time.perf_counter(), time.process_time()
    results = backend._run_group(requests, policy, schedule if policy.evicts else None, sampling, ignore_eos=True)
    end, cpu = time.perf_counter(), time.process_time() - cpu0
    wall = end - wall0
    tokens = sum(r.generated_tokens for r in results)
    steady = 0.0
    if runtime is not None and runtime.first_compaction is not None:
        began, policy_then = runtime.first_compaction
        steady = (runtime.total_policy_s - policy_then) / (end - began)
    return {
        "tokens": tokens, "wall_s": wall, "cpu_s": cpu,
        "tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu,
        "policy_share": ((runtime.total_policy_s - policy0) / wall) if runtime is not None else 0.0,
        "steady_policy_share": steady,
        "preemptions": sum(r.extra.get("preemptions", 0) for r in results),
        "peak_running": backend.scheduler.peak_running,
        "peak_blocks_per_request": max(r.extra.get("kv_peak_blocks", 0) for r in results),
        "load_average": os.getloadavg()[0],
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per policy: medians and ranges over rounds; ratios to ``full`` within each round."""
    out: dict[str, dict[str, Any]] = {}
    for name, rows in runs.items():
        entry: dict[str, Any] = {k: spread([r[k] for r in rows]) for k in ("tokens_per_s", "tokens_per_cpu_s",
                                                                          "policy_share", "steady_policy_share")}
        entry.update(preemptions=max(r["preemptions"] for r in rows), peak_running=max(r["peak_running"] for r in rows),
                     peak_blocks_per_request=max(r["peak_blocks_per_request"] for r in rows))
        if "full" in runs:
            for metric in ("tokens_per_s", "tokens_per_cpu_s"):
                entry[f"{metric}_vs_full"] = spread([r[metric] / f[metric] for r, f in zip(rows, runs["full"])])
        out[name] = entry
    return out


def print_table(title: str, summary: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(s: dict[str, float], digits: int = 2, unit: str = "") -> str:
        return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"

    table = Table(title=title)
    for column in ("policy", "tok/s (wall)", "vs full", "tok/CPU-s", "vs full", "preempt", "max running",
                   "peak blocks/req", "policy share", "once evicting"):
        table.add_column(column)
    for name, e in summary.items():
        ratio = e.get("tokens_per_s_vs_full")
        cpu_ratio = e.get("tokens_per_cpu_s_vs_full")
        table.add_row(name, fmt(e["tokens_per_s"], 0), fmt(ratio) if ratio else "-", fmt(e["tokens_per_cpu_s"], 0),
                      fmt(cpu_ratio) if cpu_ratio else "-", str(e["preemptions"]), str(e["peak_running"]),
                      str(e["peak_blocks_per_request"]),
                      fmt({k: 100 * v for k, v in e["policy_share"].items()}, 1, "%"),
                      fmt({k: 100 * v for k, v in e["steady_policy_share"].items()}, 1, "%"))
    Console(width=200).print(table)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--new-tokens", default="2048", help="comma-separated lengths, e.g. 2048,4096")
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--interval", type=int, default=32)
    parser.add_argument("--kv-mib", type=int, default=1024, help="KV pool size in MiB (fixed for every policy)")
    parser.add_argument("--policies", default="full,window,dynts")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (each runs every policy once)")
    parser.add_argument("--prompt", help="prompt of every request (default: a counting instruction; for the tiny "
                        "reasoners, held-out problem 0)")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import torch

    from backends.base import GenerationRequest, SamplingParams
    from backends.vllm.backend import VLLMBackend
    from zoo.schedule import EvictionSchedule

    lengths = [int(n) for n in args.new_tokens.split(",")]
    names = args.policies.split(",")
    backend = VLLMBackend(args.model, batch_size=args.requests, max_model_len=max(lengths) + 64,
                          engine_args={"kv_cache_memory_bytes": args.kv_mib * 2**20})
    prompt = backend.encode_prompt(args.prompt or default_prompt(args.model))
    schedule = EvictionSchedule(budget=args.budget, window=args.window, interval=args.interval)
    policies = {name: build(name, backend, args.model) for name in names}
    record: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "pool_blocks": backend.block_pool.num_gpu_blocks, "block_size": backend.block_size,
        "kv_bytes_per_token": backend.kv_bytes_per_token, "predictor": policies.get("dynts", (None, ""))[1],
        "lengths": {},
    }
    print(f"pool: {record['pool_blocks']} blocks of {backend.block_size} tokens ({args.kv_mib} MiB), "
          f"threads {record['threads']}", flush=True)
    for new_tokens in lengths:
        sampling = SamplingParams(max_new_tokens=new_tokens)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                requests = [GenerationRequest(f"r{i}", prompt, seed=i) for i in range(args.requests)]
                row = one_run(backend, policies[name][0], requests, schedule, sampling)
                runs[name].append(row)
                print(f"{new_tokens} tokens, round {r + 1}/{args.rounds}, {name}: "
                      f"{row['tokens_per_s']:.0f} tok/s, {row['tokens_per_cpu_s']:.0f} tok/CPU-s, "
                      f"{row['preemptions']} preemptions, max running {row['peak_running']}", flush=True)
        summary = summarise(runs)
        record["lengths"][str(new_tokens)] = {"runs": runs, "summary": summary}
        print_table(f"vLLM {args.model}: {args.requests} requests x {new_tokens} new tokens, KV pool {args.kv_mib} MiB,"
                    f" budget {args.budget}, {record['threads']} thread(s); median (min-max) over {args.rounds} "
                    "round(s)", summary)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(record, indent=1))
    backend.close()


if __name__ == "__main__":
    main()
