"""``dynts-bench serve --backend sglang`` end to end: SGLang's HTTP server (scheduler in its own process, the
policy rebuilt there from the environment) with DynTS inside, against the in-process backend running the same
policy on the same prompts."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sglang", reason="SGLang is not installed here: backends/sglang/install_cpu_env.sh makes its venv")

from backends.sglang.serve import server_command  # noqa: E402
from tests.served import chat_answer, post, running_server  # noqa: E402
from tests.sglang.test_engine import BUDGET, GREEDY, make_policy, requests_for  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("serve"), "--backend", "sglang", "-p", "dynts",
                        "--budget", str(BUDGET.budget), "--window", str(BUDGET.window),
                        "--interval", str(BUDGET.interval), "--batch-size", "4") as running:
        yield running


def stats_rows(stats) -> list[dict]:
    return [json.loads(line) for line in stats.read_text().splitlines()] if stats.exists() else []


def test_served_dynts_generates_what_the_in_process_backend_does(server, sglang_backend, problems):
    """Requests without our options (SGLang's native /generate here) get the served schedule: the same tokens,
    compacted as often, as the in-process backend; the health checks the test polled with are not counted."""
    port, stats, _ = server
    requests = requests_for(sglang_backend, problems, 4)
    policy = make_policy("dynts")
    sglang_backend.prepare(policy)
    expected = sglang_backend.generate(requests, policy, BUDGET, GREEDY)
    served = [post(port, "/generate", {"input_ids": list(r.prompt_ids), "sampling_params": {
        "max_new_tokens": GREEDY.max_new_tokens, "temperature": 0,
        "stop_token_ids": sorted(sglang_backend.eos_ids)}}) for r in requests]
    for want, got in zip(expected, served):
        assert got["output_ids"] == want.output_ids, want.request_id
    rows = stats_rows(stats)
    assert len(rows) == len(requests)
    by_length = sorted(rows, key=lambda r: (r["output_tokens"], r["compactions"]))
    for row, want in zip(by_length, sorted(expected, key=lambda r: (r.generated_tokens, r.compressions))):
        assert row["output_tokens"] == want.generated_tokens
        assert row["compactions"] == want.compressions > 0
        assert row["freed_slots"] == want.extra["kv_freed_slots"] > 0
        assert row["peak_physical_tokens"] <= BUDGET.steady_capacity()


def test_openai_chat_requests_get_the_served_policy(server, problems):
    port, stats, log = server
    before = len(stats_rows(stats))
    problem = problems[0]
    text = chat_answer(port, problem)
    assert text.rstrip().endswith(f"answer {problem['answer']}")
    rows = stats_rows(stats)[before:]
    assert len(rows) == 1 and rows[0]["compactions"] > 0
    assert "Traceback" not in log.read_text()  # nothing logged as a failure on the way (start, freeze_gc, requests)


def test_server_flags_parse_into_the_arguments_the_backend_runs_with():
    """The server command is the in-process engine's keywords as flags: SGLang's own parser reads them back."""
    from sglang.srt.server_args import prepare_server_args

    from backends.hf.facts import model_directory
    from backends.serving import ServeSpec
    from backends.sglang.backend import engine_args
    from backends.sglang.checks import check_engine_args

    path = model_directory("tiny-reasoner")[0]
    argv, env = server_command(ServeSpec("window", {}, BUDGET.to_dict(), "tiny-reasoner", "float32"), path,
                               "127.0.0.1", 8000, 4, 1024)
    parsed = prepare_server_args(argv[argv.index("backends.sglang.serve") + 1:])
    check_engine_args(parsed)
    expected = engine_args(path, "cpu", "float32", 4, 1024, None)
    expected.update(log_level="info", port=8000, served_model_name="tiny-reasoner")
    assert {key: getattr(parsed, key) for key in expected} == expected
    assert json.loads(env["DYNTS_BENCH_SERVE"])["schedule"] == BUDGET.to_dict()


def test_the_cuda_server_command_parses_into_sglangs_arguments_with_graphs_off_and_page_size_1():
    """Parsed by SGLang's own parser on this CPU machine: the flags the CUDA server runs with."""
    from sglang.srt.server_args import prepare_server_args

    from backends.hf.facts import model_directory
    from backends.serving import ServeSpec
    from backends.sglang.checks import check_engine_args, policy_refusal
    from zoo import build_policy

    path = model_directory("tiny-reasoner")[0]
    argv, env = server_command(ServeSpec("snapkv", {}, BUDGET.to_dict(), "tiny-reasoner", "bfloat16"), path,
                               "127.0.0.1", 8000, 4, 1024, "cuda")
    parsed = prepare_server_args(argv[argv.index("backends.sglang.serve") + 1:])
    check_engine_args(parsed)
    assert policy_refusal(parsed, build_policy("snapkv").needs) is None
    assert (parsed.device, parsed.page_size, parsed.attention_backend) == ("cuda", 1, "flashinfer")
    assert parsed.disable_cuda_graph and parsed.disable_prefill_cuda_graph and parsed.disable_decode_cuda_graph
    assert not parsed.enable_torch_compile


def test_serve_on_cuda_without_a_visible_gpu_is_one_line():
    from unittest import mock

    from typer.testing import CliRunner

    from harness.cli import app

    with mock.patch("torch.cuda.is_available", return_value=False):
        result = CliRunner().invoke(app, ["serve", "--backend", "sglang", "--device", "cuda", "-p", "window",
                                          "--budget", "86", "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "no CUDA GPU is visible" in result.output and "Traceback" not in result.output
