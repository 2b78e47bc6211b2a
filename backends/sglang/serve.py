"""``dynts-bench serve --backend sglang``: SGLang's OpenAI-compatible server with a policy inside its scheduler.

SGLang's server runs its scheduler in a child process, so the policy travels as a JSON ``ServeSpec`` in the
environment (``backends.serving``); the plugin's ``Scheduler.__init__`` hook rebuilds and prepares it there. Every
request without our ``custom_params`` (every OpenAI client's) runs under the served schedule; with ``stats`` set,
one JSON line per finished request (compactions, freed slots, peak slots, lowest free count, policy seconds) is
appended to that file. The server's flags are the in-process backend's (``backend.engine_args``), checked by the
same ``checks.check_engine_args``; server warm-up is skipped, as in-process (its request would be served under
the policy and counted in the stats).

The process is this module run as a script: on CPU it puts SGLang's CPU platform and the CPU shim in place
(``backend.prepare_cpu``) before SGLang is imported, then runs ``sglang.launch_server``'s entry point.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from backends.serving import API_KEY_ENV, SERVE_ENV, ServeSpec, prompt_refusal, served_spec
from backends.sglang.backend import engine_args
from backends.sglang.checks import check_engine_args

#: set in the server's environment on CPU: the launcher prepares SGLang's CPU path before importing it
CPU_ENV = "DYNTS_BENCH_SGLANG_CPU"


def server_flags(args: dict[str, Any]) -> list[str]:
    """``sglang.Engine`` keywords as ``launch_server`` flags (``True`` -> a bare switch; ``False`` / None: left out)."""
    flags: list[str] = []
    for key, value in args.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        flags.extend([flag] if value is True else [flag, str(value)])
    return flags


def server_command(spec: ServeSpec, path: str, host: str, port: int, batch_size: int, max_model_len: int,
                   device: str = "cpu", kv_tokens: int | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the server process: the adapter's flags set, never left to SGLang's defaults.

    ``kv_tokens``: a pool of that many slots (default: room for ``batch_size`` requests of ``max_model_len``).
    Prometheus metrics are on (``/metrics``: running requests, KV slots in use) for operators and load checks.
    """
    args = engine_args(path, device, spec.dtype, batch_size, max_model_len, kv_tokens)
    args.update(host=host, port=port, served_model_name=spec.model, log_level="info", enable_metrics=True)
    check_engine_args(args)
    argv = [sys.executable, "-m", "backends.sglang.serve", *server_flags(args)]
    env = dict(os.environ)
    env[SERVE_ENV] = spec.to_env()
    env.setdefault("OMP_NUM_THREADS", "1")
    if device == "cpu":
        env[CPU_ENV] = "1"
    root = str(Path(__file__).resolve().parents[2])  # the scheduler process imports backends.sglang.* by name
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return argv, env


def _freeze_gc_once_listening(original: Any, server_args: Any, *args: Any, **kwargs: Any) -> Any:
    """SGLang 0.5.23 posts ``/freeze_gc`` right after start when warm-up is skipped, before uvicorn listens, and
    logs the refused connection as a traceback: wait until the server answers, then let it."""
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(server_args.url() + "/model_info", timeout=5):
                break
        except OSError:
            time.sleep(1)
    return original(server_args, *args, **kwargs)


def refuse_unschedulable_prompts() -> None:
    """In the HTTP server process: SGLang's request-length check also applies the served schedule's limit
    (``backends.serving.prompt_refusal``), so such a request gets a 400 before it reaches the scheduler."""
    from sglang.srt.managers.tokenizer_manager import TokenizerManager

    original = TokenizerManager._validate_one_request
    spec = served_spec()

    def validate(self: TokenizerManager, obj: Any, input_ids: list[int]) -> None:
        original(self, obj, input_ids)
        reason = prompt_refusal(spec, len(input_ids) if input_ids is not None else 0)
        if reason is not None:
            raise ValueError(reason)

    TokenizerManager._validate_one_request = validate


def refuse_unknown_models() -> None:
    """In the HTTP server process: an OpenAI request naming a model this server does not serve gets a 404, as
    from vLLM's server (SGLang 0.5.23 serves whatever name is given; a request that names none is served)."""
    from sglang.srt.entrypoints.openai.protocol import DEFAULT_MODEL_NAME
    from sglang.srt.entrypoints.openai.serving_base import OpenAIServingBase

    original = OpenAIServingBase.handle_request

    async def handle_request(self: OpenAIServingBase, request: Any, raw_request: Any) -> Any:
        model = getattr(request, "model", None)
        served = self.tokenizer_manager.served_model_name
        if model and model != DEFAULT_MODEL_NAME and self._parse_model_parameter(model)[0] != served:
            return self.create_error_response(f"The model `{model}` does not exist: this server serves `{served}`.",
                                              err_type="NotFoundError", status_code=404)
        return await original(self, request, raw_request)

    OpenAIServingBase.handle_request = handle_request


def main(argv: list[str]) -> None:
    if os.environ.get(CPU_ENV) == "1":
        from backends.sglang.backend import prepare_cpu

        prepare_cpu()
    from sglang.launch_server import run_server
    from sglang.srt.plugins import load_plugins
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    HookRegistry.register("sglang.srt.entrypoints.http_server._freeze_gc_after_server_warmup",
                          _freeze_gc_once_listening, HookType.AROUND)
    load_plugins()  # applies the hooks, ours (entry point) and the one above
    refuse_unschedulable_prompts()
    refuse_unknown_models()
    if os.environ.get(API_KEY_ENV):  # the key travels in the environment, off the process's command line
        argv = [*argv, "--api-key", os.environ[API_KEY_ENV]]
    server_args = prepare_server_args(argv)
    check_engine_args(server_args)
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)


if __name__ == "__main__":
    main(sys.argv[1:])
