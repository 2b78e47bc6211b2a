"""The requests due for compaction in one step, as the batched ``CacheView`` a policy scores and selects from.

Rows are the due requests, columns their physical slots, left-padded to the longest (``valid`` marks real
slots): logical (RoPE) positions from each request's slot map, token ids, prompt flags and per-slot policy state.
An engine adds where each slot's keys live (blocks and offsets, pool slots) and reads them lazily
(``backends.paged.keys``); the choice of what survives is then the same ``Policy.score`` / ``Policy.select`` as the
transformers backend's, and ``survivors`` turns a row's kept columns back into the request's physical slots.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from backends.paged.state import RequestState, flush_observations
from zoo.base import CacheView, Policy
from zoo.schedule import row_budgets


@dataclass
class DueBatch:
    states: list[RequestState]
    valid: torch.Tensor  # bool [B, T]
    positions: torch.Tensor  # long [B, T], -1 where invalid
    token_ids: torch.Tensor  # long [B, T]
    is_prompt: torch.Tensor  # bool [B, T]
    state: dict[str, torch.Tensor]  # per policy state name, [B, T] on the policy's device
    pads: list[int]  # left padding of each row

    @classmethod
    def build(cls, policy: Policy, states: list[RequestState],
              token_ids: Callable[[int, RequestState, torch.Tensor], torch.Tensor],
              device: torch.device | str = "cpu") -> DueBatch:
        """Flush each request's buffered observations, then lay the batch out; ``token_ids(row, state, logical)``
        gives the token ids at a request's logical positions."""
        for st in states:
            flush_observations(policy, st)
        width = max(st.physical for st in states)
        b = len(states)
        valid = torch.zeros(b, width, dtype=torch.bool)
        positions = torch.full((b, width), -1, dtype=torch.long)
        ids = torch.zeros(b, width, dtype=torch.long)
        is_prompt = torch.zeros(b, width, dtype=torch.bool)
        state = {name: torch.zeros(b, width, device=device) for name in policy.state_names}
        pads = []
        for row, st in enumerate(states):
            pad = width - st.physical
            pads.append(pad)
            logical = st.logical_map()
            valid[row, pad:] = True
            positions[row, pad:] = logical
            ids[row, pad:] = token_ids(row, st, logical)
            is_prompt[row, pad:] = logical < st.num_prompt
            for name in state:
                state[name][row, pad:] = st.state[name][0, : st.physical]
        return cls(states, valid, positions, ids, is_prompt, state, pads)

    def view(self, keys: Sequence[torch.Tensor], queries: Sequence[torch.Tensor] | None,
             query_valid: torch.Tensor | None, think_end_id: int | None,
             device: torch.device | str = "cpu") -> CacheView:
        """The policy's view, its ``[B, T]`` tensors on ``device`` (where the KV cache and the policy state are)."""
        return CacheView(valid=self.valid.to(device), positions=self.positions.to(device),
                         token_ids=self.token_ids.to(device), is_prompt=self.is_prompt.to(device), keys=keys,
                         queries=queries, query_valid=None if query_valid is None else query_valid.to(device),
                         state=self.state, think_end_id=think_end_id,
                         budgets=row_budgets([st.schedule for st in self.states]))

    def select(self, policy: Policy, view: CacheView) -> tuple[torch.Tensor, torch.Tensor]:
        """``Policy.score`` then ``Policy.select`` down to each request's schedule's keep count."""
        live = self.valid.sum(-1)
        prompt_counts = (self.is_prompt & self.valid).sum(-1)
        keep = torch.tensor([st.schedule.keep_count(int(n), int(p))  # type: ignore[union-attr]
                             for st, n, p in zip(self.states, live, prompt_counts)], device=view.valid.device)
        schedule = self.states[0].schedule
        assert schedule is not None
        scores = policy.score(view)
        return policy.select(scores, view, keep, schedule.window, schedule.protect_prompt)

    def survivors(self, kept: torch.Tensor, kept_valid: torch.Tensor, row: int) -> torch.Tensor:
        """Row ``row``'s kept columns as the request's physical slots (ascending, on the CPU)."""
        return kept[row][kept_valid[row]].cpu() - self.pads[row]
