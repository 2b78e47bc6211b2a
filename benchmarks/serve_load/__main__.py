"""Drive ``dynts-bench serve`` with concurrent streaming clients, bad requests and hang-ups, then check it.

    OMP_NUM_THREADS=1 VENV/bin/python -m benchmarks.serve_load --backend vllm -p full -p dynts \\
        --requests 200 --concurrency 32 --budget 86 --kv-tokens 8192 --repeats 2 --json results/serve/load.json

Per repeat, each policy gets a fresh server (same flags, same fixed KV pool with --kv-tokens) and the same request
mix (``workload.build_mix``); the policies' order rotates between repeats, so the served throughput ratio is taken
within a repeat and reported with its range. After the load: the pool must drain to what it held before, every
bad request must get a 4xx naming its fault, and a normal request must be served. Last, the greedy replies that
were read to the end are replayed offline through the in-process backend (``dynts-bench run``'s path) with the
same policy and schedule and compared text for text. Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from backends.hf.facts import ModelFacts
from benchmarks.serve_load.drive import drive, refuse_and_recover
from benchmarks.serve_load.load_report import print_tables, ratio_spread, summarize
from benchmarks.serve_load.offline import compare, offline_texts, served_setup
from benchmarks.serve_load.server import KV_GAUGES, serving
from benchmarks.serve_load.workload import CHAT, LoadRequest, Prompts, bad_requests, build_mix
from harness.runs.catalog import TASK_VOCABULARY_MODELS, default_prompts

DATA = Path(__file__).resolve().parents[2] / "harness" / "data"
IDENTITY_TARGET = 0.98


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("vllm", "sglang"), required=True)
    p.add_argument("--model", default="tiny-reasoner")
    p.add_argument("-p", "--policy", action="append", help="repeat to compare (default: full and dynts)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--time-limit", type=float, default=1200.0, help="seconds per policy run to start requests")
    p.add_argument("--budget", type=int, default=86)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--interval", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=600)
    p.add_argument("--kv-tokens", type=int, default=None, help="fixed KV pool (tokens) for every policy")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts", type=Path, default=None, help="JSONL of {id, prompt}; default: the model's set")
    p.add_argument("--api-key", default=None, help="serve with this key and send it")
    p.add_argument("--no-offline", action="store_true", help="skip the offline replay")
    p.add_argument("--json", type=Path, default=None, help="write the record here (atomically)")
    args = p.parse_args(argv)
    args.policy = args.policy or ["full", "dynts"]
    for name in ("requests", "concurrency", "repeats", "max_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def load_prompts(model: str, path: Path | None) -> tuple[Prompts, int]:
    """The model's prompts (text and chat-templated ids) and its position limit."""
    if path is None:
        path = default_prompts(model) if model in TASK_VOCABULARY_MODELS else DATA / "arithmetic_prompts.jsonl"
    texts = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
    facts = ModelFacts(model)
    ids = [_chat_ids(facts.tokenizer, text) for text in texts]
    words = ["answer"] if model in TASK_VOCABULARY_MODELS else ["\n\n", "Answer"]
    return Prompts(texts, ids, sorted(facts.eos_ids), words), facts.position_limit


def _chat_ids(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True)
    return [int(i) for i in (ids if isinstance(ids, list) else ids["input_ids"])]


