"""The policy inside vLLM's worker: observe each step, compact due requests' KV blocks in place, report back.

Per step (hooks called by ``runner.CompactingRunner``, on CPU and on CUDA alike):

1. ``before_update`` / ``after_update`` (around ``GPUModelRunner._update_states``): drop finished requests,
   reset preempted / resumed ones (their resume recomputes every token), register new ones.
2. ``adjust_inputs`` (after ``GPUModelRunner._prepare_inputs``): positions stay logical (RoPE), attention
   lengths and slot mapping become physical = logical - dropped.
3. ``after_forward`` (after ``GPUModelRunner.execute_model``): final hidden states and recent post-RoPE queries
   go to the policy's observation state.
4. ``after_sample`` (after ``GPUModelRunner.sample_tokens``): on decode steps, every request whose schedule
   fires is scored, selected and compacted in one batch, exactly as the transformers backend does
   (``backends.hf.decode._maybe_compress``); the worker's block table loses the freed tail blocks and the
   scheduler is told (``ModelRunnerOutput.dynts_compactions``) so that it returns them to the block pool.

The KV cache decides the device: the policy's state, the ``CacheView`` and the query store live where the caches
do. A CPU kernel's cache (``CPU_ATTN``, one ISA) is moved through its ``TokenLayout``; a GPU backend's cache
(FlashAttention, FlashInfer, Triton: a dense ``(blocks, heads, block_size, 2 * head_dim)`` view) through
``DenseStore``. Either layout is checked against vLLM's own cache writer on a scratch block at start.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from backends.base import BackendError
from backends.paged import merge_plans, plan_compaction
from backends.paged.batch import DueBatch
from backends.paged.keys import LazyLayerKeys
from backends.paged.state import QueryStore, RequestState, observe_tokens
from backends.vllm.checks import check_attention_backends
from backends.vllm.layouts import DenseStore, LayerStore, layout_for, probe_dense_layout, probe_layout, store_for
from zoo.base import Policy
from zoo.schedule import EvictionSchedule

#: key of our per-request options in ``SamplingParams.extra_args``
EXTRA_KEY = "dynts_bench"
_LAYER_INDEX = re.compile(r"layers\.(\d+)\.")


@dataclass
class Compaction:
    """What the scheduler must mirror for one compacted request (sent on ``ModelRunnerOutput``)."""

    kept_blocks: int  # block table entries that remain
    dropped: int  # logical tokens processed minus physical slots now held
    physical_before: int
    physical_after: int


@dataclass
class StepLayout:
    req_ids: list[str]
    num_scheduled: np.ndarray
    computed_before: np.ndarray  # logical tokens computed before this step, per batch row
    dropped: np.ndarray
    query_start: np.ndarray


def _is_full_attention(spec: Any) -> bool:
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    return isinstance(spec, FullAttentionSpec)


def _tensor_parallel_group() -> Any:
    """vLLM's tensor-parallel group when there is more than one rank, else None."""
    from vllm.distributed.parallel_state import get_tp_group

    group = get_tp_group()
    return group if group.world_size > 1 else None


def _layer_index(name: str) -> int:
    match = _LAYER_INDEX.search(name)
    if match is None:
        raise BackendError(f"cannot tell the layer index of attention layer {name!r}: unsupported model")
    return int(match.group(1))


def _cpu_kernel_writer(key, value, key_cache, value_cache, slots, isa) -> None:
    from vllm import _custom_ops as ops

    ops.cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, slots, isa)


def _flash_writer(layer: Any):
    """vLLM's ``reshape_and_cache_flash`` (the writer of FlashAttention, FlashInfer and Triton) for ``layer``."""
    from vllm import _custom_ops as ops

    def write(key, value, key_cache, value_cache, slots) -> None:
        ops.reshape_and_cache_flash(key, value, key_cache, value_cache, slots, "auto", layer._k_scale, layer._v_scale)
    return write


