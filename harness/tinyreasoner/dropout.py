"""Context drop-out: training-time attention masks that show the model the gappy contexts eviction leaves.

A model trained only on whole contexts breaks on the first gap: with its filler neighbours evicted, the
shipped model of 2026-11-23 copied the wrong operand names (``note g 8 r5`` instead of ``note g 8 h 0``), so
even the oracle policy scored 13.5% at a quarter of the median trace. Training with these masks teaches it
to read only what an eviction policy could have kept. Positions (RoPE) stay those of the full sequence, as
in an evicted KV cache.

Per sequence one of three views is drawn:

- ``full``: the causal mask (full-cache behaviour must stay intact);
- ``oracle``: the prompt, the result statements no later step has read yet, the latest step line, and a
  local window of random width: what the ``oracle`` policy keeps under a tight budget;
- ``random``: each trace token that is not a result statement disappears for queries a random 32-120 tokens
  after it, with probability 0.6: the scattered gaps of heuristic policies.

The shipped recipe draws them 30/40/30 (``RECIPE``). The control recipe (issue 17, ``--dropout-views
full,random-any``) drops the oracle-like view and uses, next to ``full``:

- ``random-any``: like ``random``, but *every* trace token, result statements included, may disappear: gaps
  that know nothing of the task's rules (the prompt stays, as no policy evicts it by default).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from harness.tinyreasoner.problems import DEF_NAME, DEF_VALUE, OTHER, STEP, token_roles

VIEWS = ("full", "oracle", "random", "random-any")
RECIPE = "full:0.3,oracle:0.4,random:0.3"  # the shipped model's views and weights
# weight of a view named without one: the recipe's; random-any takes the share of both gapped views it replaces
DEFAULT_WEIGHT = {"full": 0.3, "oracle": 0.4, "random": 0.3, "random-any": 0.7}


def parse_views(spec: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """``"full,random-any"`` or ``"full:0.3,random-any:0.7"`` -> (views, weights)."""
    views, weights = [], []
    for item in spec.split(","):
        name, _, weight = item.strip().partition(":")
        if name not in VIEWS:
            raise ValueError(f"unknown view {name!r}; expected one of {VIEWS}")
        if name in views:
            raise ValueError(f"view {name!r} given twice in {spec!r}")
        views.append(name)
        weights.append(float(weight) if weight else DEFAULT_WEIGHT[name])
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"view weights must be non-negative with a positive sum: {spec!r}")
    return tuple(views), tuple(weights)


def statement_spent_at(words: Sequence[str], roles: Sequence[int]) -> list[int]:
    """Per token: the position of the step operand that reads this result statement (``r7`` in a later
    ``step r7 5 + ...``), after which it is not needed; ``len(words)`` if never read, -1 if not a statement."""
    spent = [-1] * len(words)
    for k, role in enumerate(roles):
        if role != DEF_NAME:
            continue
        reader = next((c for c in range(k + 2, len(words)) if words[c] == words[k] and roles[c] == STEP),
                      len(words))
        spent[k] = reader
        if k + 1 < len(words) and roles[k + 1] == DEF_VALUE:
            spent[k + 1] = reader
    return spent


def view_mask(words: Sequence[str], prompt_length: int, view: str, rng: random.Random) -> torch.Tensor:
    """Bool [L, L] (query, key): which earlier tokens each position may attend to under ``view``."""
    length = len(words)
    q = torch.arange(length)[:, None]
    k = torch.arange(length)[None, :]
    causal = k <= q
    if view == "full":
        return causal
    roles = [OTHER] * prompt_length + token_roles(words[prompt_length:])
    statement = torch.tensor([r in (DEF_NAME, DEF_VALUE) for r in roles])
    if view in ("random", "random-any"):
        spare = statement if view == "random" else torch.zeros(length, dtype=torch.bool)
        vanish = torch.full((length,), length + 1)
        for p in range(prompt_length, length):
            if not spare[p] and rng.random() < 0.6:
                vanish[p] = p + rng.randint(32, 120)
        return causal & (q < vanish[None, :])
    if view != "oracle":
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    spent = torch.tensor(statement_spent_at(words, roles))
    starts = torch.tensor([w == "step" and r != OTHER for w, r in zip(words, roles)])
    line = torch.cumsum(starts.long(), 0)  # index of the latest step line at each position
    in_line = torch.tensor([r != OTHER for r in roles])
    window = rng.randint(16, 64)
    keep = (
        (k < prompt_length)
        | (q - k < window)
        | (statement[None, :] & (q <= spent[None, :]))
        | (in_line[None, :] & (line[None, :] == line[:, None]))
    )
    return causal & keep


def batch_mask(rows: Sequence[Sequence[str]], prompt_lengths: Sequence[int], width: int, rng: random.Random,
               weights: Sequence[float] = (0.3, 0.4, 0.3),
               views: Sequence[str] = ("full", "oracle", "random")) -> tuple[torch.Tensor, list[str]]:
    """Additive float mask [B, 1, width, width] for a right-padded batch, and the view drawn per row
    (``views[i]`` with probability proportional to ``weights[i]``)."""
    mask = torch.full((len(rows), 1, width, width), float("-inf"))
    drawn = rng.choices(list(views), weights=weights, k=len(rows))
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for b, (words, prompt_length, view) in enumerate(zip(rows, prompt_lengths, drawn)):
        allowed = causal.clone()  # padding rows stay causal (their targets are ignored)
        allowed[: len(words), : len(words)] = view_mask(words, prompt_length, view, rng)
        mask[b, 0].masked_fill_(allowed, 0.0)
    return mask, drawn
