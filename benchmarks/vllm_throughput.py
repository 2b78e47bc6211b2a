"""Throughput of vLLM with and without eviction under a fixed KV memory (issue 15's engine benchmark).

    OMP_NUM_THREADS=1 python benchmarks/vllm_throughput.py --model smollm2-135m --requests 64 --new-tokens 2048 \
        --budget 256 --kv-gib 1 --json out.json

One engine, policies side by side: ``full`` (vanilla vLLM: the scheduler queues or preempts once the pool is
full), ``window`` and ``dynts``. EOS is ignored so every request generates exactly ``--new-tokens``. DynTS uses
the model's shipped predictor if there is one, else an untrained head of the default shape (speed does not
depend on its weights). Reports generated tokens/s, the ratio to ``full``, preemptions, and the policy's share
of the run (observe + score + select + evict, as the scheduler accumulated it per request).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def untrained_predictor(hidden_size: int, model_id: str) -> str:
    from zoo.predictor import ImportancePredictor, PredictorConfig

    out = Path(tempfile.mkdtemp(prefix="dynts-untrained-"))
    config = PredictorConfig(model_id, hidden_size, PredictorConfig.default_sizes(hidden_size))
    ImportancePredictor(config).save(out)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=2048)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--interval", type=int, default=32)
    parser.add_argument("--kv-gib", type=int, default=1)
    parser.add_argument("--kv-mib", type=int, help="KV pool size in MiB (overrides --kv-gib)")
    parser.add_argument("--policies", default="full,window,dynts")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from backends.base import GenerationRequest, SamplingParams
    from backends.vllm.backend import VLLMBackend
    from harness.catalog import shipped_predictor
    from zoo import build_policy
    from zoo.schedule import EvictionSchedule

    engine_args = {"kv_cache_memory_bytes": args.kv_mib * 2**20} if args.kv_mib else None
    backend = VLLMBackend(args.model, batch_size=args.requests, kv_cache_gib=None if args.kv_mib else args.kv_gib,
                          max_model_len=args.new_tokens + 256, engine_args=engine_args)
    prompt = backend.encode_prompt("Count from one to ten thousand, one number per line.")
    requests = [GenerationRequest(f"r{i}", prompt, seed=i) for i in range(args.requests)]
    schedule = EvictionSchedule(budget=args.budget, window=args.window, interval=args.interval)
    sampling = SamplingParams(max_new_tokens=args.new_tokens)
    rows = {}
    for name in args.policies.split(","):
        options = {}
        if name == "dynts":
            shipped = shipped_predictor(args.model)
            options["predictor"] = str(shipped) if shipped else untrained_predictor(
                backend.model_info().hidden_size, args.model)
        policy = build_policy(name, **options)
        backend.prepare(policy)
        backend._configure(policy)
        t0 = time.perf_counter()
        results = backend._run_group(requests, policy, schedule if policy.evicts else None, sampling,
                                     ignore_eos=True)
        seconds = time.perf_counter() - t0
        tokens = sum(r.generated_tokens for r in results)
        rows[name] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                      "policy_share": sum(r.policy_s for r in results) / max(1e-9, seconds * len(results)),
                      "peak_blocks": max(r.extra.get("kv_peak_blocks", 0) for r in results),
                      "pool_blocks": backend.block_pool.num_gpu_blocks}
        print(name, json.dumps(rows[name]), flush=True)
    base = rows.get("full", {}).get("tokens_per_s")
    for row in rows.values():
        row["speedup_vs_full"] = row["tokens_per_s"] / base if base else None
    print(json.dumps(rows, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1))
    backend.close()


if __name__ == "__main__":
    main()