def layer_stores(layers: list[Any], caches: list[torch.Tensor], head_dim: int,
                 dense_writer: Any = None) -> tuple[list[LayerStore], str]:
    """Each layer's token store and the layout's name, checked against vLLM's own writer on a scratch block.

    ``CPU_ATTN`` layers carry the ISA their kernel picked (one for all layers); other layers are a GPU backend's
    dense view, written by ``dense_writer`` (default: vLLM's ``reshape_and_cache_flash``; tests pass its twin).
    """
    isas = {getattr(layer, "isa", None) for layer in layers}
    if isas != {None}:
        if len(isas) != 1 or None in isas:
            raise BackendError(f"the vllm backend needs one CPU attention ISA for all layers, got "
                               f"{sorted(map(str, isas))}")
        isa = str(isas.pop())
        layout = layout_for(isa, caches[0].shape[2], head_dim, caches[0].dtype)
        probe_layout(layout, caches[0].dtype, _cpu_kernel_writer)
        return [store_for(c, layout) for c in caches], isa
    check_attention_backends({layer.attn_backend.get_name() for layer in layers})
    probe_dense_layout(caches[0], head_dim, dense_writer or _flash_writer(layers[0]))
    return [DenseStore(c, head_dim) for c in caches], "dense"


class LazyKeys(LazyLayerKeys):
    """Keys read from the blocks through each layer's store (``backends.paged.keys``)."""

    def __init__(self, stores: list[LayerStore], blocks: torch.Tensor, offsets: torch.Tensor,
                 valid: torch.Tensor, tensor_group: Any = None) -> None:
        super().__init__(len(stores), valid)
        self.stores, self.blocks, self.offsets, self.tensor_group = stores, blocks, offsets, tensor_group

    def read(self, index: int) -> torch.Tensor:
        keys = self.stores[index].keys(self.blocks, self.offsets)  # [B, T, H, D]
        if self.tensor_group is not None:  # every rank reads every head (all ranks run this same read, in order)
            keys = self.tensor_group.all_gather(keys.contiguous(), dim=2)
        return keys


class _PagedCache:
    """The ``CompactableCache`` a policy's ``evict`` compacts: kept slots -> block moves for every layer."""

    def __init__(self, runtime: WorkerRuntime, runner: Any, batch: DueBatch) -> None:
        self.runtime, self.runner, self.batch, self.due = runtime, runner, batch, batch.states
        self.reports: dict[str, Compaction] = {}

    def compact(self, kept: torch.Tensor, kept_valid: torch.Tensor) -> None:
        rt, runner = self.runtime, self.runner
        plans, survivors = [], []
        for b, st in enumerate(self.due):
            real = self.batch.survivors(kept, kept_valid, b)
            block_ids = runner.requests[st.request_id].block_ids[0]
            plans.append(plan_compaction(st.request_id, block_ids, st.physical, real, rt.block_size))
            survivors.append(real)
        batch = merge_plans(plans)
        for store in rt.stores:
            store.move(batch)
        table = runner.input_batch.block_table[0]
        for st, plan, real in zip(self.due, plans, survivors):
            before = st.physical
            st.apply_compaction(real)
            block_ids = runner.requests[st.request_id].block_ids[0]
            del block_ids[len(plan.kept_blocks):]
            row = runner.input_batch.req_id_to_index[st.request_id]
            old = int(table.num_blocks_per_row[row])
            table.block_table.np[row, len(plan.kept_blocks):old] = 0
            table.num_blocks_per_row[row] = len(plan.kept_blocks)
            self.reports[st.request_id] = Compaction(len(plan.kept_blocks), st.dropped, before, st.physical)


