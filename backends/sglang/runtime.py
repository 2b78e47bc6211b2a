"""The policy inside SGLang's scheduler process: observe every forward, compact due requests between steps.

Called by the plugin's hooks (``backends.sglang.plugin``), in step order:

1. ``after_forward_batch`` (AFTER ``ForwardBatch.init_new``): the step's layout (which request owns which input
   rows); on decode steps ``positions`` become logical again (``seq_lens - 1`` is physical after compaction).
2. ``on_queries`` (BEFORE ``RadixAttention.forward``): post-RoPE queries of every layer, for query-window policies.
3. ``on_hidden`` (BEFORE ``LogitsProcessor.forward``): final hidden states -> ``Policy.observe``.
4. ``before_decode`` (BEFORE ``ScheduleBatch.prepare_for_decode``): every request whose last forward was a
   decode step and whose ``EvictionSchedule`` fires is scored, selected and compacted in one batch -- the same
   ``CacheView`` / ``Policy.score / select / evict`` as the transformers backend. Compaction is zero-copy
   (``backends.paged.remap``): the row of ``req_to_token`` is rewritten, dropped slots go back to the
   token allocator, and ``seq_lens`` / ``seq_lens_cpu`` / ``orig_seq_lens`` / the request's committed and
   allocated KV lengths shrink to the physical length.
5. ``on_release`` (BEFORE ``mem_cache.common.release_kv_cache``): a finished, aborted or retracted request's state
   is dropped; a retracted request re-prefills its whole logical sequence (prompt and output so far) and is
   compacted again at its next decode step; its stats (compactions, freed slots, retractions) carry over.

Requests opt in through ``SamplingParams.custom_params[EXTRA_KEY]`` (a JSON string: the backend's id and the
schedule); others run untouched, except under ``dynts-bench serve``, where they get the served schedule
(``default_options``) and their stats go to ``on_finished`` when they finish.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from backends.base import BackendError
from backends.paged.batch import DueBatch
from backends.paged.keys import LazyLayerKeys
from backends.paged.remap import apply_remap, plan_remap
from backends.paged.state import QueryStore, RequestState, observe_tokens
from zoo.base import Policy
from zoo.schedule import EvictionSchedule

#: SGLang's ``HEALTH_CHECK_RID_PREFIX``: ``/health`` generates one token; it is not a request to serve or count
HEALTH_CHECK_PREFIX = "HEALTH_CHECK"
#: key of our per-request options in ``SamplingParams.custom_params`` (a JSON string value)
EXTRA_KEY = "dynts_bench"


def request_options(key: str, schedule: EvictionSchedule | None) -> dict[str, str]:
    """``custom_params`` for one request (JSON-safe scalars only, as SGLang's IPC requires)."""
    return {EXTRA_KEY: json.dumps({"id": key, "schedule": None if schedule is None else schedule.to_dict()})}


@dataclass
class KVStats:
    """What one request cost in SGLang's token pool (read by the backend when it finishes)."""

    key: str
    prompt_tokens: int = 0
    peak_physical_tokens: int = 0
    compactions: int = 0
    freed_slots: int = 0
    policy_s: float = 0.0
    min_free_slots: int = -1
    retractions: int = 0  # times SGLang retracted it under memory pressure (each: a full re-prefill, then compaction)
    first_token_ts: float = 0.0  # time.time() when its (first) prefill produced the first token's hidden state
    finished_ts: float = 0.0  # time.time() when it was released finished
    decoding: bool = False  # a decode step has run (a retraction's re-prefill does not move first_token_ts)


@dataclass
class StepRow:
    rid: str
    start: int  # first input row of this request in the step
    count: int  # input rows (tokens) of this request
    logical_start: int  # logical position of its first token
    prefill: bool


class PoolKeys(LazyLayerKeys):
    """Keys read from SGLang's token pool through each request's slots (``backends.paged.keys``)."""

    def __init__(self, pool: Any, layer_ids: list[int], slots: torch.Tensor, valid: torch.Tensor) -> None:
        super().__init__(len(layer_ids), valid)
        self.pool, self.layer_ids, self.slots = pool, layer_ids, slots

    def read(self, index: int) -> torch.Tensor:
        buffer = self.pool.get_key_buffer(self.layer_ids[index])  # [size + 1, H, D]
        return buffer[self.slots.to(buffer.device)]


class SchedulerRuntime:
    """One policy bound to one scheduler's pools (see module docstring)."""

    def __init__(self, policy: Policy, think_end_id: int | None, req_to_token_pool: Any, token_to_kv_pool: Any,
                 allocator: Any, stats_dir: Path | None = None, default_options: dict[str, Any] | None = None,
                 on_finished: Callable[[KVStats, Any], None] | None = None) -> None:
        if getattr(allocator, "page_size", 1) != 1 or getattr(token_to_kv_pool, "page_size", 1) != 1:
            raise BackendError("the sglang backend needs --page-size 1 (it remaps single token slots)")
        self.policy = policy
        self.think_end_id = think_end_id
        self.req_to_token_pool = req_to_token_pool
        self.pool = token_to_kv_pool
        self.allocator = allocator
        start = getattr(token_to_kv_pool, "start_layer", 0) or 0
        self.layer_ids = list(range(start, start + token_to_kv_pool.layer_num))
        self.capacity = int(req_to_token_pool.req_to_token.shape[1])
        self.observes = type(policy).observe is not Policy.observe
        self.needs_hidden = "hidden" in policy.needs
        self.requests: dict[str, RequestState] = {}
        self.stats_dir = stats_dir  # where a released request's KVStats go (``<key>.json``), for another process
        self.stats: dict[str, KVStats] = {}  # by the backend's key, in-process readers (moved to stats_dir at release)
        self._stats_of: dict[str, KVStats] = {}  # by SGLang rid, live requests
        self._retracted: dict[str, KVStats] = {}  # by key, retracted requests waiting to be prefilled again
        self.default_options = default_options  # options of requests without ours (serving), None: untouched
        self.on_finished = on_finished  # gets a finished (or aborted) request's stats and the request (serving)
        self.step: list[StepRow] = []
        self._step_queries: dict[int, torch.Tensor] = {}
        self.queries: QueryStore | None = None  # built at the first forward (query heads known then)

    # ------------------------------------------------------------------ request lifecycle
    def _options(self, req: Any) -> dict[str, Any] | None:
        """Our options of ``req`` (its ``custom_params``, or the served defaults), None for an untouched request."""
        params = getattr(req.sampling_params, "custom_params", None) or {}
        raw = params.get(EXTRA_KEY)
        if raw is None and (self.default_options is None or str(req.rid).startswith(HEALTH_CHECK_PREFIX)):
            return None
        if raw is None:
            return {"id": req.rid, **self.default_options}
        return json.loads(raw) if isinstance(raw, str) else raw

    def _schedule_of(self, req: Any) -> EvictionSchedule | None:
        st = self.requests.get(req.rid)
        if st is not None:
            return st.schedule
        options = self._options(req)
        return EvictionSchedule(**options["schedule"]) if options and options.get("schedule") else None

    # ------------------------------------------------------------------ admission (SGLang's PrefillAdder)
    def admission_max_new_tokens(self, req: Any) -> int | None:
        """What ``max_new_tokens`` SGLang's admission should reserve for a waiting request: the slots its schedule
        can ever need (``EvictionSchedule.capacity``) minus what its prefill writes -- not the whole generation
        limit, which compaction never lets it hold. None: reserve as SGLang does."""
        schedule = self._schedule_of(req)
        if schedule is None or req.sampling_params.max_new_tokens is None:
            return None
        limit = int(req.sampling_params.max_new_tokens)
        prompt, out = len(req.origin_input_ids), len(req.output_ids)
        bound = schedule.capacity(prompt, limit)
        return min(limit, out + max(1, bound - prompt - out))

    def running_reservation(self, req: Any, reserved: float) -> float:
        """SGLang reserves ``reserved`` future slots for a running request; a compacting one can only grow to its
        schedule's capacity."""
        st = self.requests.get(req.rid)
        if st is None or st.schedule is None or req.sampling_params.max_new_tokens is None:
            return reserved
        bound = st.schedule.capacity(st.num_prompt, int(req.sampling_params.max_new_tokens))
        return min(reserved, max(0, bound - st.physical))

    def _register(self, req: Any) -> RequestState | None:
        options = self._options(req)
        if options is None:
            return None
        schedule = EvictionSchedule(**options["schedule"]) if options.get("schedule") else None
        st = RequestState(req.rid, str(options.get("id", req.rid)), schedule, len(req.origin_input_ids),
                          self.capacity)
        st.state = {name: torch.zeros(1, self.capacity) for name in self.policy.state_names}
        if self.queries is not None:
            st.query_row = self.queries.acquire()
        self.requests[req.rid] = st
        stats = self._retracted.pop(st.key, None) or KVStats(st.key, prompt_tokens=st.num_prompt)
        self.stats[st.key] = self._stats_of[req.rid] = stats
        return st

    def on_release(self, req: Any) -> None:
        """A request's KV is released: it finished, was aborted, or was retracted (SGLang re-prefills it from
        scratch later, as a new attempt). A retracted request's stats carry over to its next attempt."""
        st = self.requests.pop(req.rid, None)
        stats = self._stats_of.pop(req.rid, None)
        if st is not None and self.queries is not None:
            self.queries.release(st.query_row)
        if stats is None:
            return
        if not req.finished() and getattr(req, "to_finish", None) is None:  # retracted: it will come back
            stats.retractions += 1
            self._retracted[stats.key] = stats
            return
        stats.finished_ts = time.time()
        if self.stats_dir is not None:
            path = self.stats_dir / f"{stats.key}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(stats)))
            tmp.replace(path)
            self.stats.pop(stats.key, None)
        if self.on_finished is not None:
            self.on_finished(stats, req)

    # ------------------------------------------------------------------ per forward
    def after_forward_batch(self, forward_batch: Any, batch: Any) -> None:
        """Record which input rows belong to which tracked request; decode positions back to logical."""
        self.step = []
        self._step_queries = {}
        mode = forward_batch.forward_mode
        if mode.is_idle():
            return
        decode = mode.is_decode()
        if not decode and not mode.is_extend():
            raise BackendError(f"the sglang backend does not support {mode.name} batches (speculative decoding, "
                               "mixed chunks): use the engine's defaults with the flags it sets")
        start = 0
        shift = torch.zeros(len(batch.reqs), dtype=torch.long)
        for i, req in enumerate(batch.reqs):
            count = 1 if decode else int(batch.extend_lens[i])
            st = self.requests.get(req.rid)
            if not decode:
                prefix = int(batch.prefix_lens[i])
                if st is not None and prefix == 0 and st.physical > 0:  # re-prefilled from scratch
                    self.on_release(req)
                    st = None
                if st is None and prefix == 0:
                    st = self._register(req)
            if st is not None:
                physical = st.physical
                if decode:
                    shift[i] = st.dropped
                self.step.append(StepRow(req.rid, start, count, physical + st.dropped, not decode))
            start += count
        if decode and bool(shift.any()):
            forward_batch.positions += shift.to(forward_batch.positions.device, forward_batch.positions.dtype)

    def on_queries(self, layer_id: int, q: torch.Tensor, num_heads: int, head_dim: int) -> None:
        if self.policy.query_window <= 0 or "queries" not in self.policy.needs or not self.step:
            return
        if self.queries is None:
            self.queries = QueryStore(len(self.layer_ids), self.policy.query_window, num_heads, head_dim,
                                      self.pool.dtype)
            for st in self.requests.values():
                st.query_row = self.queries.acquire()
        self._step_queries[layer_id] = q.detach().reshape(q.shape[0], num_heads, head_dim)

    def on_hidden(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> None:
        step, self.step = self.step, []
        if not step:
            return
        for row in step:
            st = self.requests.get(row.rid)
            if st is None:
                continue
            t0 = time.perf_counter()
            slot = st.physical
            st.physical += row.count
            st.peak_physical = max(st.peak_physical, st.physical)
            if self.observes:
                tokens = input_ids[row.start : row.start + row.count].detach().cpu().clone()
                h = hidden[row.start : row.start + row.count].detach().clone() if self.needs_hidden else None
                observe_tokens(self.policy, st, slot, tokens, h, row.prefill)
            if self.queries is not None and self._step_queries:
                n = min(row.count, self.queries.window)
                positions = torch.arange(row.logical_start + row.count - n, row.logical_start + row.count)
                rows = torch.full((n,), st.query_row, dtype=torch.long)
                for index, layer_id in enumerate(self.layer_ids):
                    q = self._step_queries.get(layer_id)
                    if q is not None:
                        self.queries.write(index, rows, positions, q[row.start + row.count - n : row.start + row.count])
            stats = self._stats_of[row.rid]
            stats.peak_physical_tokens = max(stats.peak_physical_tokens, st.physical)
            if row.prefill and not stats.decoding:  # the last prefill chunk produces the first token
                stats.first_token_ts = time.time()
            stats.decoding |= not row.prefill
            if self.observes or self.queries is not None:  # the policy's own work, not the adapter's bookkeeping
                self._charge(st, time.perf_counter() - t0)
        self._step_queries = {}

    def _charge(self, st: RequestState, seconds: float) -> None:
        st.policy_s += seconds
        self._stats_of[st.request_id].policy_s += seconds

    # ------------------------------------------------------------------ compaction
    def before_decode(self, batch: Any) -> None:
        """Compact every due request of the decode batch about to be prepared (module docstring, step 4)."""
        due = []
        for i, req in enumerate(batch.reqs):
            st = self.requests.get(req.rid)
            if st is None or st.schedule is None:
                continue
            held = int(batch.seq_lens_cpu[i])
            if held != st.physical:
                raise BackendError(f"request {req.rid}: SGLang holds {held} KV slots, the policy tracked "
                                   f"{st.physical} (hooks out of step)")
            if st.logical > st.num_prompt and st.schedule.triggers(st.physical):
                due.append((i, req, st))
        if due:
            self.compact(batch, due)

    def compact(self, batch: Any, due: list[tuple[int, Any, RequestState]]) -> None:
        t0 = time.perf_counter()
        reqs = [req for _, req, _ in due]

        def token_ids(row: int, _: RequestState, logical: torch.Tensor) -> torch.Tensor:
            req = reqs[row]
            return torch.tensor(list(req.origin_input_ids) + list(req.output_ids), dtype=torch.long)[logical]

        layout = DueBatch.build(self.policy, [st for _, _, st in due], token_ids)
        table = self.req_to_token_pool.req_to_token
        slots = torch.zeros_like(layout.positions)
        for row, (_, req, st) in enumerate(due):
            slots[row, layout.pads[row]:] = table[req.kv.req_pool_idx, : st.physical].to("cpu", torch.long)
        queries = query_valid = None
        if self.queries is not None:
            rows = torch.tensor([st.query_row for _, _, st in due], dtype=torch.long)
            lengths = torch.tensor([st.logical for _, _, st in due], dtype=torch.long)
            queries, query_valid = self.queries.read(rows, lengths)
        view = layout.view(PoolKeys(self.pool, self.layer_ids, slots, layout.valid), queries, query_valid,
                           self.think_end_id)
        kept, kept_valid = layout.select(self.policy, view)
        self.policy.evict(_TokenPoolCache(self, batch, due, layout), kept, kept_valid)
        elapsed = time.perf_counter() - t0
        for _, _, st in due:
            self._charge(st, elapsed)


class _TokenPoolCache:
    """The ``CompactableCache`` a policy's ``evict`` compacts: kept slots -> ``req_to_token`` remaps."""

    def __init__(self, runtime: SchedulerRuntime, batch: Any, due: list[tuple[int, Any, RequestState]],
                 layout: DueBatch) -> None:
        self.runtime, self.batch, self.due, self.layout = runtime, batch, due, layout

    def compact(self, kept: torch.Tensor, kept_valid: torch.Tensor) -> None:
        rt, batch = self.runtime, self.batch
        table = rt.req_to_token_pool.req_to_token
        for b, (i, req, st) in enumerate(self.due):
            real = self.layout.survivors(kept, kept_valid, b)
            row = req.kv.req_pool_idx
            remap = plan_remap(req.rid, table[row, : st.physical], real)
            apply_remap(table, row, remap)
            rt.allocator.free(remap.freed_slots.to(torch.int64))
            shrink_lengths(batch, i, req, remap.dropped)
            st.apply_compaction(real)
            st.compressions += 1
            stats = rt._stats_of[req.rid]
            stats.compactions += 1
            stats.freed_slots += remap.dropped
            free = int(rt.allocator.available_size())
            stats.min_free_slots = free if stats.min_free_slots < 0 else min(stats.min_free_slots, free)
        batch.seq_lens_sum = None


def shrink_lengths(batch: Any, index: int, req: Any, dropped: int) -> None:
    """SGLang's lengths of one request become physical: ``dropped`` fewer slots everywhere it counts them."""
    if dropped == 0:
        return
    batch.seq_lens[index] -= dropped
    batch.seq_lens_cpu[index] -= dropped
    if getattr(batch, "orig_seq_lens", None) is not None:
        batch.orig_seq_lens[index] -= dropped
    req.kv.kv_committed_len -= dropped
    req.kv.kv_allocated_len -= dropped
