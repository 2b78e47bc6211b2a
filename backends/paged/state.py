"""Engine-side book-keeping of each request under a policy (vLLM's worker, SGLang's scheduler): slots -> logical
tokens, policy state, recent queries, decode tokens buffered before ``Policy.observe``.

Nothing per slot is stored while nothing was evicted: a request's physical slot ``s`` holds logical token
``prefix[s]`` for ``s < len(prefix)`` and ``s + dropped`` after it (tokens appended after the last compaction are
consecutive). So a decode step costs no metadata writes; the map is materialised only at compaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zoo.base import Policy, StepObservation
from zoo.schedule import EvictionSchedule

#: decode tokens of one request buffered before ``Policy.observe`` runs on them (also flushed at compaction)
OBSERVE_CHUNK = 16


@dataclass
class PendingObservation:
    slot_start: int
    token_ids: list[torch.Tensor] = field(default_factory=list)  # [q] each
    hidden: list[torch.Tensor] = field(default_factory=list)  # [q, hidden] each

    @property
    def count(self) -> int:
        return sum(int(t.numel()) for t in self.token_ids)


@dataclass
class RequestState:
    """One request's compaction state in the worker (reset on preemption: the resume recomputes everything)."""

    request_id: str  # the engine's own id
    key: str  # the backend's own id (``SamplingParams.extra_args``), under which its stats are read
    schedule: EvictionSchedule | None
    num_prompt: int
    capacity: int  # slots the state tensors can hold (max_model_len)
    query_row: int = -1  # row in the worker's query store, -1 when the policy needs no queries
    prefix: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    dropped: int = 0  # logical tokens processed minus physical slots held
    physical: int = 0  # slots written
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # [1, capacity] per policy state name
    pending: PendingObservation | None = None
    compressions: int = 0
    policy_s: float = 0.0
    peak_physical: int = 0

    def reset(self) -> None:
        self.prefix = torch.empty(0, dtype=torch.long)
        self.dropped = 0
        self.physical = 0
        self.pending = None
        for tensor in self.state.values():
            tensor.zero_()

    @property
    def logical(self) -> int:
        return self.physical + self.dropped

    def logical_map(self) -> torch.Tensor:
        """Long ``[physical]``: the logical index (= RoPE position) of every slot."""
        k = int(self.prefix.numel())
        tail = torch.arange(k, self.physical, dtype=torch.long) + self.dropped
        return torch.cat([self.prefix, tail])

    def apply_compaction(self, kept: torch.Tensor) -> None:
        """Slots ``kept`` (physical, ascending) survive and move to the front, in order."""
        logical = self.logical
        self.prefix = self.logical_map()[kept]
        k = int(kept.numel())
        for tensor in self.state.values():
            tensor[:, :k] = tensor[:, kept]
            tensor[:, k:] = 0
        self.physical = k
        self.dropped = logical - k


class QueryStore:
    """The last ``window`` post-RoPE queries of every layer for every request, in one ring-buffer tensor.

    ``store[row, layer, pos % window]`` holds the query of the token at logical position ``pos``; rows are handed
    out per request and grow on demand.
    """

    def __init__(self, num_layers: int, window: int, heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> None:
        self.window = window
        self.store = torch.zeros(0, num_layers, window, heads, head_dim, dtype=dtype, device=device)
        self.free: list[int] = []

    def acquire(self) -> int:
        if not self.free:
            old = self.store.shape[0]
            grow = max(8, old)
            self.store = torch.cat([self.store, self.store.new_zeros(grow, *self.store.shape[1:])])
            self.free = list(range(old + grow - 1, old - 1, -1))
        return self.free.pop()

    def release(self, row: int) -> None:
        if row >= 0:
            self.free.append(row)

    def write(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, queries: torch.Tensor) -> None:
        """``queries [n, heads, head_dim]`` of tokens at logical ``positions`` of requests ``rows`` (unique)."""
        self.store[rows, layer, positions % self.window] = queries.to(self.store.dtype)

    def read(self, rows: torch.Tensor, lengths: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per layer ``[B, heads, window, head_dim]`` oldest first, and ``query_valid [B, window]``."""
        w = self.window
        rows, lengths = rows.to(self.store.device), lengths.to(self.store.device)
        pos = lengths[:, None] - w + torch.arange(w, device=lengths.device)[None, :]  # logical positions, last w
        valid = pos >= 0
        ring = pos.clamp(min=0) % w
        per_layer = []
        for layer in range(self.store.shape[1]):
            q = self.store[rows[:, None], layer, ring]  # [B, w, H, D]
            per_layer.append(q.masked_fill(~valid[:, :, None, None], 0).transpose(1, 2))
        return per_layer, valid


def observe_tokens(policy: Policy, st: RequestState, slot: int, tokens: torch.Tensor, hidden: torch.Tensor | None,
                   prefill: bool) -> None:
    """Hand a step's tokens of one request to ``policy.observe``: a prefill chunk at once, decode tokens buffered
    up to ``OBSERVE_CHUNK`` (and flushed before any compaction), so the policy sees them like a prefill."""
    if prefill:
        flush_observations(policy, st)
        _call_observe(policy, st, slot, tokens, hidden, True)
        return
    if st.pending is None:
        st.pending = PendingObservation(slot)
    st.pending.token_ids.append(tokens)
    if hidden is not None:
        st.pending.hidden.append(hidden)
    if st.pending.count >= OBSERVE_CHUNK:
        flush_observations(policy, st)


def flush_observations(policy: Policy, st: RequestState) -> None:
    pending, st.pending = st.pending, None
    if pending is None or not pending.token_ids:
        return
    hidden = torch.cat(pending.hidden) if pending.hidden else None
    _call_observe(policy, st, pending.slot_start, torch.cat(pending.token_ids), hidden, False)


def _call_observe(policy: Policy, st: RequestState, slot: int, tokens: torch.Tensor, hidden: torch.Tensor | None,
                  prefill: bool) -> None:
    obs = StepObservation(tokens.long().unsqueeze(0), slot, None if hidden is None else hidden.unsqueeze(0), prefill)
    policy.observe(obs, st.state)
