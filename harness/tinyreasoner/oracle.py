"""Oracle: keeps the tokens the tiny-reasoner task's answer needs (an upper reference, not a real policy)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.tinyreasoner.problems import DEF_NAME, DEF_VALUE, DIGITS, EQUALS, OTHER, STEP, SUM, is_result_name
from zoo.base import CacheView, ModelInfo, Policy, PolicyError, StepObservation

TOKEN, ROLE, LINE = "oracle_token", "oracle_role", "oracle_line"
#: 1 + the token's index in the sequence's generation order (0: an empty or freed slot), so that the previous token
#: is found wherever the backend put it; and, on a statement's name and value, the name's token id
ORDER, OWNER = "oracle_order", "oracle_owner"
SPENT = 9  # a stated result that a later step has read: no longer needed


@dataclass
class Oracle(Policy):
    """Keeps, by the task's own rules, every stated result (``= r7 6``) that no step has consumed yet, then the
    latest step lines, then the most recent filler: what a perfect importance predictor would keep on the
    embedded tiny-reasoner task (``harness/tinyreasoner/problems.py``). It reads tokens as they are generated (the
    rules of ``task.token_roles``, applied online), so it works on the model's own traces, not only on the
    generator's. Needs a tokenizer with the task's words as single tokens (the tiny reasoner's)."""

    name = "oracle"
    requires = "tiny-reasoner task vocabulary"
    state_names = (TOKEN, ROLE, LINE, ORDER, OWNER)
    _ids: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def prepare(self, model: ModelInfo) -> None:
        texts = [t.strip() for t in model.token_texts()]
        index = {t: i for i, t in reversed(list(enumerate(texts)))}
        missing = [w for w in ("step", "=", ".", "r1", *DIGITS) if w not in index]
        if missing:
            raise PolicyError(
                f"the oracle reads the tiny-reasoner task's words as tokens, and {model.model_id!r} has no single "
                f"token for {missing[0]!r}: use it with --model tiny-reasoner"
            )
        self._ids = {
            "step": torch.tensor(index["step"]), "=": torch.tensor(index["="]), ".": torch.tensor(index["."]),
            "result": torch.tensor([is_result_name(t) for t in texts]),
            "digit": torch.tensor([t in DIGITS for t in texts]),
        }

    def observe(self, obs: StepObservation, state: dict[str, torch.Tensor]) -> None:
        """Apply ``task.next_role`` to each new token, vectorised over the batch, and spend consumed results.

        Nothing here depends on where the backend keeps a token: the previous token is the slot with the highest
        generation order, and a statement's value is tied to its name by the name's token id, not by adjacency
        (a ring-written cache wraps, a compacted one moves tokens)."""
        tokens, roles, lines, order, owner = (state[k] for k in (TOKEN, ROLE, LINE, ORDER, OWNER))
        ids = {k: v.to(tokens.device) for k, v in self._ids.items()}
        latest, at = order.max(-1)  # the sequence's last observed token (order 0: nothing observed yet)
        seen = latest > 0
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        prev_token = torch.where(seen, tokens[rows, at].long(), -1)
        prev_role = torch.where(seen, roles[rows, at], 0.0)
        prev_line, prev_owner, prev_order = lines[rows, at] * seen, owner[rows, at] * seen, latest
        for j in range(obs.token_ids.shape[1]):
            slot = obs.slot_start + j
            new = obs.token_ids[:, j]
            starts = new == ids["step"]
            in_step = starts | ((prev_role != OTHER) & (prev_token != ids["."]))
            digit, result = ids["digit"][new], ids["result"][new]
            role = torch.full_like(prev_role, STEP)
            role[new == ids["="]] = EQUALS
            role[(prev_role == EQUALS) & digit] = SUM
            role[(prev_role == SUM) & result] = DEF_NAME
            role[(prev_role == DEF_NAME) & digit] = DEF_VALUE
            role[~in_step] = OTHER
            # An operand ``r7`` in a step line consumes the statement of r7 (name and value): not needed any more.
            reads = (in_step & result & (role != DEF_NAME)).unsqueeze(1)
            stated = (roles == DEF_NAME) | (roles == DEF_VALUE)
            roles.masked_fill_(reads & stated & (owner == new.unsqueeze(1).float()), SPENT)
            line = prev_line + starts.float()
            this_owner = torch.where(role == DEF_NAME, new.float(), torch.where(role == DEF_VALUE, prev_owner, 0.0))
            tokens[:, slot], roles[:, slot], lines[:, slot] = new.float(), role, line
            order[:, slot], owner[:, slot] = prev_order + 1, this_owner
            prev_token, prev_role, prev_line, prev_owner, prev_order = new, role, line, this_owner, prev_order + 1

    def score(self, view: CacheView) -> torch.Tensor:
        roles, lines = view.state[ROLE], view.state[LINE]
        recency = view.positions.float() / (view.positions.max().clamp(min=1).float())  # in [0, 1]
        latest = lines.masked_fill(~view.valid, -1).amax(-1, keepdim=True)
        in_line = (roles != OTHER) & (roles != SPENT)
        return (recency + 4.0 * ((roles == DEF_NAME) | (roles == DEF_VALUE)).float()
                + 2.0 * (in_line & (lines == latest)).float() + 1.0 * in_line.float())
