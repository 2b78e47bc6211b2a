"""The SGLang plugin (entry point ``sglang.srt.plugins`` -> ``dynts_bench``): hooks that run a policy.

SGLang calls ``register()`` early in every process it starts (engine, scheduler, detokenizer); the hooks only
act in a scheduler whose ``dynts_configure`` was called (``Engine.collective_rpc("dynts_configure", ...)``, or
``configure`` directly in-process), or that runs under ``dynts-bench serve`` (the policy from the environment,
``backends.serving``), so an engine without a policy is vanilla SGLang. Hooks, all through
``HookRegistry`` (no SGLang file is patched):

* BEFORE ``ScheduleBatch.prepare_for_decode``    -> compaction of due requests (``runtime.before_decode``);
* AFTER  ``ForwardBatch.init_new``               -> step layout, logical decode positions;
* BEFORE ``RadixAttention.forward``              -> post-RoPE queries (every attention backend calls through it);
* BEFORE ``LogitsProcessor.forward``             -> final hidden states, ``Policy.observe``;
* BEFORE ``mem_cache.common.release_kv_cache``   -> a finished / aborted / retracted request is forgotten;
* AROUND ``PrefillAdder.add_one_req`` / ``._get_running_request_total_token_offset`` -> admission reserves what a
  compacting request can hold (its schedule's capacity), not its whole generation limit.

A release other than ``checks.PINNED_SGLANG`` registers nothing and says so in one log line (SGLang logs and
swallows plugin exceptions); the backend refuses it before starting an engine.
"""

from __future__ import annotations

import base64
import logging
import pickle
import types
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backends.base import BackendError
from backends.serving import ServeSpec, build_served_policy, served_spec, write_stats
from backends.sglang.checks import check_version, policy_refusal, refusal
from backends.sglang.runtime import KVStats, SchedulerRuntime
from zoo.base import Policy

logger = logging.getLogger("dynts_bench.sglang")

#: the runtime of this process's scheduler, None until a policy is configured (one scheduler per process)
_RUNTIME: SchedulerRuntime | None = None
_REGISTERED = False

TARGETS = {
    "prepare_for_decode": "sglang.srt.managers.schedule_batch.ScheduleBatch.prepare_for_decode",
    "init_new": "sglang.srt.model_executor.forward_batch_info.ForwardBatch.init_new",
    "attention": "sglang.srt.layers.radix_attention.RadixAttention.forward",
    "logits": "sglang.srt.layers.logits_processor.LogitsProcessor.forward",
    "release": "sglang.srt.mem_cache.common.release_kv_cache",
    "scheduler": "sglang.srt.managers.scheduler.Scheduler.__init__",
    "admit": "sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req",
    "reserved": "sglang.srt.managers.schedule_policy.PrefillAdder._get_running_request_total_token_offset",
}


def runtime() -> SchedulerRuntime | None:
    return _RUNTIME


def configure(policy: Policy | None, think_end_id: int | None, req_to_token_pool: Any, token_to_kv_pool: Any,
              allocator: Any, server_args: Any = None, stats_dir: str | None = None,
              served: ServeSpec | None = None) -> SchedulerRuntime | None:
    """Bind ``policy`` to one scheduler's pools (None: vanilla SGLang again). Refuses unsupported engine args."""
    global _RUNTIME
    if not _REGISTERED:
        raise BackendError("the dynts_bench SGLang plugin is not loaded: pip install -e . in the SGLang environment "
                           "(entry point sglang.srt.plugins) and keep SGLANG_PLUGINS unset or naming dynts_bench")
    if server_args is not None:
        reason = refusal(server_args) or (None if policy is None else policy_refusal(server_args, policy.needs))
        if reason is not None:
            raise BackendError(reason)
    _RUNTIME = None
    if policy is not None:  # one that never evicts is tracked too (pool use, timing); it compacts nothing
        _RUNTIME = SchedulerRuntime(
            policy, think_end_id, req_to_token_pool, token_to_kv_pool, allocator,
            Path(stats_dir) if stats_dir else None,
            default_options=None if served is None else served.default_options,
            on_finished=None if served is None else lambda stats, req: _served_stats(served, stats, req))
    return _RUNTIME


def _served_stats(spec: ServeSpec, stats: KVStats, req: Any) -> None:
    write_stats(spec, {"request_id": req.rid, "output_tokens": len(req.output_ids), **asdict(stats)})


