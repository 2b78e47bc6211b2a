"""The project's own decode loop (not ``generate``): batched, left-padded, explicit logical positions.

Per step: forward the incoming tokens through the decoder into a ``CompactingCache`` -> the policy observes
(hidden states / queries / attention, as it declared) -> sample -> drop finished rows -> if the schedule
triggers for any row: score -> select -> evict. Prompt tokens are processed in one prefill forward.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from backends.base import GenerationRequest, SamplingParams, SequenceResult
from backends.hf.cache import CompactingCache
from backends.hf.observe import KVObserver
from backends.hf.sampling import choose_next, make_generators
from zoo.base import CacheView, Policy, StepObservation
from zoo.schedule import EvictionSchedule

ATTENTION_STATE = "attention"  # per-slot accumulated attention, when a policy needs it


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


@dataclass
class _Row:
    """Book-keeping of one sequence while it is in the batch."""

    request: GenerationRequest
    schedule: EvictionSchedule | None
    generator: torch.Generator | None
    output: list[int] = field(default_factory=list)
    finish: str | None = None
    next_position: int = 0
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    input_ids = torch.full((len(requests), prompt_len), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros(len(requests), prompt_len, dtype=torch.bool, device=device)
    for i, r in enumerate(requests):
        input_ids[i, prompt_len - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids, device=device)
        valid[i, prompt_len - len(r.prompt_ids) :] = True
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    return input_ids, valid, positions


def _forward(parts: ModelParts, cache: CompactingCache, observer: KVObserver, input_ids, positions, valid, prompt):
    """One forward of the incoming tokens into the cache; returns (first slot written, hidden, last logits)."""
    q = input_ids.shape[1]
    start = cache.append(input_ids, positions, valid, is_prompt=prompt)
    observer.begin(valid, cache.state.get(ATTENTION_STATE))
    out = parts.decoder(
        input_ids=input_ids,
        attention_mask=cache.attention_mask(q),
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        kv_observer=observer,
    )
    cache.advance(q)
    hidden = out.last_hidden_state
    return start, hidden, parts.lm_head(hidden[:, -1]).float()


def prefill_batch(
    parts: ModelParts, requests: Sequence[GenerationRequest], device: torch.device, query_window: int = 64
) -> Prefill:
    """Run the prompt forward once, keeping everything any policy's decode could start from."""
    input_ids, valid, positions = _left_pad(requests, parts.pad_id, device)
    cache = CompactingCache(parts.num_layers, input_ids.shape[1], (ATTENTION_STATE,))
    observer = KVObserver(parts.num_layers, query_window)
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        _, hidden, logits = _forward(parts, cache, observer, input_ids, positions, valid, True)
    _sync(device)
    return Prefill(
        list(requests), input_ids, valid, positions,
        [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers],
        observer.queries, observer.query_valid, cache.state[ATTENTION_STATE], hidden, logits,
        time.perf_counter() - t0,
    )


def _restore(prefill: Prefill, cache: CompactingCache, observer: KVObserver) -> None:
    """Load a shared prefill into a policy's own (differently sized) cache and observer."""
    cache.append(prefill.input_ids, prefill.positions, prefill.valid, is_prompt=True)
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


