"""The small-scale load check both engines' suites run (``tests/{vllm,sglang}/test_serve_load.py``): a served
DynTS behind an API key takes concurrent streams with hang-ups, bad requests and an over-long prompt, drains its
pool, refuses requests without the key, and serves a normal request after; greedy replies equal offline."""

from __future__ import annotations

from pathlib import Path

from backends.base import Backend
from benchmarks.serve_load.__main__ import load_prompts, parse_args, serve_args
from benchmarks.serve_load.client import get, post
from benchmarks.serve_load.drive import drive, refuse_and_recover
from benchmarks.serve_load.load_report import summarize
from benchmarks.serve_load.offline import compare, offline_texts
from benchmarks.serve_load.server import serving
from benchmarks.serve_load.workload import CHAT, MixShares, bad_requests, build_mix

KEY = "test-key-7f3a"


def small_mix(prompts):
    """12 requests, 8 at a time: at least 2 hung up and 1 over-long prompt, the rest greedy or sampled."""
    mix = build_mix("tiny-reasoner", prompts, 12, seed=11, budget=86, max_tokens=600,
                    shares=MixShares(abort=0.0, long_prompt=0.0))
    hang_ups = build_mix("tiny-reasoner", prompts, 2, seed=12, budget=86, max_tokens=600,
                         shares=MixShares(stream=1.0, abort=1.0, long_prompt=0.0))
    long = build_mix("tiny-reasoner", prompts, 1, seed=13, budget=86, max_tokens=600,
                     shares=MixShares(chat=0.0, long_prompt=1.0, abort=0.0))
    return [*mix, *[_renamed(r, f"hang-up-{i}") for i, r in enumerate(hang_ups)], _renamed(long[0], "long-0")]


def _renamed(request, name):
    from dataclasses import replace

    return replace(request, request_id=name)


def check_a_loaded_server(backend: str, workdir: Path, kv_tokens: int, engine: Backend) -> dict:
    """Run the load; return the summary (the caller checks engine-specific pool facts). ``engine``: the test
    session's in-process backend, for the offline replay (closing a second in-process vLLM engine would tear down
    the distributed groups the session's engine uses)."""
    args = parse_args(["--backend", backend, "-p", "dynts", "--concurrency", "8", "--kv-tokens", str(kv_tokens)])
    prompts, limit = load_prompts("tiny-reasoner", None)
    mix = small_mix(prompts)
    normal = next(r for r in mix if r.comparable and r.path == CHAT)
    with serving(workdir, backend, serve_args(args, "dynts"), api_key=KEY) as server:
        no_key = post(server.port, normal.path, normal.body, stream=normal.stream)
        wrong_key = post(server.port, normal.path, normal.body, stream=normal.stream, api_key="wrong")
        health = get(server.port, "/health")[0]
        result = drive(server, "dynts", mix, concurrency=8, time_limit_s=900)
        refuse_and_recover(server, result, bad_requests("tiny-reasoner", prompts, limit), normal)
        metrics = get(server.port, "/metrics")[1]
    comparable = [r for r in mix if r.comparable]
    offline = offline_texts(backend, "tiny-reasoner", "dynts", {"budget": 86, "window": 32, "interval": 16},
                            comparable, 600, 8, backend=engine)
    served = {r.request_id: o.texts.get(0, "") for r, o in result.replies if r.comparable and o.status == 200}
    by_id = {r.request_id: r for r in mix}
    identical = {rid: compare(by_id[rid], text, offline[rid]) for rid, text in served.items()}
    summary = summarize(result, identical, budgeted=True)
    summary.update(no_key=no_key.status, wrong_key=wrong_key.status, health_without_key=health, metrics=metrics,
                   hang_ups=sum(o.aborted for _, o in result.replies))
    return summary


def assert_held(summary: dict) -> None:
    """What every engine must show after the small load."""
    assert summary["no_key"] == 401 and summary["wrong_key"] == 401 and summary["health_without_key"] == 200
    assert summary["failed_5xx"] == 0, summary["errors"]
    assert summary["hang_ups"] == 2
    assert summary["must_be_refused"] == 1 and summary["refused_as_expected"] == 1
    assert not summary["refused_unexpectedly"]
    assert all(b["names_the_fault"] for b in summary["bad_requests"]), summary["bad_requests"]
    assert len(summary["bad_requests"]) == 5
    assert summary["kv_before"] == 0 and summary["kv_after"] == 0 and not summary["running_after"]
    assert summary["kv_peak"] is not None and summary["kv_peak"] > 0
    assert summary["served_after"]
    assert summary["compactions"] > 0
    assert summary["offline_compared"] >= 3 and summary["offline_identical"] == summary["offline_compared"], \
        summary["offline_differing"]
