"""The project's own decode loop (not ``generate``): batched, left-padded prompts, explicit logical positions.

Per step: forward the incoming tokens through the decoder into a ``CompactingCache`` -> the policy observes
(hidden states / queries / attention, as it declared) -> sample -> drop finished rows -> for every row whose
schedule fires: score -> select -> evict (that row only). Prompt tokens are processed in one prefill forward.

The decode step (``decode_forward``) has fixed shapes between compactions and reads nothing back from the device:
every row's write slot and the positions are device tensors moved on in place, the mask is made from the cache's
validity.
What the host must know (live tokens per row, when a schedule fires, how many tokens survive) it counts itself;
the one device-to-host transfer per step is the sampled tokens (``read_tokens``), needed to finish rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from backends.base import GenerationRequest, SamplingParams, SequenceResult
from backends.hf.cache import CompactingCache, LayerStack, WriteSlots
from backends.hf.clock import NO_CLOCK, Clock, sync
from backends.hf.observe import KVObserver
from backends.hf.sampling import choose_next, make_generators
from zoo.base import CacheView, Policy, StepObservation
from zoo.schedule import EvictionSchedule, row_budgets

ATTENTION_STATE = "attention"  # per-slot accumulated attention, when a policy needs it

OnForward = Callable[[CompactingCache, torch.Tensor, list[str]], None]


@dataclass
class ModelParts:
    """What the loop needs of a causal LM: its decoder (returns final-norm hidden states) and LM head."""

    decoder: torch.nn.Module
    lm_head: torch.nn.Module
    num_layers: int
    kv_bytes_per_token: int  # 2 x layers x kv_heads x head_dim x itemsize
    eos_ids: frozenset[int]
    pad_id: int
    think_end_id: int | None = None
    decode_text: Callable[[list[int]], str] = lambda ids: ""
    #: the decode step compiled by ``backends.hf.compiled.compile_parts`` (None: eager)
    compiled_step: Callable | None = None


@dataclass
class _Row:
    """Book-keeping of one sequence while it is in the batch, all on the host."""

    request: GenerationRequest
    schedule: EvictionSchedule | None
    generator: torch.Generator | None
    output: list[int] = field(default_factory=list)
    finish: str | None = None
    live: int = 0  # tokens this sequence holds in the cache
    peak_live: int = 0
    compressions: int = 0
    policy_s: float = 0.0
    done_at: float = 0.0


class StopChecker:
    """Detects stop strings in the tail of the generated text without re-decoding everything each step."""

    def __init__(self, stops: Sequence[str], decode_text: Callable[[list[int]], str]) -> None:
        self.stops = [s for s in stops if s]
        self.decode_text = decode_text
        self.tail_tokens = max((len(s) for s in self.stops), default=0) + 8

    def hit(self, ids: list[int]) -> bool:
        if not self.stops:
            return False
        tail = self.decode_text(ids[-self.tail_tokens :])
        return any(s in tail for s in self.stops)

    def truncate(self, text: str) -> str:
        cut = min((text.find(s) for s in self.stops if s in text), default=-1)
        return text if cut < 0 else text[:cut]


@dataclass
class Prefill:
    """The prompt forward of a batch, reusable by any policy (benchmarks, several samples of one prompt).

    Holds what every policy might need: keys/values, the last ``query_window`` queries of every layer, the
    attention each prompt token received, and the final hidden states.
    """

    requests: list[GenerationRequest]
    input_ids: torch.Tensor  # [B, P] left-padded
    valid: torch.Tensor  # [B, P]
    positions: torch.Tensor  # [B, P]
    keys: list[torch.Tensor]  # per layer [B, KVH, P, D]
    values: list[torch.Tensor]
    queries: list[torch.Tensor | None]
    query_valid: torch.Tensor | None
    attention: torch.Tensor  # [B, P]
    hidden: torch.Tensor  # [B, P, hidden]
    logits: torch.Tensor  # [B, V] next-token logits
    seconds: float


def _left_pad(requests: Sequence[GenerationRequest], pad_id: int, device: torch.device):
    """Left-padded ids, validity and per-row logical positions (starting at 0) of a prompt batch."""
    prompt_len = max(len(r.prompt_ids) for r in requests)
    ids = torch.full((len(requests), prompt_len), pad_id, dtype=torch.long)
    valid = torch.zeros(len(requests), prompt_len, dtype=torch.bool)
    for i, r in enumerate(requests):
        ids[i, prompt_len - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
        valid[i, prompt_len - len(r.prompt_ids) :] = True
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), valid.to(device), positions.to(device)


def decode_forward(parts: ModelParts, cache: CompactingCache, observer: KVObserver | None,
                   input_ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward of a decode or prompt step whose metadata the cache already holds: (hidden, last logits)."""
    out = parts.decoder(
        input_ids=input_ids,
        attention_mask=cache.attention_mask(input_ids.shape[1]),
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        kv_observer=observer,
    )
    hidden = out.last_hidden_state
    return hidden, parts.lm_head(hidden[:, -1]).float()


