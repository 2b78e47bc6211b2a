"""Observations a policy declared it needs, taken inside the model's attention without changing its kernel.

We register one attention implementation, ``dynts_sdpa``: it is transformers' SDPA plus a call to the
``KVObserver`` passed through the forward's kwargs. The observer keeps the last ``w`` post-RoPE queries of every
layer (so attention can be computed at selection time from stored queries and cached keys) and, only when a
policy needs it every step (H2O), accumulates the attention each cached token receives.
The registration is stateless: all state is in the observer object of one generation call.
"""

from __future__ import annotations

import time

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_IMPLEMENTATION = "dynts_sdpa"
_QUERY_CHUNK = 256  # bounds the [B, H, chunk, T] probabilities materialised for attention accumulation
#: a KV head's keys and values up to this size are read once per query head (``spreads_query_heads``): a core's L2
SPREAD_BYTES = 1 << 20


class KVObserver:
    """Per-call collector of recent queries and accumulated attention (see module docstring)."""

    def __init__(self, num_layers: int, query_window: int, accumulates: bool = False) -> None:
        self.num_layers = num_layers
        self.query_window = query_window
        self.accumulates = accumulates
        self.queries: list[torch.Tensor | None] = [None] * num_layers
        self.query_valid: torch.Tensor | None = None  # [B, w]
        self.accumulate_into: torch.Tensor | None = None  # [B, capacity], the cache's state; set per forward
        self.q_valid_rows: torch.Tensor | None = None  # [B, q] which incoming tokens are real
        self.seconds = 0.0  # time spent observing inside the forward, charged to the policy

    @property
    def watches(self) -> bool:
        """Whether the attention needs to call this observer at all (a forward without it runs plain SDPA)."""
        return bool(self.query_window) or self.accumulates

    def take_seconds(self) -> float:
        spent, self.seconds = self.seconds, 0.0
        return spent

    def begin(self, incoming_valid: torch.Tensor, accumulate_into: torch.Tensor | None) -> None:
        """Called before each forward with the validity of its incoming tokens ``[B, q]``."""
        self.q_valid_rows = incoming_valid
        self.accumulate_into = accumulate_into if self.accumulates else None
        if self.query_window:
            w = self.query_window
            prev = self.query_valid
            new = incoming_valid[:, -w:]
            # a step that brings w queries replaces the window outright (a decode step when w is 1): no copy
            self.query_valid = new if prev is None or new.shape[1] == w else torch.cat([prev, new], dim=1)[:, -w:]

    def on_attention(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float
    ) -> None:
        started = time.perf_counter()
        if self.query_window:
            w = self.query_window
            q = query[:, :, -w:].detach()
            prev = self.queries[layer]
            self.queries[layer] = q if prev is None or q.shape[2] == w else torch.cat([prev, q], dim=2)[:, :, -w:]
        if self.accumulate_into is not None:
            self._accumulate(query, key, mask, scaling)
        self.seconds += time.perf_counter() - started

    def _accumulate(self, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float) -> None:
        b, h, q_len, _ = query.shape
        kv_len = key.shape[2]
        key = key.repeat_interleave(h // key.shape[1], dim=1).float()
        total = torch.zeros(b, kv_len, device=query.device)
        for start in range(0, q_len, _QUERY_CHUNK):
            q = query[:, :, start : start + _QUERY_CHUNK].float()
            logits = (q @ key.transpose(-1, -2)) * scaling  # [B, H, c, T]
            if mask is not None:
                m = mask[:, :, start : start + _QUERY_CHUNK]
                logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m
            else:  # SDPA dropped the mask: plain causal with the queries at the end
                rows = torch.arange(start, start + q.shape[2], device=q.device) + (kv_len - q_len)
                causal = torch.arange(kv_len, device=q.device)[None, :] <= rows[:, None]
                logits = logits.masked_fill(~causal, float("-inf"))
            probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
            if self.q_valid_rows is not None:  # padded query rows give no attention
                probs = probs * self.q_valid_rows[:, None, start : start + q.shape[2], None]
            total += probs.sum(dim=(1, 2))
        assert self.accumulate_into is not None
        self.accumulate_into[:, :kv_len] += total / self.num_layers

    def select_rows(self, rows: torch.Tensor) -> None:
        self.queries = [None if q is None else q.index_select(0, rows) for q in self.queries]
        if self.query_valid is not None:
            self.query_valid = self.query_valid.index_select(0, rows)


def observed_sdpa(module, query, key, value, attention_mask, **kwargs):
    observer: KVObserver | None = kwargs.pop("kv_observer", None)
    if observer is not None:
        observer.on_attention(module.layer_idx, query, key, attention_mask, kwargs.get("scaling") or module.scaling)
    if spreads_query_heads(module, query, key, attention_mask, kwargs):
        return per_query_head_sdpa(query, key, value, attention_mask, kwargs.get("scaling") or module.scaling)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def spreads_query_heads(module, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                        kwargs: dict) -> bool:
    """Whether a masked CPU decode step of grouped-query attention runs one work item per query head (SDPA's
    ``enable_gqa``) instead of transformers' packing of each KV head's queries into one (``pack_gqa``). Packing
    leaves batch x KV heads items, which split unevenly over the threads when there are few of them (SmolLM2 at
    batch 1: 3 items on 2 threads); one item per query head reads each KV head once per query head, cheap while a
    KV head's keys and values (``SPREAD_BYTES``) stay in a core's cache between the reads. Measured on SmolLM2,
    batch 1, 2 threads: a 1,088-slot window about 5% faster a step spread; the full cache at 8k context about 3%
    slower spread; at batch 8 (24 items) packing is faster."""
    groups = getattr(module, "num_key_value_groups", 1)
    head_bytes = key.shape[2] * key.shape[3] * 2 * key.element_size()
    return (groups > 1 and attention_mask is not None and query.device.type == "cpu" and query.shape[2] == 1
            and not kwargs.get("dropout") and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
            and query.shape[0] * query.shape[1] // groups < 2 * torch.get_num_threads()
            and head_bytes <= SPREAD_BYTES)


def per_query_head_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
                        scaling: float) -> tuple[torch.Tensor, None]:
    """A decode step's attention with one work item per query head, in ``sdpa_attention_forward``'s output layout
    ``[B, q, heads, D]``."""
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                                           enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the observing attention with transformers (idempotent); returns its name."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, observed_sdpa)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION
