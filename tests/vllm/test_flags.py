"""The vllm backend's engine flags per device and its CUDA-graph decision per policy: set or refused up front,
one line each. The decision table is written out by policy name, not derived from the code's rule."""

from __future__ import annotations

from unittest import mock

import pytest

from backends.base import BackendError
from backends.vllm.checks import check_engine_config, engine_flags, graphs_refusal
from zoo import build_policy

#: may a policy run with CUDA graphs on (``enforce_eager=False``)? hidden states come from the runner's output
#: (graph replay fills it); queries from forward pre-hooks (replay skips them)
GRAPHS_ALLOWED = {"full": True, "window": True, "streamingllm": True, "sepllm": True, "random": True,
                  "oracle": True, "dynts": True, "snapkv": False, "tova": False, "rkv": False}


@pytest.mark.parametrize("name", GRAPHS_ALLOWED)
def test_cuda_graphs_are_kept_or_refused_per_policy(name):
    needs = build_policy(name).needs
    assert graphs_refusal(needs, enforce_eager=True) is None  # eager: every policy runs
    reason = graphs_refusal(needs, enforce_eager=False)
    assert (reason is None) == GRAPHS_ALLOWED[name]
    if reason is not None:
        assert "enforce_eager" in reason and "\n" not in reason


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_both_devices_get_the_flags_the_adapter_needs(device):
    flags = engine_flags(device)
    assert flags["async_scheduling"] is False and flags["enable_prefix_caching"] is False
    assert flags["enforce_eager"] is True
    assert flags["scheduler_cls"] == "backends.vllm.scheduler.CompactingScheduler"
    check_engine_config(flags)  # nothing the backend sets is something it refuses


@pytest.mark.parametrize("device,runner", [("cpu", "CPUModelRunner"), ("cuda", "GPUModelRunner")])
def test_each_devices_worker_class_installs_the_runner_vllm_builds_there(device, runner):
    pytest.importorskip("vllm")
    import importlib

    module, name = engine_flags(device)["worker_cls"].rsplit(".", 1)
    worker = getattr(importlib.import_module(module), name)
    assert worker.vllm_runner.__name__ == runner and issubclass(worker.compacting_runner, worker.vllm_runner)


def test_async_scheduling_is_refused_with_one_line():
    with pytest.raises(BackendError, match="async_scheduling=False") as raised:
        check_engine_config({**engine_flags("cuda"), "async_scheduling": True})
    assert "\n" not in str(raised.value)


def test_cuda_without_a_visible_gpu_is_one_line_and_other_indices_name_the_fix():
    from backends.vllm.backend import engine_device

    with mock.patch("torch.cuda.is_available", return_value=False):
        with pytest.raises(BackendError, match="no CUDA GPU is visible") as raised:
            engine_device("cuda")
    assert "\n" not in str(raised.value)
    with pytest.raises(BackendError, match="CUDA_VISIBLE_DEVICES"):
        engine_device("cuda:1")
    with mock.patch("torch.cuda.is_available", return_value=True):
        assert engine_device("cuda") == "cuda" and engine_device("cuda:0") == "cuda"
    assert engine_device("cpu") == "cpu"


@pytest.mark.parametrize("device,worker", [("cpu", "backends.vllm.runner.CompactingCPUWorker"),
                                           ("cuda", "backends.vllm.gpu_worker.CompactingGPUWorker")])
def test_the_server_command_runs_each_devices_worker_with_the_same_flags(device, worker, monkeypatch):
    from backends.serving import ServeSpec
    from backends.vllm.serve import server_command

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    argv, env = server_command(ServeSpec("window", {}, None, "tiny-reasoner", "float32"), "/m", "127.0.0.1", 8000,
                               4, 1024, device=device)
    assert argv[argv.index("--worker-cls") + 1] == worker
    for flag in ("--enforce-eager", "--no-async-scheduling", "--no-enable-prefix-caching"):
        assert flag in argv
    assert env["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    assert ("VLLM_CPU_KVCACHE_SPACE" in env) == (device == "cpu")


@pytest.mark.parametrize("command", [["serve", "--dry-run"], ["run", "--limit", "1"]])
def test_device_cuda_without_a_visible_gpu_is_one_line_for_run_and_serve(command, tmp_path):
    pytest.importorskip("vllm")
    from typer.testing import CliRunner

    from harness.cli import app

    with mock.patch("torch.cuda.is_available", return_value=False):
        result = CliRunner().invoke(app, [command[0], "--backend", "vllm", "--device", "cuda", "-p", "window",
                                          "--budget", "86", *command[1:]] + (["--out", str(tmp_path)] if
                                                                              command[0] == "run" else []))
    assert result.exit_code == 2, result.output
    assert "no CUDA GPU is visible" in result.output and "Traceback" not in result.output