class WorkerRuntime:
    """One policy bound to one model runner (see module docstring)."""

    def __init__(self, runner: Any, policy: Policy, think_end_id: int | None,
                 default_options: dict[str, Any] | None = None, dense_writer: Any = None) -> None:
        """``default_options``: our ``extra_args`` entry for requests without one (a server's clients);
        ``dense_writer``: the GPU cache writer the layout is probed with (default vLLM's; tests pass its twin)."""
        groups = runner.kv_cache_config.kv_cache_groups
        if len(groups) != 1 or not _is_full_attention(groups[0].kv_cache_spec):
            raise BackendError("the vllm backend compacts models with one full-attention KV cache group only "
                               "(no sliding-window / hybrid models): use --backend transformers")
        names = sorted(groups[0].layer_names, key=_layer_index)
        context = runner.compilation_config.static_forward_context
        self.layers = [context[name] for name in names]
        caches = [layer.kv_cache for layer in self.layers]
        if not all(isinstance(c, torch.Tensor) for c in caches):
            raise BackendError("vLLM's KV caches are not allocated yet: configure the policy after the engine starts")
        _, self.kv_heads, self.block_size, two_d = caches[0].shape
        self.head_dim = two_d // 2
        self.device = caches[0].device
        if runner.input_batch.block_table[0].block_size != self.block_size:
            raise BackendError("kernel and scheduler block sizes differ: pass a block size the attention kernel "
                               "takes (CPU: a multiple of 32)")
        self.stores: list[LayerStore]
        self.stores, self.layout_name = layer_stores(self.layers, caches, self.head_dim, dense_writer)
        self.policy = policy
        self.think_end_id = think_end_id
        self.default_options = default_options
        self.observes = type(policy).observe is not Policy.observe
        self.needs_hidden = "hidden" in policy.needs
        self.capacity = int(runner.max_model_len)
        self.requests: dict[str, RequestState] = {}
        self.spent: dict[str, float] = {}  # policy seconds per request in the current step
        #: every second spent in policy code (observe, query capture, score + select + evict), counted once:
        #: the per-request ``policy_s`` charge a batched compaction to every request in it
        self.total_policy_s = 0.0
        #: (perf_counter, total_policy_s) when the first compaction began: the steady state's share of step time
        #: is measured from there (before it, no policy evicts, so a whole-run share is diluted by the warm-up)
        self.first_compaction: tuple[float, float] | None = None
        self.tensor_group = _tensor_parallel_group()
        #: sha256 over the kept sets this rank chose itself, before rank 0's are broadcast (tests compare ranks)
        self.kept_digest = hashlib.sha256()
        self.step: StepLayout | None = None
        self.queries: QueryStore | None = None
        self._step_queries: list[torch.Tensor | None] = [None] * len(self.layers)
        self._hooks = []
        if "queries" in policy.needs and policy.query_window > 0:
            heads = self.layers[0].num_heads
            self.queries = QueryStore(len(self.layers), policy.query_window, heads, self.head_dim, caches[0].dtype,
                                      self.device)
            for i, layer in enumerate(self.layers):
                self._hooks.append(layer.register_forward_pre_hook(self._capture(i), with_kwargs=True))

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _capture(self, index: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            query = args[0] if args else kwargs["query"]
            self._step_queries[index] = query
        return hook

    # ------------------------------------------------------------------ request lifecycle
    def before_update(self, scheduler_output: Any) -> None:
        for rid in scheduler_output.finished_req_ids:
            st = self.requests.pop(rid, None)
            if st is not None:
                if self.queries is not None:
                    self.queries.release(st.query_row)
        for rid in scheduler_output.preempted_req_ids or ():
            if rid in self.requests:
                self.requests[rid].reset()

    def after_update(self, scheduler_output: Any, runner: Any) -> None:
        for new in scheduler_output.scheduled_new_reqs:
            if new.req_id in self.requests:  # sent again from scratch: it recomputes every token
                self.requests[new.req_id].reset()
                continue
            params = new.sampling_params
            options = (params.extra_args or {}).get(EXTRA_KEY) if params is not None else None
            options = options or self.default_options
            if options is None:
                continue  # a request sent without the policy (e.g. another client of a shared engine)
            schedule = EvictionSchedule(**options["schedule"]) if options.get("schedule") else None
            st = RequestState(new.req_id, str(options.get("id", new.req_id)), schedule,
                              len(new.prompt_token_ids or ()), self.capacity)
            st.state = {name: torch.zeros(1, self.capacity, device=self.device) for name in self.policy.state_names}
            if self.queries is not None:
                st.query_row = self.queries.acquire()
            self.requests[new.req_id] = st
        for rid in scheduler_output.scheduled_cached_reqs.resumed_req_ids:
            if rid in self.requests:
                self.requests[rid].reset()

    # ------------------------------------------------------------------ per step
    def adjust_inputs(self, runner: Any, num_scheduled: np.ndarray) -> None:
        """Turn the step's attention lengths and slot mapping physical (``_prepare_inputs`` post-processing)."""
        num_reqs = runner.input_batch.num_reqs
        req_ids = list(runner.input_batch.req_ids[:num_reqs])
        dropped = np.array([self.requests[r].dropped if r in self.requests else 0 for r in req_ids], dtype=np.int64)
        before = runner.input_batch.num_computed_tokens_cpu[:num_reqs].astype(np.int64).copy()
        scheduled = np.asarray(num_scheduled[:num_reqs], dtype=np.int64).copy()
        self.step = StepLayout(req_ids, scheduled, before, dropped,
                               np.concatenate([[0], np.cumsum(scheduled)]))
        if not dropped.any():
            return
        d = torch.from_numpy(dropped)
        runner.seq_lens[:num_reqs] -= d.to(runner.seq_lens.device, runner.seq_lens.dtype)
        runner.optimistic_seq_lens_cpu[:num_reqs] -= d.to(runner.optimistic_seq_lens_cpu.dtype)
        total = int(scheduled.sum())
        per_token = torch.from_numpy(np.repeat(dropped, scheduled)).to(runner.positions.device)
        physical = runner.positions[:total] - per_token
        runner.input_batch.block_table.compute_slot_mapping(
            num_reqs, runner.query_start_loc.gpu[: num_reqs + 1], physical)

    def after_forward(self, runner: Any) -> None:
        step = self.step
        state = runner.execute_model_state
        if step is None or state is None:
            return
        hidden = state.hidden_states
        input_ids = runner.input_ids.cpu
        q_rows, q_pos, q_tok = [], [], []
        for i, rid in enumerate(step.req_ids):
            st = self.requests.get(rid)
            if st is None:
                continue
            q = int(step.num_scheduled[i])
            start = int(step.query_start[i])
            physical_start = int(step.computed_before[i]) - st.dropped
            if physical_start != st.physical:
                raise BackendError(f"request {rid}: runner expected {st.physical} physical slots, the step "
                                   f"starts at {physical_start} (scheduler and runner disagree)")
            st.physical = physical_start + q
            st.peak_physical = max(st.peak_physical, st.physical)
            prefill = q > 1 or int(step.computed_before[i]) < st.num_prompt
            if self.observes:
                t0 = time.perf_counter()
                tokens = input_ids[start:start + q].clone()
                h = hidden[start:start + q].clone() if self.needs_hidden else None
                observe_tokens(self.policy, st, physical_start, tokens, h, prefill)
                spent = time.perf_counter() - t0
                self.total_policy_s += spent
                self._charge(st, spent)
            if self.queries is not None and st.query_row >= 0:
                n = min(q, self.queries.window)
                q_rows.append(np.full(n, st.query_row))
                q_pos.append(np.arange(int(step.computed_before[i]) + q - n, int(step.computed_before[i]) + q))
                q_tok.append(np.arange(start + q - n, start + q))
        if q_rows and self.queries is not None:
            t0 = time.perf_counter()
            rows = torch.from_numpy(np.concatenate(q_rows))
            pos = torch.from_numpy(np.concatenate(q_pos))
            tok = torch.from_numpy(np.concatenate(q_tok))
            for layer, query in enumerate(self._step_queries):
                assert query is not None
                self.queries.write(layer, rows, pos, query[tok].view(len(tok), -1, self.head_dim))
            spent = time.perf_counter() - t0
            self.total_policy_s += spent
            spent /= max(1, len(q_rows))
            for rid in step.req_ids:
                if rid in self.requests:
                    self._charge(self.requests[rid], spent)
        self._step_queries = [None] * len(self.layers)

    def _charge(self, st: RequestState, seconds: float) -> None:
        st.policy_s += seconds
        self.spent[st.request_id] = self.spent.get(st.request_id, 0.0) + seconds

    def after_sample(self, runner: Any) -> tuple[dict[str, Compaction], dict[str, float]]:
        """Compact the due requests; returns the compactions and the step's policy seconds per request."""
        step, self.step = self.step, None
        if step is None:
            return {}, {}
        due = []
        for i, rid in enumerate(step.req_ids):
            st = self.requests.get(rid)
            if st is None or st.schedule is None:
                continue
            decode = int(step.num_scheduled[i]) == 1 and int(step.computed_before[i]) >= st.num_prompt
            if decode and st.schedule.triggers(st.physical):
                due.append(st)
        reports = self.compact(runner, due) if due else {}
        spent, self.spent = self.spent, {}
        return reports, spent

    def _agree(self, kept: torch.Tensor, kept_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tensor parallelism: every rank has chosen from the same inputs (hidden states are replicated, keys and
        queries gathered over ranks); rank 0's choice is broadcast so that float noise can never split them."""
        self.kept_digest.update(kept.to(torch.long).cpu().numpy().tobytes() + kept_valid.cpu().numpy().tobytes())
        kept = self.tensor_group.broadcast(kept.to(torch.long).contiguous(), src=0)
        kept_valid = self.tensor_group.broadcast(kept_valid.to(torch.uint8).contiguous(), src=0).bool()
        return kept, kept_valid

    # ------------------------------------------------------------------ compaction
    def compact(self, runner: Any, due: list[RequestState]) -> dict[str, Compaction]:
        t0 = time.perf_counter()
        if self.first_compaction is None:
            self.first_compaction = (t0, self.total_policy_s)
        token_table = runner.input_batch.token_ids_cpu

        def token_ids(_: int, st: RequestState, logical: torch.Tensor) -> torch.Tensor:
            row = runner.input_batch.req_id_to_index[st.request_id]
            return torch.from_numpy(token_table[row][logical.numpy()].astype(np.int64))

        batch = DueBatch.build(self.policy, due, token_ids, self.device)
        blocks = torch.zeros_like(batch.positions)
        offsets = torch.zeros_like(batch.positions)
        for i, st in enumerate(due):
            table = torch.tensor(runner.requests[st.request_id].block_ids[0], dtype=torch.long)
            slots = torch.arange(st.physical)
            blocks[i, batch.pads[i]:] = table[slots // self.block_size]
            offsets[i, batch.pads[i]:] = slots % self.block_size
        queries = query_valid = None
        if self.queries is not None:
            rows = torch.tensor([st.query_row for st in due], dtype=torch.long)
            lengths = torch.tensor([st.logical for st in due], dtype=torch.long)
            queries, query_valid = self.queries.read(rows, lengths)
            if self.tensor_group is not None:
                queries = [self.tensor_group.all_gather(q.contiguous(), dim=1) for q in queries]
        keys = LazyKeys(self.stores, blocks, offsets, batch.valid, self.tensor_group)
        view = batch.view(keys, queries, query_valid, self.think_end_id, self.device)
        kept, kept_valid = batch.select(self.policy, view)
        if self.tensor_group is not None:
            kept, kept_valid = self._agree(kept, kept_valid)
        cache = _PagedCache(self, runner, batch)
        self.policy.evict(cache, kept, kept_valid)
        elapsed = time.perf_counter() - t0
        self.total_policy_s += elapsed
        for st in due:
            self._charge(st, elapsed)
            st.compressions += int(st.request_id in cache.reports)
        return cache.reports
