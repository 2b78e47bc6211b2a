"""vLLM scheduler that mirrors the worker's compactions (installed with ``--scheduler-cls``).

The scheduler keeps counting logical tokens (``Request.num_computed_tokens``: what positions, max_model_len and
outputs are about); only block accounting becomes physical. ``CompactingFullAttentionManager`` is vLLM's
``FullAttentionManager`` with ``get_num_blocks_to_allocate`` and ``allocate_new_blocks`` computing blocks for
``num_tokens - dropped[request]``, ``free`` / ``pop_blocks_for_free`` forgetting ``dropped`` (finish, abort,
preemption), and ``release_tail`` returning a compacted request's tail blocks to the ``BlockPool``.
``CompactingScheduler.update_from_output`` applies the worker's reports before vLLM's own bookkeeping (which may
then free the rest of a request finishing in the same step).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager

from backends.base import BackendError
from backends.serving import served_spec, write_stats
from backends.vllm.runtime import EXTRA_KEY


class CompactingFullAttentionManager(FullAttentionManager):
    """``FullAttentionManager`` whose block counts are physical (module docstring)."""

    dropped: dict[str, int]

    def get_num_blocks_to_allocate(self, request_id: str, num_tokens: int, *args: Any, **kwargs: Any) -> int:
        return super().get_num_blocks_to_allocate(request_id, num_tokens - self.dropped.get(request_id, 0),
                                                  *args, **kwargs)

    def allocate_new_blocks(self, request_id: str, num_tokens: int, num_tokens_main_model: int) -> list:
        d = self.dropped.get(request_id, 0)
        return super().allocate_new_blocks(request_id, num_tokens - d, num_tokens_main_model - d)

    def pop_blocks_for_free(self, request_id: str) -> list:
        self.dropped.pop(request_id, None)
        return super().pop_blocks_for_free(request_id)

    def release_tail(self, request_id: str, kept_blocks: int, dropped: int) -> int:
        """Free every block after the first ``kept_blocks`` of a compacted request; returns how many."""
        blocks = self.req_to_blocks.get(request_id)
        if blocks is None:
            return 0
        tail = blocks[kept_blocks:]
        del blocks[kept_blocks:]
        self.num_cached_block[request_id] = min(self.num_cached_block.get(request_id, 0), kept_blocks)
        self.dropped[request_id] = dropped
        self.block_pool.free_blocks(reversed(tail))
        return len(tail)


@dataclass
class RequestKV:
    """vLLM-side KV usage of one request, read by the backend when it finishes."""

    peak_blocks: int = 0
    peak_physical_tokens: int = 0
    compactions: int = 0
    freed_blocks: int = 0
    min_free_blocks: int = -1  # fewest free blocks in the pool while this request ran
    policy_s: float = 0.0  # worker time in observe + score + select + evict for this request
    preemptions: int = 0  # times vLLM preempted it (the pool ran out of blocks); its resume recomputes everything


class CompactingScheduler(Scheduler):
    """vLLM ``Scheduler`` + physical block accounting (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        managers = self.kv_cache_manager.coordinator.single_type_managers
        if len(managers) != 1 or type(managers[0]) is not FullAttentionManager:
            kinds = ", ".join(type(m).__name__ for m in managers)
            raise BackendError(f"the vllm backend compacts one full-attention KV group only, this model has {kinds}: "
                               "use --backend transformers")
        if self.cache_config.enable_prefix_caching:
            raise BackendError("the vllm backend needs prefix caching off (enable_prefix_caching=False): compacted "
                               "blocks no longer hold the tokens their hashes name")
        self.manager: CompactingFullAttentionManager = managers[0]  # type: ignore[assignment]
        self.manager.__class__ = CompactingFullAttentionManager
        self.manager.dropped = {}
        self.kv_stats: dict[str, RequestKV] = {}
        self.peak_running = 0  # most requests running in one step (a full pool makes vLLM queue the rest)
        self.served = served_spec()  # under ``dynts-bench serve``: stats of finished requests go to its file

    def _stats_key(self, request: Any) -> str | None:
        params = getattr(request, "sampling_params", None)
        options = (getattr(params, "extra_args", None) or {}).get(EXTRA_KEY)
        if options is None:
            return request.request_id if self.served is not None else None
        return str(options.get("id", request.request_id))

    def _free_request(self, request: Any, *args: Any, **kwargs: Any):
        """vLLM's, then (serving) the finished request's KV stats go to the stats file instead of waiting for a
        reader that a server does not have."""
        result = super()._free_request(request, *args, **kwargs)
        if self.served is not None:
            key = self._stats_key(request)
            stats = self.kv_stats.pop(key, None) if key is not None else None
            if stats is not None:
                write_stats(self.served, {"request_id": request.request_id, "prompt_tokens": request.num_prompt_tokens,
                                          "output_tokens": request.num_output_tokens,
                                          "pool_blocks": self.kv_cache_manager.block_pool.num_gpu_blocks,
                                          **asdict(stats)})
        return result

    def schedule(self, *args: Any, **kwargs: Any):
        output = super().schedule(*args, **kwargs)
        self.peak_running = max(self.peak_running, len(self.running))
        free = self.kv_cache_manager.block_pool.get_num_free_blocks()
        for req_id in output.num_scheduled_tokens:
            request = self.requests.get(req_id)
            key = None if request is None else self._stats_key(request)
            if key is None:
                continue
            stats = self.kv_stats.setdefault(key, RequestKV())
            stats.peak_blocks = max(stats.peak_blocks, len(self.manager.req_to_blocks.get(req_id, ())))
            physical = request.num_computed_tokens - self.manager.dropped.get(req_id, 0)
            stats.peak_physical_tokens = max(stats.peak_physical_tokens, physical)
            stats.min_free_blocks = free if stats.min_free_blocks < 0 else min(stats.min_free_blocks, free)
        return output

    def _preempt_request(self, request: Any, *args: Any, **kwargs: Any) -> None:
        super()._preempt_request(request, *args, **kwargs)
        key = self._stats_key(request)
        if key is not None:
            self.kv_stats.setdefault(key, RequestKV()).preemptions += 1

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any):
        reports = getattr(model_runner_output, "dynts_compactions", None) or {}
        for req_id, seconds in (getattr(model_runner_output, "dynts_policy_s", None) or {}).items():
            request = self.requests.get(req_id)
            key = None if request is None else self._stats_key(request)
            if key is not None:
                self.kv_stats.setdefault(key, RequestKV()).policy_s += seconds
        for req_id, report in reports.items():
            freed = self.manager.release_tail(req_id, report.kept_blocks, report.dropped)
            request = self.requests.get(req_id)
            key = None if request is None else self._stats_key(request)
            if key is not None:
                stats = self.kv_stats.setdefault(key, RequestKV())
                stats.compactions += 1
                stats.freed_blocks += freed
        return super().update_from_output(scheduler_output, model_runner_output)