def _forward(parts: ModelParts, cache: CompactingCache, observer: KVObserver, input_ids, positions, valid, prompt,
             clock: Clock = NO_CLOCK):
    """One forward of the incoming tokens into the cache; returns (where they were written, hidden, last logits)."""
    q = input_ids.shape[1]
    with clock.section("cache write"):
        where = cache.append(input_ids, positions, valid, is_prompt=prompt)
        observer.begin(valid, cache.state.get(ATTENTION_STATE))
    watching = observer if observer.watches else None
    step = parts.compiled_step if parts.compiled_step is not None and q == 1 else decode_forward
    with clock.section("model"):
        hidden, logits = step(parts, cache, watching, input_ids, positions)
    with clock.section("cache write"):
        cache.advance(q)
    return where, hidden, logits


def prefill_batch(
    parts: ModelParts, requests: Sequence[GenerationRequest], device: torch.device, query_window: int = 64
) -> Prefill:
    """Run the prompt forward once, keeping everything any policy's decode could start from."""
    input_ids, valid, positions = _left_pad(requests, parts.pad_id, device)
    cache = CompactingCache(parts.num_layers, input_ids.shape[1], (ATTENTION_STATE,))
    observer = KVObserver(parts.num_layers, query_window, accumulates=True)
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        _, hidden, logits = _forward(parts, cache, observer, input_ids, positions, valid, True)
    sync(device)
    return Prefill(
        list(requests), input_ids, valid, positions,
        [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers],
        observer.queries, observer.query_valid, cache.state[ATTENTION_STATE], hidden, logits,
        time.perf_counter() - started,
    )


def _restore(prefill: Prefill, cache: CompactingCache, observer: KVObserver) -> WriteSlots:
    """Load a shared prefill into a policy's own (differently sized) cache and observer; returns where it went."""
    where = cache.append(prefill.input_ids, prefill.positions, prefill.valid, is_prompt=True)
    for layer, keys, values in zip(cache.layers, prefill.keys, prefill.values):
        layer.update(keys, values)
    cache.advance(prefill.input_ids.shape[1])
    if ATTENTION_STATE in cache.state:
        cache.state[ATTENTION_STATE][:, : prefill.attention.shape[1]] = prefill.attention
    w = observer.query_window
    if w:
        if any(q is None or q.shape[2] < min(w, prefill.input_ids.shape[1]) for q in prefill.queries):
            raise ValueError(f"the shared prefill kept fewer than the {w} queries this policy needs")
        observer.queries = [q[:, :, -w:] for q in prefill.queries]  # type: ignore[index]
        observer.query_valid = None if prefill.query_valid is None else prefill.query_valid[:, -w:]
    return where


@dataclass
class StepLog:
    """Per decode step of a batch (``record_steps``): wall time, policy time and cache slots held."""

    step_s: list[float] = field(default_factory=list)
    step_policy_s: list[float] = field(default_factory=list)
    step_cache_tokens: list[float] = field(default_factory=list)
    device: torch.device | None = None
    _since: float = 0.0

    def start(self) -> None:
        self._since = time.perf_counter()

    def record(self, policy_s: float, held: int) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.step_s.append(now - self._since)
        self.step_policy_s.append(policy_s)
        self.step_cache_tokens.append(float(held))
        self._since = now

    def as_extra(self) -> dict[str, list[float]]:
        return {"step_s": self.step_s, "step_policy_s": self.step_policy_s, "step_cache_tokens": self.step_cache_tokens}


