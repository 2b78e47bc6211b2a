"""The serve load generator's parts that need no engine (``benchmarks/serve_load``), the API-key and exposure
rules of ``dynts-bench serve``, and the served schedule's prompt limit. The load run against real servers is in
``tests/{vllm,sglang}/test_serve_load.py``."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from backends.serving import ServeSpec, prompt_refusal
from benchmarks.serve_load.client import post
from benchmarks.serve_load.drive import refusal_names_the_fault
from benchmarks.serve_load.load_report import percentile
from benchmarks.serve_load.server import gauge
from benchmarks.serve_load.workload import CHAT, MixShares, Prompts, bad_requests, build_mix
from harness.cli import app
from harness.cli.serve_policy import check_exposure, is_loopback
from harness.runs.options import OptionError


def test_percentile_interpolates_between_closest_ranks():
    values = [4.0, 1.0, 3.0, 2.0]  # ranks 0..3 of 1, 2, 3, 4: p50 at rank 1.5, p90 at 2.7, p99 at 2.97
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None


def test_gauge_sums_label_sets_and_ignores_other_metrics():
    metrics = ("# HELP vllm:kv_cache_usage_perc KV usage\n# TYPE vllm:kv_cache_usage_perc gauge\n"
               'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25\n'
               'vllm:kv_cache_usage_perc_total{engine="0"} 9\n'
               "sglang:num_used_tokens 12.0\n")
    assert gauge(metrics, "vllm:kv_cache_usage_perc") == 0.25
    assert gauge(metrics, "sglang:num_used_tokens") == 12.0
    assert gauge(metrics, "vllm:num_requests_running") is None


PROMPTS = Prompts(texts=[f"sum a {i} b {i + 1}" for i in range(10)],
                  ids=[[1, 2, 3, 4, 5, 6, 7, 8, 9, 10 + i] for i in range(10)], stop_ids=[0])


def test_the_mix_is_the_same_for_a_seed_and_its_shares_hold():
    one = build_mix("m", PROMPTS, 2000, seed=3, budget=86, max_tokens=600)
    assert one == build_mix("m", PROMPTS, 2000, seed=3, budget=86, max_tokens=600)
    assert one != build_mix("m", PROMPTS, 2000, seed=4, budget=86, max_tokens=600)
    share = lambda pred: sum(map(pred, one)) / len(one)  # noqa: E731
    assert share(lambda r: r.path == CHAT) == pytest.approx(0.5, abs=0.05)
    assert share(lambda r: r.abort_after is not None) == pytest.approx(0.75 * 0.1, abs=0.02)
    assert share(lambda r: r.n == 2) == pytest.approx(0.4 * 0.1, abs=0.015)
    assert share(lambda r: r.long_prompt) == pytest.approx(0.5 * 0.05, abs=0.01)


def test_requests_compared_with_offline_are_greedy_single_read_through_and_servable():
    mix = build_mix("m", PROMPTS, 500, seed=0, budget=86, max_tokens=600)
    for r in mix:
        body = json.loads(r.body)
        if r.comparable:
            assert body["temperature"] == 0 and body["n"] == 1 and r.abort_after is None and not r.long_prompt
        if r.long_prompt:  # longer than the budget leaves beside the 32-token window: refused only under a budget
            assert len(body["prompt"]) > 86 and r.must_be_refused(True) and not r.must_be_refused(False)
        if r.abort_after is not None:
            assert body["stream"]
        if body["temperature"] > 0:
            assert "seed" in body


def test_a_long_prompt_is_whole_prompts_joined():
    mix = build_mix("m", PROMPTS, 50, seed=1, budget=25, max_tokens=8,
                    shares=MixShares(chat=0.0, long_prompt=1.0))
    ids = json.loads(mix[0].body)["prompt"]
    assert len(ids) > 25 and len(ids) % 10 == 0 and ids[-10:] == PROMPTS.ids[0]


def test_each_bad_request_breaks_one_rule():
    bad = {r.bad: json.loads(r.body) if r.bad != "malformed-json" else r.body for r in bad_requests("m", PROMPTS, 1024)}
    with pytest.raises(ValueError):
        json.loads(bad["malformed-json"])
    assert bad["unknown-model"]["model"] != "m"
    assert bad["max-tokens-too-large"]["max_tokens"] > 1024
    assert bad["negative-temperature"]["temperature"] < 0
    assert bad["empty-prompt"]["prompt"] == ""


class _Events(BaseHTTPRequestHandler):
    """A stand-in server: /v1/chat/completions streams 50 events 20 ms apart; /bad answers 400."""

    broken = threading.Event()

    def do_POST(self):  # noqa: N802 (the stdlib's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/bad":
            body = json.dumps({"error": {"message": "temperature must be non-negative", "code": 400}}).encode()
            self.send_response(400)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for i in range(50):
                chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": f" w{i}"}}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.02)
            usage = {"object": "chat.completion.chunk", "choices": [], "usage": {"completion_tokens": 50}}
            self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            type(self).broken.set()

    def log_message(self, *args):
        pass


@pytest.fixture()
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Events)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Events.broken.clear()
    yield server.server_address[1]
    server.shutdown()


def test_a_stream_is_read_to_the_end_with_its_first_token_time(stand_in):
    outcome = post(stand_in, CHAT, b"{}", stream=True)
    assert outcome.status == 200 and not outcome.aborted
    assert outcome.texts[0] == "".join(f" w{i}" for i in range(50))
    assert outcome.output_tokens == 50
    assert 0 < outcome.ttft_s < outcome.latency_s and outcome.latency_s >= 50 * 0.02


def test_an_aborted_stream_hangs_up_and_the_server_sees_it(stand_in):
    outcome = post(stand_in, CHAT, b"{}", stream=True, abort_after=3)
    assert outcome.aborted and outcome.texts[0] == " w0 w1 w2" and not outcome.failed
    assert _Events.broken.wait(5), "the server never saw the connection close"


def test_a_refusal_keeps_the_servers_message(stand_in):
    outcome = post(stand_in, "/bad", b"{}", stream=False)
    assert outcome.refused and outcome.error == "temperature must be non-negative"
    [negative] = [r for r in bad_requests("m", PROMPTS, 1024) if r.bad == "negative-temperature"]
    assert refusal_names_the_fault(negative, outcome)


def test_a_connection_refused_is_a_failure_not_a_refusal():
    from benchmarks.serve_load.server import free_port

    outcome = post(free_port(), CHAT, b"{}", stream=False)
    assert outcome.status == 0 and outcome.failed and not outcome.refused


SCHEDULE = {"mode": "budget", "budget": 86, "interval": 16, "window": 32, "trigger_len": None, "ratio": 0.4,
            "protect_prompt": True}


def test_the_served_schedule_admits_prompts_that_leave_room_for_the_window():
    spec = ServeSpec("dynts", {}, SCHEDULE, "tiny-reasoner", "float32")
    assert prompt_refusal(spec, 53) is None  # 53 + 32 = 85 < 86
    reason = prompt_refusal(spec, 54)
    assert reason is not None and "54 tokens" in reason and "at most 53" in reason
    assert prompt_refusal(ServeSpec("dynts", {}, {**SCHEDULE, "protect_prompt": False}, "m", "float32"), 500) is None
    assert prompt_refusal(ServeSpec("full", {}, None, "m", "float32"), 5000) is None
    assert prompt_refusal(None, 5000) is None


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("10.1.2.3", False),
                                            ("example.com", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_exposure_needs_a_key_or_an_explicit_opt_out():
    check_exposure("127.0.0.1", None, False)
    check_exposure("0.0.0.0", "k3y", False)
    check_exposure("0.0.0.0", None, True)
    with pytest.raises(OptionError, match="--api-key"):
        check_exposure("0.0.0.0", None, False)
    with pytest.raises(OptionError, match="empty"):
        check_exposure("127.0.0.1", "  ", False)


def test_serve_on_a_public_address_without_a_key_is_one_line_exit_2():
    result = CliRunner().invoke(app, ["serve", "--backend", "vllm", "-p", "dynts", "--host", "0.0.0.0"],
                                catch_exceptions=False)
    assert result.exit_code == 2
    [line] = result.output.strip().splitlines()
    assert "--api-key" in line and "--allow-unauthenticated" in line

