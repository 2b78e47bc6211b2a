"""``dynts-bench serve``: an engine's OpenAI-compatible server with one policy inside it.

The policy, schedule and model flags are ``run``'s (the same ``RunOptions`` fields, validated the same way:
unknown policy, predictor trained for other weights, impossible schedule -- one line, before any engine starts).
Every request the server receives is generated under the served policy and schedule.
"""

from __future__ import annotations

import inspect
import ipaddress
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.text import Text

from backends import BACKENDS
from backends.base import BackendError
from backends.hf.facts import ModelFacts
from backends.serving import API_KEY_ENV, SERVE_ENV, ServeSpec, build_served_policy
from harness.cli.app import console
from harness.runs.fingerprints import model_fingerprint
from harness.runs.options import OptionError, RunOptions, cli_parameters
from harness.runs.runplan import build_policies, build_schedule, check_binding, parse_policy_args

#: the ``run`` options that mean something to a server
SERVED_OPTIONS = ("policy", "backend", "model", "mode", "budget", "interval", "window", "trigger_len", "ratio",
                  "evict_prompt", "predictor", "policy_arg", "dtype", "device", "batch_size", "threads",
                  "tensor_parallel")


def served_policy(o: RunOptions) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """(policy name, ``build_policy`` options, schedule dict or None): what the engine process rebuilds."""
    if len(o.policy) != 1:
        raise OptionError("serve runs one policy: pass exactly one --policy NAME")
    policies = build_policies(o)
    name, policy = next(iter(policies.items()))
    capabilities = BACKENDS[o.backend].capabilities
    if capabilities is not None:
        capabilities.require(o.backend, policy)
    check_binding(policies, o.model, model_fingerprint(o.model))
    options = parse_policy_args(o.policy_arg, [name])[name]
    if policy.artefact():
        options["predictor"] = str(Path(policy.artefact()).resolve())
    schedule = build_schedule(o) if policy.evicts else None
    return name, options, None if schedule is None else schedule.to_dict()


def serve(**values: Any) -> None:
    """Serve one policy through an engine's OpenAI-compatible server (vLLM or SGLang)."""
    extra = {k: values.pop(k) for k in ("host", "port", "max_model_len", "kv_tokens", "stats", "dry_run")}
    api_key, open_door = values.pop("api_key"), values.pop("allow_unauthenticated")
    check_exposure(extra["host"], api_key, open_door)
    o = RunOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    if o.backend not in BACKENDS:
        raise BackendError(f"unknown backend {o.backend!r}: choose one of {', '.join(BACKENDS)}")
    if o.backend not in SERVERS:
        raise BackendError(f"serve supports --backend {', '.join(SERVERS)}; {o.backend} has no server here "
                           "(use `dynts-bench run` for offline generation)")
    reason = BACKENDS[o.backend].available()
    if reason is not None:
        raise BackendError(reason)
    o.check_device()
    name, options, schedule = served_policy(o)
    command, env, shown = SERVERS[o.backend](o, name, options, schedule, **extra)
    if api_key:
        env[API_KEY_ENV] = api_key
    say = lambda text: console.print(Text(text), highlight=False, soft_wrap=True)  # noqa: E731
    say(f"serving {o.model} with policy {name} (schedule: {schedule or 'none'}) on "
        f"http://{extra['host']}:{extra['port']}/v1" + (" (API key required)" if api_key else ""))
    if extra["dry_run"]:
        say("command: " + " ".join(command))
        say(f"environment: {shown}={env[shown]}")
        return
    os.execve(command[0], command, env)


def _param(name: str, hint: Any, default: Any, help: str, *flags: str, envvar: str | None = None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=hint,
                             default=typer.Option(default, *flags, help=help, envvar=envvar))


def check_exposure(host: str, api_key: str | None, allow_unauthenticated: bool) -> None:
    """Refuse to serve beyond this machine with no key: anyone who reaches the port could generate."""
    if api_key is not None and not api_key.strip():
        raise OptionError("--api-key is empty: pass a non-empty key (or leave the option out on loopback)")
    if api_key or allow_unauthenticated or is_loopback(host):
        return
    raise OptionError(f"--host {host} is reachable from other machines: pass --api-key KEY (or set "
                      f"{API_KEY_ENV}), or --allow-unauthenticated to serve it open")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve beyond this machine