def _configure_served(scheduler: Any) -> None:
    """Under ``dynts-bench serve`` the policy comes from the environment (``backends.serving``)."""
    spec = served_spec()
    if spec is None:
        return
    from backends.hf.facts import ModelFacts

    policy, think_end_id = build_served_policy(spec, ModelFacts(spec.model, spec.dtype))
    configure(policy, think_end_id, scheduler.req_to_token_pool, scheduler.token_to_kv_pool_allocator.get_kvcache(),
              scheduler.token_to_kv_pool_allocator, scheduler.server_args, served=spec)


def _scheduler_configure(self: Any, policy_b64: str = "", think_end_id: int | None = None,
                         stats_dir: str | None = None) -> None:
    """``Scheduler.dynts_configure``: what ``Engine.collective_rpc("dynts_configure", ...)`` calls. SGLang's RPC
    carries flat scalars, so the prepared policy comes pickled (from the backend in the parent process)."""
    policy = pickle.loads(base64.b64decode(policy_b64)) if policy_b64 else None
    configure(policy, think_end_id, self.req_to_token_pool, self.token_to_kv_pool_allocator.get_kvcache(),
              self.token_to_kv_pool_allocator, self.server_args, stats_dir)


# ---------------------------------------------------------------------- hooks (no-ops without a runtime)
def _before_prepare_for_decode(batch: Any, *args: Any, **kwargs: Any) -> None:
    if _RUNTIME is not None:
        _RUNTIME.before_decode(batch)


def _after_init_new(result: Any, cls: Any, batch: Any, *args: Any, **kwargs: Any) -> None:
    if _RUNTIME is not None:
        _RUNTIME.after_forward_batch(result, batch)


def _before_attention(layer: Any, q: Any, *args: Any, **kwargs: Any) -> None:
    if _RUNTIME is not None:
        _RUNTIME.on_queries(layer.layer_id, q, layer.tp_q_head_num, layer.qk_head_dim)


def _before_logits(processor: Any, input_ids: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> None:
    if _RUNTIME is not None:
        _RUNTIME.on_hidden(hidden_states, input_ids)


def _before_release(req: Any, *args: Any, **kwargs: Any) -> None:
    if _RUNTIME is not None:
        _RUNTIME.on_release(req)


def _around_add_one_req(original: Any, adder: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    """SGLang admits a request only if its prompt plus its whole ``max_new_tokens`` fit in the pool; under a
    schedule it never holds more than the schedule's capacity, so admission reserves that (for the call only)."""
    bound = None if _RUNTIME is None else _RUNTIME.admission_max_new_tokens(req)
    if bound is None:
        return original(adder, req, *args, **kwargs)
    params = req.sampling_params
    limit, params.max_new_tokens = params.max_new_tokens, bound
    try:
        return original(adder, req, *args, **kwargs)
    finally:
        params.max_new_tokens = limit


def _around_running_reservation(original: Any, adder: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
    reserved = original(adder, req, *args, **kwargs)
    return reserved if _RUNTIME is None else _RUNTIME.running_reservation(req, reserved)


def _after_scheduler_init(result: Any, scheduler: Any, *args: Any, **kwargs: Any) -> None:
    scheduler.dynts_configure = types.MethodType(_scheduler_configure, scheduler)
    _configure_served(scheduler)


def register() -> None:
    """The entry point SGLang calls: version check, then the hooks (applied by SGLang's ``load_plugins``)."""
    global _REGISTERED
    if _REGISTERED:
        return
    try:
        check_version()
    except BackendError as err:
        logger.error("dynts_bench plugin not loaded: %s", err)
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(TARGETS["prepare_for_decode"], _before_prepare_for_decode, HookType.BEFORE)
    HookRegistry.register(TARGETS["init_new"], _after_init_new, HookType.AFTER)
    HookRegistry.register(TARGETS["attention"], _before_attention, HookType.BEFORE)
    HookRegistry.register(TARGETS["logits"], _before_logits, HookType.BEFORE)
    HookRegistry.register(TARGETS["release"], _before_release, HookType.BEFORE)
    HookRegistry.register(TARGETS["scheduler"], _after_scheduler_init, HookType.AFTER)
    HookRegistry.register(TARGETS["admit"], _around_add_one_req, HookType.AROUND)
    HookRegistry.register(TARGETS["reserved"], _around_running_reservation, HookType.AROUND)
    _REGISTERED = True


def load() -> None:
    """Register and apply the hooks in this process now (tests, in-process use); idempotent."""
    register()
    if not _REGISTERED:
        check_version()  # says why in one line
    from sglang.srt.plugins.hook_registry import HookRegistry

    HookRegistry.apply_hooks()
