"""Importance labels for thinking tokens: how much the final answer uses each one.

``attention`` (the paper's): the attention each thinking token receives from the answer's queries (every
position after ``</think>``), diagonal zeroed, averaged over heads, answer queries and layers. Computed one
layer and one chunk of answer queries at a time from the stored queries and cached keys, so a long trace
never materialises a T x T attention matrix for all layers.

``gradient``: |d log p(answer) / d embedding . embedding| per token (gradient x input attribution).

``lookback`` (ours): the largest attention a token receives from any later query at least ``LOOKBACK_DISTANCE``
tokens away (answer or thinking), averaged over heads and layers. Teacher-forced labels of the answer only see
what the answer reads directly; when a thinking step re-reads a value stated far back (the tiny task's
``r1 0``, a lemma in a proof), that value is critical for eviction although the answer never looks at it.
This label keeps all queries of the trace (memory: layers x heads x T x head_dim).

``later`` (ours): the attention a token receives from *every* later query at least ``LOOKBACK_DISTANCE`` tokens
away -- the thinking steps after it beyond the recent window and the answer -- summed over those queries,
averaged over heads and layers. Where ``attention`` asks "does the answer read it?", this asks "does anything
read it once it has left the window?", which is when eviction can take it; the sum (not ``lookback``'s max)
keeps a token that many far queries read a little above one that a single query reads once.

``copy`` (ours, the shipped predictors' labels): the largest single-head attention a token receives from a query at
least ``LOOKBACK_DISTANCE`` tokens later *that is writing the token which followed it* -- the induction read that
copies a stated value -- counting only reads whose bigram does not also occur inside the query's own window (a
template, or a value restated nearby, needed no far copy) and splitting the credit between equally far sources.
Where ``lookback`` also rewards habitual far reads (a fixed line position, template words), this keeps the reads
that carried information the window did not have.

``lifetime`` (ours): *until when* a token is needed rather than how much -- the distance in tokens from the token
to the last later query that far-copies it (the reads ``copy`` takes its maximum over), 0 where nothing does. A
read counts where its attention is at least ``LIFETIME_MIN_ATTENTION`` and at least ``LIFETIME_SHARE`` of the
token's copy label: most bigram matches get a fraction of a percent of attention (on the register program's
training traces, 90% of the nonzero far-copy reads are below 0.02, while reads of a stated value are either
below 0.01 or above 0.05), so counting every match would extend a value's lifetime to the last time its
bigram happened to recur; the share drops a faint late re-read of a token that one query read strongly. A value a
later statement overwrites stops being read there, so its lifetime ends, where ``copy`` only says it was read.

Labels are written to ``labels-<method>.safetensors`` in the trace store (one tensor per trace id, over its
thinking tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from scipy.stats import spearmanr

from backends.hf.backend import TransformersBackend
from backends.hf.observe import KVObserver
from harness.predictor_pipeline.traces import Trace, TraceStore, TraceStoreError

LOOKBACK_DISTANCE = 32
#: a far-copying read counts towards a token's ``lifetime`` where its attention is at least this ...
LIFETIME_MIN_ATTENTION = 0.05
#: ... and at least this share of the token's strongest such read (its ``copy`` label)
LIFETIME_SHARE = 0.25
#: label methods and what each measures: ``dynts-bench label --method`` and ``train-predictor --label-method``
METHOD_HELP = {
    "attention": "attention the answer pays the token (the paper's label)",
    "gradient": "gradient of the answer's log-likelihood with respect to the token's input embedding",
    "lookback": f"largest head-averaged attention from a query at least {LOOKBACK_DISTANCE} tokens later",
    "later": f"total head-averaged attention from every query at least {LOOKBACK_DISTANCE} tokens later",
    "copy": f"largest single-head attention from a query at least {LOOKBACK_DISTANCE} tokens later that writes the "
            "token which followed it (an induction copy), template and restated bigrams excluded; the shipped "
            "recipe",
    "lifetime": f"tokens from the token to the last query at least {LOOKBACK_DISTANCE} tokens later that "
                f"far-copies it (a copy read of attention >= {LIFETIME_MIN_ATTENTION} and >= {LIFETIME_SHARE} of "
                "its strongest), 0 if none: how long the token stays needed",
}
METHODS = tuple(METHOD_HELP)
_QUERY_CHUNK = 128


def methods_help() -> str:
    """``name: meaning`` for every label method, for the commands' help."""
    return "; ".join(f"{name}: {meaning}" for name, meaning in METHOD_HELP.items())


