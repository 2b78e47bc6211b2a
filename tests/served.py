"""Helpers of the ``dynts-bench serve`` end-to-end tests (vLLM and SGLang): start the server as a user would,
wait until it answers, post JSON, stop it with its whole process group."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

STARTUP_S = 480  # the engine process loads the model and warms up: 1-3 minutes on 2 busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def completion(port: int, prompt_ids: list[int], stop_ids: set[int] | frozenset[int]) -> dict:
    """A greedy vLLM completion of ``prompt_ids`` (600 new tokens at most, stopping at ``stop_ids``) with its
    token ids: the reply's first choice."""
    return post(port, "/v1/completions", {
        "model": "tiny-reasoner", "prompt": prompt_ids, "max_tokens": 600, "temperature": 0,
        "return_token_ids": True, "stop_token_ids": sorted(stop_ids)})["choices"][0]


def chat_answer(port: int, problem: dict) -> str:
    """An OpenAI chat completion of ``problem``'s prompt, greedy, as any client sends it: the reply's text."""
    reply = post(port, "/v1/chat/completions", {
        "model": "tiny-reasoner", "messages": [{"role": "user", "content": problem["prompt"]}],
        "max_tokens": 600, "temperature": 0})
    return reply["choices"][0]["message"]["content"]


def wait_healthy(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return
        except OSError:
            time.sleep(3)
    pytest.fail(f"the server did not come up in {STARTUP_S} s:\n{log.read_text()[-3000:]}")


@contextmanager
def running_server(root: Path, *args: str) -> Iterator[tuple[int, Path, Path]]:
    """``dynts-bench serve ARGS --port P --stats FILE`` in its own process group: yields (port, stats, log)."""
    port, stats, log = free_port(), root / "stats.jsonl", root / "server.log"
    command = [sys.executable, "-m", "harness.cli", "serve", *args, "--port", str(port), "--stats", str(stats)]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    try:
        wait_healthy(port, process, log)
        yield port, stats, log
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=30)