def serve_args(args: argparse.Namespace, policy: str) -> list[str]:
    flags = ["-p", policy, "--model", args.model, "--budget", str(args.budget), "--window", str(args.window),
             "--interval", str(args.interval), "--batch-size", str(args.concurrency)]
    return flags + (["--kv-tokens", str(args.kv_tokens)] if args.kv_tokens else [])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    prompts, limit = load_prompts(args.model, args.prompts)
    mix = build_mix(args.model, prompts, args.requests, seed=args.seed, budget=args.budget,
                    max_tokens=args.max_tokens)
    bad = bad_requests(args.model, prompts, limit)
    normal = next(r for r in mix if r.comparable and r.path == CHAT)
    workdir = Path(tempfile.mkdtemp(prefix="serve-load-"))
    runs: list[tuple[str, Any, dict[str, str]]] = []  # (policy, LoadResult, served greedy text by id)
    for repeat in range(args.repeats):
        order = args.policy[repeat % len(args.policy):] + args.policy[: repeat % len(args.policy)]
        for policy in order:
            print(f"repeat {repeat + 1}/{args.repeats}: serving {policy} ...", flush=True)
            with serving(workdir, args.backend, serve_args(args, policy), args.api_key) as server:
                result = drive(server, policy, mix, args.concurrency, args.time_limit)
                refuse_and_recover(server, result, bad, normal)
            served = {r.request_id: o.texts.get(0, "") for r, o in result.replies
                      if r.comparable and o.status == 200}
            runs.append((policy, result, served))
            print(f"  {policy}: {len(result.replies)} replies in {result.wall_s:.0f} s", flush=True)
    offline = {} if args.no_offline else _offline(args, mix, args.policy)
    budgeted = {policy: _budgeted(args, policy) for policy in args.policy}
    by_id = {r.request_id: r for r in mix}
    rows = []
    for policy, result, served in runs:
        identical = None
        if policy in offline:
            identical = {rid: compare(by_id[rid], text, offline[policy][rid]) for rid, text in served.items()}
        rows.append(summarize(result, identical, budgeted[policy]))
    print_tables(rows, KV_GAUGES[args.backend][1], console)
    ratios = {p: ratio_spread(rows, p, args.policy[0]) for p in args.policy[1:]}
    for policy, spread in ratios.items():
        if spread:
            console.print(f"served tokens/s {policy} / {args.policy[0]}: median {spread['median']:.2f} "
                          f"(range {spread['min']:.2f}-{spread['max']:.2f} over {len(spread['ratios'])} repeats)")
    verdicts = checks(rows)
    for line in verdicts:
        console.print(line, highlight=False)
    if args.json:
        _write_json(args.json, {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                "environment": _environment(), "runs": rows, "throughput_ratio": ratios,
                                "verdicts": verdicts})
    return 1 if any(line.startswith("FAIL") for line in verdicts) else 0


def _offline(args: argparse.Namespace, mix: list[LoadRequest], policies: list[str]) -> dict[str, dict[str, str]]:
    comparable = [r for r in mix if r.comparable]
    texts = {}
    for policy in policies:
        print(f"offline replay of {len(comparable)} greedy requests under {policy} ...", flush=True)
        texts[policy] = offline_texts(args.backend, args.model, policy, _schedule_args(args), comparable,
                                      args.max_tokens,
                                      args.concurrency)
    return texts


def _budgeted(args: argparse.Namespace, policy: str) -> bool:
    """Whether ``serve`` gives ``policy`` a schedule that keeps the prompt within the budget."""
    schedule = served_setup(args.backend, args.model, policy, _schedule_args(args))[2]
    return schedule is not None and bool(schedule.get("protect_prompt"))


def _schedule_args(args: argparse.Namespace) -> dict[str, int]:
    return {"budget": args.budget, "window": args.window, "interval": args.interval}


def checks(rows: list[dict[str, Any]]) -> list[str]:
    """One verdict line per check and policy run: ``ok ...`` or ``FAIL ...``."""
    lines = []
    for i, r in enumerate(rows):
        tag = f"{r['policy']} (run {i + 1})"
        lines.append(_verdict(r["failed_5xx"] == 0, f"{tag}: no 5xx or broken connection",
                              f"{r['failed_5xx']} failed: {r['errors']}"))
        lines.append(_verdict(r["refused_as_expected"] == r["must_be_refused"] and not r["refused_unexpectedly"],
                              f"{tag}: the {r['must_be_refused']} requests the schedule cannot keep refused (400 "
                              "naming the limit), no other request refused",
                              f"{r['refused_as_expected']} refused as expected, unexpected: "
                              f"{r['refused_unexpectedly'][:10]}"))
        named = all(b["names_the_fault"] for b in r["bad_requests"])
        lines.append(_verdict(named, f"{tag}: every bad request refused with a 4xx naming its fault",
                              str([b for b in r["bad_requests"] if not b["names_the_fault"]])))
        drained = not r["kv_after"] and not r["running_after"] and (r["kv_before"] or 0) == 0
        lines.append(_verdict(drained, f"{tag}: KV pool back to empty after the load",
                              f"before {r['kv_before']}, after {r['kv_after']}, running {r['running_after']}"))
        lines.append(_verdict(bool(r["served_after"]), f"{tag}: a normal request served after the load", ""))
        if r["offline_compared"]:
            share = r["offline_identical"] / r["offline_compared"]
            lines.append(_verdict(share >= IDENTITY_TARGET, f"{tag}: greedy replies = offline on {share:.1%}",
                                  f"differing: {r['offline_differing'][:10]}"))
    return lines


def _verdict(ok: bool, what: str, why: str) -> str:
    return f"ok    {what}" if ok else f"FAIL  {what}: {why}"


def _environment() -> dict[str, Any]:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=DATA).stdout.strip()
    return {"git_sha": sha, "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def _write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