def answer_span(trace: Trace, eos_ids: frozenset[int]) -> tuple[int, int]:
    """``(first, end)``: answer tokens are positions ``first .. end - 1`` (after ``</think>``, before EOS)."""
    r = trace.record
    end = r.length - (1 if int(trace.tokens[-1]) in eos_ids else 0)
    assert r.answer_start is not None
    return r.answer_start, end


def observed_forward(engine: TransformersBackend, ids: torch.Tensor, query_window: int, accumulate: bool = False):
    """One forward of ``ids`` keeping per-layer keys, the last ``query_window`` queries and (optionally) the
    attention every token receives from every later one (H2O's statistic). Returns (keys, queries, received)."""
    from transformers import DynamicCache

    parts = engine.parts
    observer = KVObserver(parts.num_layers, query_window)
    received = torch.zeros(1, ids.numel(), device=engine.device) if accumulate else None
    observer.begin(torch.ones(1, ids.numel(), dtype=torch.bool, device=engine.device), received)
    cache = DynamicCache(config=engine.model.config)
    with torch.inference_mode():
        parts.decoder(input_ids=ids[None].to(engine.device), past_key_values=cache, use_cache=True,
                      kv_observer=observer)
    keys = [layer.keys for layer in cache.layers]
    return keys, observer.queries, received