def generate_batch(
    parts: ModelParts,
    requests: Sequence[GenerationRequest],
    policy: Policy,
    schedule: EvictionSchedule | None,
    sampling: SamplingParams,
    device: torch.device,
    on_forward: Callable[[CompactingCache, torch.Tensor, list[str]], None] | None = None,
    record_steps: bool = False,
    prefill: Prefill | None = None,
) -> list[SequenceResult]:
    """Generate every request in one batch.

    ``on_forward(cache, logits, request_ids)`` is a test hook. With ``record_steps`` every result's ``extra``
    gets ``step_s`` / ``step_policy_s`` / ``step_cache_tokens``: wall time, policy time and physical cache
    length (before that step's compression) of each decode step of the batch (for benchmarks).
    ``prefill`` (from ``prefill_batch`` on the same requests) skips the prompt forward; TTFT then counts the
    shared prefill's time.
    """
    if prefill is not None and [r.request_id for r in prefill.requests] != [r.request_id for r in requests]:
        raise ValueError("the prefill was made for other requests")
    rows = [
        _Row(r, (r.schedule or schedule) if policy.evicts else None, None, next_position=len(r.prompt_ids))
        for r in requests
    ]
    if not sampling.greedy:
        for row, gen in zip(rows, make_generators([r.seed for r in requests], device)):
            row.generator = gen
    input_ids, valid, positions = _left_pad(requests, parts.pad_id, device)
    prompt_len = input_ids.shape[1]
    capacity = max(
        row.schedule.capacity(prompt_len, sampling.max_new_tokens)
        if row.schedule
        else prompt_len + sampling.max_new_tokens
        for row in rows
    )
    state_names = policy.state_names + ((ATTENTION_STATE,) if "attention" in policy.needs else ())
    cache = CompactingCache(parts.num_layers, capacity, state_names)
    observer = KVObserver(parts.num_layers, policy.query_window if "queries" in policy.needs else 0)
    stopper = StopChecker(sampling.stop, parts.decode_text)
    want_hidden = "hidden" in policy.needs

    active = list(range(len(rows)))  # row index of every batch entry
    steps: dict[str, list[float]] = {"step_s": [], "step_policy_s": [], "step_cache_tokens": []}
    _sync(device)
    t0 = step_start = time.perf_counter()
    is_prompt = True
    with torch.inference_mode():
        while True:
            # ---- forward the incoming tokens (or start from a shared prefill)
            if is_prompt and prefill is not None:
                _restore(prefill, cache, observer)
                start, hidden, logits = 0, prefill.hidden, prefill.logits
            else:
                start, hidden, logits = _forward(parts, cache, observer, input_ids, positions, valid, is_prompt)
            if on_forward is not None:
                on_forward(cache, logits, [rows[i].request.request_id for i in active])
            tp = time.perf_counter()
            policy.observe(StepObservation(input_ids, start, hidden if want_hidden else None, is_prompt), cache.state)
            observe_s = time.perf_counter() - tp + observer.take_seconds()

            # ---- choose next tokens, finish rows
            next_ids = _force(choose_next(logits, sampling, [rows[i].generator for i in active]),
                              [rows[i] for i in active])
            _sync(device)
            now = time.perf_counter()
            if is_prompt:
                ttft = now - t0 + (prefill.seconds if prefill is not None else 0.0)
            live = cache.live_counts().tolist()
            keep_entries = []
            for b, i in enumerate(active):
                row = rows[i]
                row.policy_s += observe_s
                row.peak_live = max(row.peak_live, live[b])
                token = int(next_ids[b])
                row.output.append(token)
                if token in parts.eos_ids:
                    row.finish = "eos"
                elif stopper.hit(row.output):
                    row.finish = "stop"
                elif len(row.output) >= sampling.max_new_tokens:
                    row.finish = "length"
                if row.finish:
                    row.done_at = now
                else:
                    keep_entries.append(b)
            if not keep_entries:
                break
            if len(keep_entries) < len(active):
                sel = torch.tensor(keep_entries, device=device)
                cache.select_rows(sel)
                observer.select_rows(sel)
                next_ids = next_ids.index_select(0, sel)
                active = [active[b] for b in keep_entries]

            # ---- compress when the schedule says so
            held = cache.length  # the step's largest cache, before any compression
            compress_s = _maybe_compress(cache, observer, policy, [rows[i] for i in active], parts.think_end_id)
            if record_steps:
                _sync(device)
                end = time.perf_counter()
                if not is_prompt:
                    steps["step_s"].append(end - step_start)
                    steps["step_policy_s"].append(observe_s + compress_s)
                    steps["step_cache_tokens"].append(float(held))
                step_start = end

            input_ids = next_ids.unsqueeze(1)
            positions = torch.tensor([[rows[i].next_position] for i in active], device=device)
            valid = torch.ones_like(input_ids, dtype=torch.bool)
            for i in active:
                rows[i].next_position += 1
            is_prompt = False

    results = [_result(row, ttft, t0, parts, stopper) for row in rows]
    for result in results:
        result.extra["kv_batch_allocated_bytes"] = cache.peak_allocated_bytes
        result.extra["batch_size"] = len(rows)
        if record_steps:
            result.extra.update(steps)
    return results


def _force(next_ids: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
    """Replace the choices of rows that still have forced tokens to write (trace replay)."""
    for b, row in enumerate(rows):
        forced = row.request.forced_ids
        if forced and len(row.output) < len(forced):
            next_ids[b] = forced[len(row.output)]
    return next_ids


def _maybe_compress(
    cache: CompactingCache,
    observer: KVObserver,
    policy: Policy,
    rows: list[_Row],
    think_end_id: int | None,
) -> float:
    """Compress if any row's schedule fires; returns the seconds spent (0 when nothing happened)."""
    if not policy.evicts:
        return 0.0
    live = cache.live_counts()
    prompt_counts = (cache.is_prompt[:, : cache.length] & cache.valid[:, : cache.length]).sum(-1)
    fired = [row.schedule.triggers(int(n)) for row, n in zip(rows, live)]
    full = cache.length >= cache.capacity  # left padding can fill the buffer before any row's trigger
    if not any(fired) and not full:
        return 0.0
    tp = time.perf_counter()
    keep = torch.tensor(
        [
            row.schedule.keep_count(int(n), int(p)) if hit else int(n)
            for row, hit, n, p in zip(rows, fired, live, prompt_counts)
        ],
        device=live.device,
    )
    t = cache.length
    view = CacheView(
        valid=cache.valid[:, :t],
        positions=cache.positions[:, :t],
        token_ids=cache.token_ids[:, :t],
        is_prompt=cache.is_prompt[:, :t],
        keys=[layer.live_keys() for layer in cache.layers],
        queries=observer.queries if observer.query_window else None,
        query_valid=observer.query_valid,
        state={name: tensor[:, :t] for name, tensor in cache.state.items()},
        think_end_id=think_end_id,
    )
    # Every row shares one schedule shape here; window and prompt protection come from the first row's.
    sched = rows[0].schedule
    assert sched is not None
    scores = policy.score(view)
    kept, kept_valid = policy.select(scores, view, keep, sched.window, sched.protect_prompt)
    policy.evict(cache, kept, kept_valid)
    # a prompt longer than the budget made the buffers larger than the schedule needs: give that memory back
    cache.shrink(max(row.schedule.steady_capacity() for row in rows if row.schedule))
    elapsed = time.perf_counter() - tp
    for row, hit in zip(rows, fired):
        row.policy_s += elapsed
        row.compressions += int(hit)
    return elapsed


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