class BatchDecoder:
    """One batch's generation under one policy: the loop state and one method per job of a step."""

    def __init__(self, parts: ModelParts, requests: Sequence[GenerationRequest], policy: Policy,
                 schedule: EvictionSchedule | None, sampling: SamplingParams, device: torch.device,
                 clock: Clock = NO_CLOCK) -> None:
        self.parts, self.policy, self.sampling, self.device, self.clock = parts, policy, sampling, device, clock
        self.rows = [_Row(r, (r.schedule or schedule) if policy.evicts else None, None, live=len(r.prompt_ids))
                     for r in requests]
        if not sampling.greedy:
            for row, gen in zip(self.rows, make_generators([r.seed for r in requests], device)):
                row.generator = gen
        self.active = list(range(len(self.rows)))  # row index of every batch entry
        prompt_len = max(len(r.prompt_ids) for r in requests)
        state_names = policy.state_names + ((ATTENTION_STATE,) if "attention" in policy.needs else ())
        self.cache = CompactingCache(parts.num_layers, self._capacity(prompt_len), state_names)
        #: below this capacity no compaction can shrink the buffers (a check per compaction, not a loop over rows)
        self.least_steady_capacity = min((row.schedule.steady_capacity() for row in self.rows if row.schedule),
                                         default=0)
        self.observer = KVObserver(parts.num_layers, policy.query_window if "queries" in policy.needs else 0,
                                   accumulates="attention" in policy.needs)
        self.stopper = StopChecker(sampling.stop, parts.decode_text)
        self.want_hidden = "hidden" in policy.needs
        self.positions = torch.tensor([[len(r.prompt_ids)] for r in requests], device=device)
        self.started = 0.0
        self.ttft = 0.0

    def _capacity(self, prompt_len: int) -> int:
        """Slots per row: the largest any row's schedule can need (the bound on allocated KV memory)."""
        new = self.sampling.max_new_tokens
        return max(row.schedule.capacity(prompt_len, new) if row.schedule else prompt_len + new for row in self.rows)

    # ---------------------------------------------------------------- one step's jobs
    def forward_prompt(self, prefill: Prefill | None) -> tuple[WriteSlots, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prompt forward (or a shared prefill loaded); returns (where it went, ids, hidden, logits)."""
        if prefill is not None:
            return _restore(prefill, self.cache, self.observer), prefill.input_ids, prefill.hidden, prefill.logits
        ids, valid, positions = _left_pad([r.request for r in self.rows], self.parts.pad_id, self.device)
        where, hidden, logits = _forward(self.parts, self.cache, self.observer, ids, positions, valid, True)
        return where, ids, hidden, logits

    def forward_step(self, input_ids: torch.Tensor) -> tuple[WriteSlots, torch.Tensor, torch.Tensor]:
        """One decode forward of every active row's last token; returns (where it went, hidden, logits)."""
        valid = torch.ones_like(input_ids, dtype=torch.bool)
        where, hidden, logits = _forward(self.parts, self.cache, self.observer, input_ids, self.positions, valid,
                                         False, self.clock)
        with self.clock.section("cache write"):
            self.positions.add_(1)
        for i in self.active:
            self.rows[i].live += 1
        return where, hidden, logits

    def observe(self, ids: torch.Tensor, where: WriteSlots, hidden: torch.Tensor, prompt: bool) -> float:
        """Hand the forward's observation to the policy; returns the seconds charged to it."""
        with self.clock.section("observe"):
            started = time.perf_counter()
            obs = StepObservation(ids, where.start, hidden if self.want_hidden else None, prompt, where.per_row)
            self.policy.observe(obs, self.cache.state)
            return time.perf_counter() - started + self.observer.take_seconds()

    def choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """The next token of every active row, on the device and on the host (forced tokens applied)."""
        with self.clock.section("sample"):
            rows = [self.rows[i] for i in self.active]
            next_ids = choose_next(logits, self.sampling, [row.generator for row in rows])
            tokens = read_tokens(next_ids)
            forced = _force(tokens, rows)
            if forced:
                next_ids = torch.tensor(tokens, device=self.device)
            return next_ids, tokens

    def finish_rows(self, tokens: list[int], observe_s: float) -> list[int]:
        """Append each row's token, end the rows that are done; returns the batch entries that go on."""
        now = time.perf_counter()
        going = []
        for b, i in enumerate(self.active):
            row = self.rows[i]
            row.policy_s += observe_s
            row.peak_live = max(row.peak_live, row.live)
            row.output.append(tokens[b])
            row.finish = self._finish_reason(row)
            if row.finish:
                row.done_at = now
            else:
                going.append(b)
        return going

    def _finish_reason(self, row: _Row) -> str | None:
        if row.output[-1] in self.parts.eos_ids:
            return "eos"
        if self.stopper.hit(row.output):
            return "stop"
        if len(row.output) >= self.sampling.max_new_tokens:
            return "length"
        return None

    def drop_finished(self, going: list[int], next_ids: torch.Tensor) -> torch.Tensor:
        """Remove finished rows from the cache, the observer and the step's inputs."""
        if len(going) == len(self.active):
            return next_ids
        with self.clock.section("drop rows"):
            keep = torch.tensor(going, device=self.device)
            self.cache.select_rows(keep)
            self.observer.select_rows(keep)
            self.positions = self.positions.index_select(0, keep)
            self.active = [self.active[b] for b in going]
            return next_ids.index_select(0, keep)

    def compress(self) -> float:
        """Compress the rows whose schedule fires, and only those; returns the seconds spent (0: none fired)."""
        rows = [self.rows[i] for i in self.active]
        fired = [b for b, row in enumerate(rows) if row.schedule is not None and row.schedule.triggers(row.live)]
        if not fired:
            return 0.0
        started = time.perf_counter()
        with self.clock.section("compaction"):
            chosen = [rows[b] for b in fired]
            keep = [row.schedule.keep_count(row.live, len(row.request.prompt_ids)) for row in chosen]  # type: ignore[union-attr]
            compress_rows(self.cache, self.observer, self.policy, fired, keep, chosen[0].schedule,
                          self.parts.think_end_id, self.clock, row_budgets([row.schedule for row in chosen]))
            # a prompt longer than the budget made the buffers larger than the schedule needs: give that back
            if self.cache.capacity > self.least_steady_capacity:
                self.cache.shrink(max(row.schedule.steady_capacity() for row in rows if row.schedule))
        elapsed = time.perf_counter() - started
        for row, kept in zip(chosen, keep):
            row.live = kept
            row.compressions += 1
        for row in rows:
            row.policy_s += elapsed
        return elapsed


def read_tokens(next_ids: torch.Tensor) -> list[int]:
    """The step's one device-to-host transfer: the sampled tokens, which decide which rows are done."""
    return next_ids.tolist()


def _force(tokens: list[int], rows: list[_Row]) -> bool:
    """Replace the choices of rows that still have forced tokens to write (trace replay); whether any did."""
    forced = False
    for b, row in enumerate(rows):
        wanted = row.request.forced_ids
        if wanted and len(row.output) < len(wanted):
            tokens[b] = wanted[len(row.output)]
            forced = True
    return forced


class _RowCompaction:
    """What ``Policy.evict`` compacts: the fired rows of the cache, in the generation order the policy saw."""

    def __init__(self, cache: CompactingCache, rows: torch.Tensor, order: torch.Tensor) -> None:
        self.cache, self.rows, self.order = cache, rows, order

    def compact(self, kept: torch.Tensor, kept_valid: torch.Tensor) -> None:
        self.cache.compact_rows(self.rows, self.order, kept, kept_valid)


def compress_rows(cache: CompactingCache, observer: KVObserver, policy: Policy, fired: list[int], keep: list[int],
                  schedule: EvictionSchedule | None, think_end_id: int | None, clock: Clock = NO_CLOCK,
                  budgets: tuple[int, ...] | None = None) -> None:
    """Score, select and evict the batch entries ``fired``, keeping ``keep[i]`` tokens of each (``budgets``: the
    fired rows' ``--budget``, ``CacheView.budgets``).

    The policy sees those rows only, slots in generation order (``CacheView``'s contract); keys are copied
    only if it reads them. Every row shares one schedule shape: window and prompt protection come from it.
    """
    assert schedule is not None
    device = cache.valid.device
    with clock.section("view"):
        seen = cache.ordered_rows(fired)
        rows, order = seen["rows"], seen["order"]
        queries = None
        if observer.query_window:
            queries = LayerStack(torch.stack(observer.queries).index_select(1, rows))  # type: ignore[arg-type]
        view = CacheView(
            valid=seen["valid"], positions=seen["positions"], token_ids=seen["token_ids"],  # type: ignore[arg-type]
            is_prompt=seen["is_prompt"], keys=seen["keys"], queries=queries,  # type: ignore[arg-type]
            query_valid=None if observer.query_valid is None else observer.query_valid.index_select(0, rows),
            state=seen["state"], think_end_id=think_end_id, budgets=budgets,  # type: ignore[arg-type]
        )
    with clock.section("score"):
        scores = policy.score(view)
    with clock.section("select"):
        kept, kept_valid = policy.select(scores, view, torch.tensor(keep, device=device), schedule.window,
                                         schedule.protect_prompt)
    with clock.section("gather"):
        policy.evict(_RowCompaction(cache, rows, order), kept, kept_valid)


def generate_batch(
    parts: ModelParts,
    requests: Sequence[GenerationRequest],
    policy: Policy,
    schedule: EvictionSchedule | None,
    sampling: SamplingParams,
    device: torch.device,
    on_forward: OnForward | None = None,
    record_steps: bool = False,
    prefill: Prefill | None = None,
    clock: Clock = NO_CLOCK,
) -> list[SequenceResult]:
    """Generate every request in one batch.

    ``on_forward(cache, logits, request_ids)`` is a test hook. With ``record_steps`` every result's ``extra``
    gets ``step_s`` / ``step_policy_s`` / ``step_cache_tokens``: wall time, policy time and physical cache
    slots held (before that step's compression) of each decode step of the batch (for benchmarks).
    ``prefill`` (from ``prefill_batch`` on the same requests) skips the prompt forward; TTFT then counts the
    shared prefill's time. ``clock`` times the sections of every step (the breakdown benchmark).
    """
    if prefill is not None and [r.request_id for r in prefill.requests] != [r.request_id for r in requests]:
        raise ValueError("the prefill was made for other requests")
    decoder = BatchDecoder(parts, requests, policy, schedule, sampling, device, clock)
    log = StepLog(device=device) if record_steps else None
    with torch.inference_mode():
        _decode(decoder, prefill, on_forward, log)
    results = [_result(row, decoder.ttft, decoder.started, parts, decoder.stopper) for row in decoder.rows]
    for result in results:
        result.extra["kv_batch_allocated_bytes"] = decoder.cache.peak_allocated_bytes
        result.extra["batch_size"] = len(decoder.rows)
        if log is not None:
            result.extra.update(log.as_extra())
    return results


def _decode(decoder: BatchDecoder, prefill: Prefill | None, on_forward: OnForward | None,
            log: StepLog | None) -> None:
    """The loop: prompt, then one step at a time until every row has finished."""
    sync(decoder.device)
    decoder.started = time.perf_counter()
    if log is not None:
        log.start()
    where, ids, hidden, logits = decoder.forward_prompt(prefill)
    next_ids = _after_forward(decoder, where, ids, hidden, logits, True, prefill, on_forward, log)
    while next_ids is not None:
        with decoder.clock.section("decode step"):
            ids = next_ids.unsqueeze(1)
            where, hidden, logits = decoder.forward_step(ids)
            next_ids = _after_forward(decoder, where, ids, hidden, logits, False, None, on_forward, log)


def _after_forward(decoder: BatchDecoder, where: WriteSlots, ids: torch.Tensor, hidden: torch.Tensor,
                   logits: torch.Tensor, prompt: bool, prefill: Prefill | None, on_forward: OnForward | None,
                   log: StepLog | None) -> torch.Tensor | None:
    """Everything a step does after its forward; returns the next step's tokens, None once every row is done."""
    if on_forward is not None:
        on_forward(decoder.cache, logits, [decoder.rows[i].request.request_id for i in decoder.active])
    observe_s = decoder.observe(ids, where, hidden, prompt)
    next_ids, tokens = decoder.choose(logits)
    if prompt:
        decoder.ttft = time.perf_counter() - decoder.started + (prefill.seconds if prefill is not None else 0.0)
    going = decoder.finish_rows(tokens, observe_s)
    if not going:
        return None
    next_ids = decoder.drop_finished(going, next_ids)
    held = decoder.cache.length  # the step's largest cache, before any compression
    compress_s = decoder.compress()
    if log is not None:
        if prompt:
            log.start()
        else:
            log.record(observe_s + compress_s, held)
    return next_ids


def _result(row: _Row, ttft: float, t0: float, parts: ModelParts, stopper: StopChecker) -> SequenceResult:
    text = parts.decode_text(row.output)
    if row.finish == "stop":
        text = stopper.truncate(text)
    prompt = len(row.request.prompt_ids)
    generated = len(row.output)
    # the last sampled token is never fed back, so the cache saw prompt + generated - 1 tokens
    full_tokens = prompt + generated - 1
    return SequenceResult(
        request_id=row.request.request_id,
        output_ids=row.output,
        text=text,
        finish_reason=row.finish or "length",
        prompt_tokens=prompt,
        generated_tokens=generated,
        ttft_s=ttft,
        decode_s=max(0.0, row.done_at - t0 - ttft),
        kv_peak_tokens=row.peak_live,
        kv_peak_bytes=row.peak_live * parts.kv_bytes_per_token,
        kv_full_bytes=full_tokens * parts.kv_bytes_per_token,
        compressions=row.compressions,
        policy_s=row.policy_s,
    )