def causal_chunks(queries: torch.Tensor, keys: torch.Tensor, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(rows, probs)`` per chunk of queries: the queries' positions ``[c]`` (``first, first+1, ...``) and their
    causal attention ``[H, c, T]``. ``queries`` [1, H, A, D], ``keys`` [1, KVH, T, D]; one chunk at a time, so a
    long trace never materialises all A x T probabilities at once."""
    h, a, d = queries.shape[1], queries.shape[2], queries.shape[3]
    k = keys[0].float().repeat_interleave(h // keys.shape[1], dim=0)  # [H, T, D]
    cols = torch.arange(k.shape[1], device=k.device)[None, :]
    for start in range(0, a, _QUERY_CHUNK):
        q = queries[0, :, start : start + _QUERY_CHUNK].float()  # [H, c, D]
        rows = first + start + torch.arange(q.shape[1], device=k.device)
        logits = (q @ k.transpose(-1, -2)) / d**0.5  # [H, c, T]
        yield rows, logits.masked_fill(cols > rows[:, None], float("-inf")).softmax(-1)


def attention_from(queries: torch.Tensor, keys: torch.Tensor, first: int) -> torch.Tensor:
    """Attention each key receives from queries at positions ``first, first+1, ...`` (causal, diagonal zeroed),
    summed over heads and queries: ``[T]``."""
    total = torch.zeros(keys.shape[2], device=keys.device)
    for rows, probs in causal_chunks(queries, keys, first):
        diagonal = torch.arange(keys.shape[2], device=keys.device)[None, :] == rows[:, None]
        total += probs.masked_fill(diagonal, 0.0).sum(dim=(0, 1))
    return total


def attention_label(engine: TransformersBackend, trace: Trace) -> torch.Tensor:
    first, end = answer_span(trace, engine.parts.eos_ids)
    if end <= first:
        raise TraceStoreError(f"trace {trace.record.id} has no answer after </think>")
    keys, queries, _ = observed_forward(engine, trace.tokens[:end], end - first)
    heads = queries[0].shape[1]
    per_layer = [attention_from(q, k, first) for q, k in zip(queries, keys)]
    label = torch.stack(per_layer).mean(0) / (heads * (end - first))
    return label[trace.record.thinking].cpu()


def lookback_label(engine: TransformersBackend, trace: Trace, distance: int = LOOKBACK_DISTANCE) -> torch.Tensor:
    first, end = answer_span(trace, engine.parts.eos_ids)
    keys, queries, _ = observed_forward(engine, trace.tokens[:end], end)
    per_layer = []
    for q_all, k_all in zip(queries, keys):
        cols = torch.arange(k_all.shape[2], device=k_all.device)[None, :]
        best = torch.zeros(k_all.shape[2], device=k_all.device)
        for rows, probs in causal_chunks(q_all, k_all, 0):
            far = (cols <= rows[:, None] - distance).float()  # only reads from at least `distance` back
            best = torch.maximum(best, (probs.mean(0) * far).amax(0))
        per_layer.append(best)
    return torch.stack(per_layer).mean(0)[trace.record.thinking].cpu()


def later_label(engine: TransformersBackend, trace: Trace, distance: int = LOOKBACK_DISTANCE) -> torch.Tensor:
    first, end = answer_span(trace, engine.parts.eos_ids)
    keys, queries, _ = observed_forward(engine, trace.tokens[:end], end)
    per_layer = []
    for q_all, k_all in zip(queries, keys):
        cols = torch.arange(k_all.shape[2], device=k_all.device)[None, :]
        total = torch.zeros(k_all.shape[2], device=k_all.device)
        for rows, probs in causal_chunks(q_all, k_all, 0):
            far = (cols <= rows[:, None] - distance).float()  # only reads from at least `distance` back
            total += (probs.mean(0) * far).sum(0)
        per_layer.append(total)
    return torch.stack(per_layer).mean(0)[trace.record.thinking].cpu()


def copy_label(engine: TransformersBackend, trace: Trace, distance: int = LOOKBACK_DISTANCE) -> torch.Tensor:
    first, end = answer_span(trace, engine.parts.eos_ids)
    reads = far_copy_reads(engine, trace.tokens[:end].to(engine.device), distance)
    return strongest_reads(reads(), end)[trace.record.thinking].cpu()


def lifetime_label(engine: TransformersBackend, trace: Trace, distance: int = LOOKBACK_DISTANCE,
                   min_attention: float = LIFETIME_MIN_ATTENTION, share: float = LIFETIME_SHARE) -> torch.Tensor:
    first, end = answer_span(trace, engine.parts.eos_ids)
    reads = far_copy_reads(engine, trace.tokens[:end].to(engine.device), distance)
    return lifetimes(reads, end, min_attention, share)[trace.record.thinking].cpu()


Reads = Iterator[tuple[torch.Tensor, torch.Tensor]]  # (query positions [c], their far-copy reads [c, T])


def far_copy_reads(engine: TransformersBackend, tokens: torch.Tensor, distance: int) -> Callable[[], Reads]:
    """A fresh iterator, per call, over every layer's chunks of queries: ``(rows, reads)``, ``reads[q, j]`` the
    largest single-head attention query ``rows[q]`` pays key ``j`` times the query's far-copy weight for it
    (``far_copies``). One forward serves every pass over them."""
    keys, queries, _ = observed_forward(engine, tokens, tokens.numel())

    def passes() -> Reads:
        for q_all, k_all in zip(queries, keys):
            for rows, probs in causal_chunks(q_all, k_all, 0):
                yield rows, probs.amax(0) * far_copies(tokens, distance, rows)

    return passes


def strongest_reads(reads: Reads, length: int) -> torch.Tensor:
    """``[length]``: each key's strongest far-copy read over every query and layer (the ``copy`` label)."""
    best = None
    for _, read in reads:
        best = read.amax(0) if best is None else torch.maximum(best, read.amax(0))
    return best[:length] if best is not None else torch.zeros(length)


def lifetimes(reads: Callable[[], Reads], length: int, min_attention: float = LIFETIME_MIN_ATTENTION,
              share: float = LIFETIME_SHARE) -> torch.Tensor:
    """``[length]``: for each key, the distance to the last query whose far-copy read of it (in any layer) is at
    least ``min_attention`` and at least ``share`` of the key's strongest read; 0 where no read counts. Two passes:
    the strongest reads first, as each key's threshold depends on them."""
    threshold = (strongest_reads(reads(), length) * share).clamp(min=min_attention)
    last = None
    for rows, read in reads():
        counted = torch.where((read >= threshold) & (read > 0), rows[:, None], -1).amax(0)
        last = counted if last is None else torch.maximum(last, counted)
    if last is None:
        return torch.zeros(length)
    keys = torch.arange(length, device=last.device)
    return torch.where(last >= 0, last - keys, 0).float()


def far_copies(tokens: torch.Tensor, distance: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``[Q, T]`` weights for the queries ``rows`` (default: every position): ``1/n`` where query ``i`` could have
    copied its next token from key ``j``, one of ``n`` equally far sources, and from nowhere nearer; 0 elsewhere.
    Per chunk of queries, like the attention itself, so a long trace never materialises a T x T matrix.

    The induction pattern: the key's bigram (``tokens[j-1], tokens[j]``) is the query's token and the token it
    wrote next (``tokens[i], tokens[i+1]``), the key is at least ``distance`` back (outside the recent window),
    and that bigram does not occur inside the window (``i - distance < m <= i``) -- where it does, a nearer
    copy served the query and the far one was not needed (template tokens, restated values).
    """
    t = tokens.numel()
    if rows is None:
        rows = torch.arange(t, device=tokens.device)
    written = torch.cat([tokens[1:], tokens.new_full((1,), -1)])  # the token each position went on to write
    before = torch.cat([tokens.new_full((1,), -1), tokens[:-1]])  # each key's preceding token
    match = (before[None, :] == tokens[rows, None]) & (tokens[None, :] == written[rows, None])
    r, cols = rows[:, None], torch.arange(t, device=tokens.device)[None, :]
    in_window = (match & (cols > r - distance) & (cols <= r)).any(1)
    far = match & (cols <= r - distance) & ~in_window[:, None]
    return far.float() / far.sum(1, keepdim=True).clamp(min=1)


def gradient_label(engine: TransformersBackend, trace: Trace) -> torch.Tensor:
    first, end = answer_span(trace, engine.parts.eos_ids)
    if end <= first:
        raise TraceStoreError(f"trace {trace.record.id} has no answer after </think>")
    model = engine.model
    ids = trace.tokens[:end].to(engine.device)
    trainable = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with torch.enable_grad():
            embeds = model.get_input_embeddings()(ids[None]).detach().float().requires_grad_(True)
            logits = model(inputs_embeds=embeds.to(model.dtype)).logits[0].float()
            logp = logits[first - 1 : end - 1].log_softmax(-1).gather(-1, ids[first:end, None]).sum()
            logp.backward()
    finally:
        for p, flag in zip(model.parameters(), trainable):
            p.requires_grad_(flag)
    attribution = (embeds.grad[0] * embeds[0]).sum(-1).abs().detach()
    return attribution[trace.record.thinking].cpu()


LABELLERS: dict[str, Callable[[Any, Trace], torch.Tensor]] = {
    "attention": attention_label, "gradient": gradient_label, "lookback": lookback_label, "later": later_label,
    "copy": copy_label, "lifetime": lifetime_label}


def labels_path(store: TraceStore, method: str) -> Path:
    return store.path / f"labels-{method}.safetensors"


def label_store(engine: TransformersBackend, store: TraceStore, methods: Sequence[str],
                on_trace: Callable[[], None] | None = None) -> dict[str, Any]:
    """Label every closed trace of the store with each method; returns counts and the methods' agreement."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise TraceStoreError(f"unknown label method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    records = [r for r in store.records() if r.think_end is not None]
    if not records:
        raise TraceStoreError(f"{store.path} holds no trace that closed its thinking: nothing to label")
    out: dict[str, dict[str, torch.Tensor]] = {m: {} for m in methods}
    for trace in store.load(records):
        first, end = answer_span(trace, engine.parts.eos_ids)
        if end <= first:
            continue  # nothing after </think>: no answer to attribute
        for method in methods:
            out[method][trace.record.id] = LABELLERS[method](engine, trace).float().contiguous()
        if on_trace is not None:
            on_trace()
    for method, tensors in out.items():
        tmp = labels_path(store, method).with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(labels_path(store, method))
    report: dict[str, Any] = {"labelled": len(next(iter(out.values()))), "methods": list(methods)}
    agreement = {}
    for i, one in enumerate(methods):
        for other in methods[i + 1 :]:
            a, b = out[one], out[other]
            rhos = [spearmanr(a[k].numpy(), b[k].numpy()).statistic for k in a if a[k].numel() > 2]
            rhos = [r for r in rhos if r == r]  # constant labels give NaN
            agreement[f"{one}~{other}"] = sum(rhos) / len(rhos) if rhos else None
    report["spearman_between_methods"] = agreement
    return report


def load_labels(store: TraceStore, method: str) -> dict[str, torch.Tensor]:
    path = labels_path(store, method)
    if not path.is_file():
        raise TraceStoreError(f"no {method} labels in {store.path}: run dynts-bench label {store.path} "
                              f"--method {method}")
    return load_file(str(path))