def _served(o: RunOptions, name: str, options: dict[str, Any], schedule: dict[str, Any] | None,
            max_model_len: int | None, stats: Path | None) -> tuple[Any, Any, int]:
    """(spec, model facts, context length) of a server: the policy rebuilt once as the engine process will rebuild
    it, so a bad predictor fails here, in one line; ``--max-model-len`` checked against the model."""
    spec = ServeSpec(policy=name, options=options, schedule=schedule, model=o.model, dtype=o.dtype,
                     stats=None if stats is None else str(stats.resolve()))
    facts = ModelFacts(o.model, o.dtype)  # the directory the engine loads (GGUF / alias converted once)
    build_served_policy(spec, facts)
    limit = facts.position_limit
    if max_model_len is not None and max_model_len > limit:
        raise OptionError(f"--max-model-len {max_model_len} exceeds {o.model}'s {limit} positions")
    return spec, facts, max_model_len or limit


def _vllm_server(o: RunOptions, name: str, options: dict[str, Any], schedule: dict[str, Any] | None,
                 host: str, port: int, max_model_len: int | None, kv_tokens: int | None, stats: Path | None,
                 dry_run: bool) -> tuple[list[str], dict[str, str], str]:
    """(argv, environment, the environment variable that carries the policy) of vLLM's server."""
    from backends.vllm.serve import server_command

    spec, facts, context = _served(o, name, options, schedule, max_model_len, stats)
    command, env = server_command(spec, facts.path, host, port, o.batch_size, context,
                                  tensor_parallel=o.tensor_parallel, kv_tokens=kv_tokens, device=o.device)
    env["OMP_NUM_THREADS"] = str(o.threads or 1)
    return command, env, SERVE_ENV


def _sglang_server(o: RunOptions, name: str, options: dict[str, Any], schedule: dict[str, Any] | None,
                   host: str, port: int, max_model_len: int | None, kv_tokens: int | None,
                   stats: Path | None, dry_run: bool) -> tuple[list[str], dict[str, str], str]:
    """(argv, environment, the environment variable that carries the policy) of SGLang's server."""
    from backends.sglang.serve import server_command

    spec, facts, context = _served(o, name, options, schedule, max_model_len, stats)
    command, env = server_command(spec, facts.path, host, port, o.batch_size, context, o.device,
                                  kv_tokens=kv_tokens)
    env["OMP_NUM_THREADS"] = str(o.threads or 1)
    return command, env, SERVE_ENV


#: backends that can serve, and what builds their server command
SERVERS = {"vllm": _vllm_server, "sglang": _sglang_server}


#: run's options that serve shares, then the server's own
SERVE_PARAMETERS = cli_parameters(SERVED_OPTIONS) + [
    _param("host", str, "127.0.0.1", "Address to listen on."),
    _param("port", int, 8000, "Port to listen on."),
    _param("max_model_len", Optional[int], None, "Longest prompt + generation (default: the model's limit)."),
    _param("kv_tokens", Optional[int], None, "Size the engine's KV pool to this many tokens (default: the engine's "
           "own sizing); a fixed pool is how eviction's capacity gain shows as throughput."),
    _param("api_key", Optional[str], None, f"Require 'Authorization: Bearer KEY' on the API (also read from "
           f"${API_KEY_ENV}; passed to the engine through its environment, never its command line).",
           envvar=API_KEY_ENV),
    _param("allow_unauthenticated", bool, False, "Serve on a non-loopback address without an API key.",
           "--allow-unauthenticated"),
    _param("stats", Optional[Path], None, "Append one JSON line per finished request (compactions, blocks "
           "freed, peak blocks, policy seconds) to this file."),
    _param("dry_run", bool, False, "Print the server command and exit.", "--dry-run"),
]
serve.__signature__ = inspect.Signature(SERVE_PARAMETERS)  # type: ignore[attr-defined]
