"""Oracle: keeps the tokens an embedded task's answer needs (an upper reference, not a real policy)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from harness.tinyreasoner import program
from harness.tinyreasoner.problems import DEF_NAME, DEF_VALUE, DIGITS, EQUALS, OTHER, STEP, SUM, is_result_name
from harness.tinyreasoner.tasks import embedded_task
from zoo.base import CacheView, ModelInfo, Policy, PolicyError, StepObservation

TOKEN, ROLE, LINE = "oracle_token", "oracle_role", "oracle_line"
#: 1 + the token's index in the sequence's generation order (0: an empty or freed slot), so that the previous token
#: is found wherever the backend put it; and, on a statement's name and value, the name's token id
ORDER, OWNER = "oracle_order", "oracle_owner"
SPENT = 9  # a stated value no later line needs any more: read (sum task) or overwritten (program task)
assert max(OTHER, STEP, EQUALS, SUM) < DEF_NAME < DEF_VALUE < SPENT

Ids = dict[str, torch.Tensor]
#: (ids, new [B], role [B], in_line [B]) -> bool [B]: whether the new token makes the earlier statements of the
#: name it is (name and value) stale
StaleRule = Callable[[Ids, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _read_results_are_spent(ids: Ids, new: torch.Tensor, role: torch.Tensor, in_line: torch.Tensor) -> torch.Tensor:
    """Sum task: an operand ``r7`` in a step line consumes the statement of r7 -- it is read once."""
    return in_line & ids["name"][new] & (role != DEF_NAME)


def _overwritten_statements_are_stale(ids: Ids, new: torch.Tensor, role: torch.Tensor,
                                      in_line: torch.Tensor) -> torch.Tensor:
    """Program task: a new statement of a register (``a 8``, or the counter's ``iter 3``) makes every earlier
    statement of it stale; reading a register (``set a 8 + ...``) leaves its statement live."""
    return role == DEF_NAME


@dataclass(frozen=True)
class TaskRules:
    """What the oracle reads of one embedded task: the words that identify its vocabulary, the role rules of
    ``problems.next_role`` (line starts, counter starts, stated names) and which statements go stale when."""

    task: str
    marks: tuple[str, ...]  # words only this task's vocabulary has, each as one token
    starts: tuple[str, ...]
    counter_starts: tuple[str, ...]
    is_name: Callable[[str], bool]
    stale: StaleRule

    def ids(self, texts: Sequence[str], index: dict[str, int]) -> Ids:
        """Token-id lookups over the vocabulary for the vectorised role update."""
        return {
            "=": torch.tensor(index["="]), ".": torch.tensor(index["."]),
            "start": torch.tensor([t in self.starts for t in texts]),
            "counter": torch.tensor([t in self.counter_starts for t in texts]),
            "name": torch.tensor([self.is_name(t) for t in texts]),
            "digit": torch.tensor([t in DIGITS for t in texts]),
        }


SUM_RULES = TaskRules("sum", ("step", "r1"), ("step",), (), is_result_name, _read_results_are_spent)
PROGRAM_RULES = TaskRules("program", ("iter", "set", "keep"), program.LINE_STARTS, program.COUNTER_STARTS,
                          program.is_name, _overwritten_statements_are_stale)
RULES = (SUM_RULES, PROGRAM_RULES)
#: a task's words as single tokens are not enough: a general subword vocabulary (SmolLM2's 49k) has ``iter``, ``set``
#: and ``keep`` too. A tiny reasoner's tokenizer is word-level, the task's own words and little else.
WORD_LEVEL_FACTOR = 2


def next_roles(ids: Ids, new: torch.Tensor, prev_token: torch.Tensor,
               prev_role: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``problems.next_role`` over a batch: (role, opens a line, inside a line) of each new token."""
    counter = ids["counter"][new]
    starts = ids["start"][new] | counter
    in_line = starts | ((prev_role != OTHER) & (prev_token != ids["."]))
    digit = ids["digit"][new]
    # each rule overrides the ones before it (``torch.where``, not masked assignment: no mask-to-index step)
    role = torch.where(new == ids["="], EQUALS, torch.full_like(prev_role, STEP))
    role = torch.where((prev_role == EQUALS) & digit, SUM, role)
    role = torch.where((prev_role == SUM) & ids["name"][new], DEF_NAME, role)
    role = torch.where((prev_role == DEF_NAME) & digit, DEF_VALUE, role)
    role = torch.where(in_line, role, OTHER)
    role = torch.where(counter, DEF_NAME, role)
    return role, starts, in_line


#: the bits of a new token that ``next_roles`` reads: counter start, line start, ``=``, digit, name
_CLASS_BITS = ("counter", "start", "=", "digit", "name")
_CLASSES = 2 ** len(_CLASS_BITS)
#: the columns of a row of ``step_table``, what one new token does, as floats: its role, 1 if it opens a line, 1 if
#: its statement's owner is itself (a stated name) or the previous token's owner (a stated value), 1 if it makes the
#: earlier statements of its name stale (``TaskRules.stale``)
ROLE_COLUMN, STARTS_COLUMN, OWNS_COLUMN, INHERITS_COLUMN, STALE_COLUMN = range(5)


def token_classes(ids: Ids) -> torch.Tensor:
    """Long ``[V]``: each token's class, the bits of it that ``next_roles`` reads (``_CLASS_BITS``)."""
    vocab = ids["name"].shape[0]
    is_eq = torch.arange(vocab) == ids["="]
    bits = [is_eq if name == "=" else ids[name] for name in _CLASS_BITS]
    return sum(bit.long() << i for i, bit in enumerate(bits))  # type: ignore[return-value]


def step_table(stale: StaleRule) -> torch.Tensor:
    """Float ``[(SPENT + 1) * 2 * _CLASSES, 5]``: the ``*_COLUMN`` values of a new token, at ``(previous role * 2 +
    previous token is '.') * _CLASSES + new token's class`` (``step_index``) -- one lookup per step instead of a
    few dozen tensor operations. Built by running ``next_roles`` and the task's ``stale`` rule on every
    combination."""
    states = (SPENT + 1) * 2
    table = torch.zeros(states, _CLASSES, 5)
    prev_role = (torch.arange(states) // 2).float()
    prev_token = torch.where(torch.arange(states) % 2 == 1, 1, 2)  # token 1 is the synthetic '.', 2 anything else
    new = torch.zeros(states, dtype=torch.long)  # token 0 carries the class under test
    for cls in range(_CLASSES):
        bit = {name: torch.tensor([bool(cls >> i & 1), False, False]) for i, name in enumerate(_CLASS_BITS)}
        ids = {**bit, ".": torch.tensor(1), "=": torch.tensor(0 if cls >> _CLASS_BITS.index("=") & 1 else 2)}
        role, starts, in_line = next_roles(ids, new, prev_token, prev_role)
        columns = (role, starts, role == DEF_NAME, role == DEF_VALUE, stale(ids, new, role, in_line))
        table[:, cls] = torch.stack([c.float() for c in columns], dim=-1)
    return table.flatten(0, 1)


def step_lookups(ids: Ids) -> Ids:
    """What ``step_index`` reads besides the table: per token id, its class and, as the previous token, its
    share of the index (``_CLASSES`` for '.', else 0), both as floats so that the index is summed in one dtype.
    ``after`` has one entry more, 0, which previous token -1 (nothing observed yet) reads."""
    vocab = ids["name"].shape[0]
    after = (torch.arange(vocab + 1) == ids["."]).float() * _CLASSES
    return {"class": token_classes(ids).float(), "after": after}


def step_index(ids: Ids, new: torch.Tensor, prev_token: torch.Tensor, prev_role: torch.Tensor) -> torch.Tensor:
    """Long ``[B]``: each new token's row of ``ids["table"]`` (``step_table``), from the previous token and role."""
    return (prev_role * (2 * _CLASSES) + ids["after"][prev_token] + ids["class"][new]).long()


@dataclass
class Oracle(Policy):
    """Keeps, by the rules of the embedded task whose vocabulary the model has, every statement a later line may
    still need, then the latest work line, then the most recent filler: what a perfect importance predictor would
    keep. Sum task (``problems.py``): a stated result (``= r7 6``) until a step reads it. Program task
    (``program.py``): the live statement of each register, of ``p`` and of the loop counter, until the register is
    stated again. It reads tokens as they are generated (``next_role`` applied online), so it works on the
    model's own traces, not only on the generator's. Needs a tokenizer with the task's words as single tokens (a
    tiny reasoner's)."""

    name = "oracle"
    requires = "tiny-reasoner task vocabulary"
    state_names = (TOKEN, ROLE, LINE, ORDER, OWNER)
    _ids: Ids = field(default_factory=dict, init=False, repr=False)
    _rules: TaskRules = field(default=SUM_RULES, init=False, repr=False)
    _ids_device: torch.device | None = field(default=None, init=False, repr=False)  # where ``_ids`` live

    def prepare(self, model: ModelInfo) -> None:
        texts = [t.strip() for t in model.token_texts()]
        index = {t: i for i, t in reversed(list(enumerate(texts)))}
        found = [r for r in RULES if all(w in index for w in (*r.marks, "=", ".", *DIGITS))
                 and len(index) <= WORD_LEVEL_FACTOR * len(embedded_task(r.task).vocabulary.tokens)]
        if not found:
            words = "; ".join(f"{r.task}: {', '.join(r.marks)}" for r in RULES)
            raise PolicyError(
                f"the oracle reads an embedded task's words as tokens ({words}), and {model.model_id!r} has no "
                "single token for them: use it with --model tiny-reasoner, tiny-reasoner-control or "
                "tiny-reasoner-program"
            )
        self._rules = found[0]
        self._ids = self._rules.ids(texts, index)
        self._ids.update({**step_lookups(self._ids), "table": step_table(self._rules.stale)})
        self._ids_device = None

    @property
    def task(self) -> str:
        """The embedded task whose rules the oracle applies (known after ``prepare``)."""
        return self._rules.task

    def observe(self, obs: StepObservation, state: dict[str, torch.Tensor]) -> None:
        """Apply ``next_role`` to each new token, vectorised over the batch, and mark the statements the task's
        rule makes stale: one lookup in ``step_table`` gives all a token does.

        Nothing here depends on where the backend keeps a token: the previous token is the slot with the highest
        generation order, and a statement's value is tied to its name by the name's token id, not by adjacency
        (the transformers cache writes a token into whatever slot an eviction freed, a paged engine compacts
        to the front)."""
        tokens, roles, lines, order, owner = (state[k] for k in (TOKEN, ROLE, LINE, ORDER, OWNER))
        if self._ids_device != tokens.device:  # moved once, not per step
            self._ids = {k: v.to(tokens.device) for k, v in self._ids.items()}
            self._ids_device = tokens.device
        ids = self._ids
        latest, at = order.max(-1, keepdim=True)  # the sequence's last observed token (order 0: nothing yet)
        prev_order = latest.squeeze(1)
        # the previous token's values; with nothing observed yet every slot holds zeros (a role, line and owner of
        # 0 are right), and the token is -1, so that it is not taken for a token id 0
        prev_token = tokens.gather(1, at).squeeze(1).long().where(prev_order > 0, -1)
        prev_role, prev_line, prev_owner = (t.gather(1, at).squeeze(1) for t in (roles, lines, owner))
        for j in range(obs.token_ids.shape[1]):
            new = obs.token_ids[:, j]
            new_f = new.float()
            step = ids["table"][step_index(ids, new, prev_token, prev_role)]  # [B, 5]
            role = step[:, ROLE_COLUMN]
            # where stale, the statements of the name ``new`` (name and value, found by their owner id, not by
            # adjacency) become SPENT: only a stated name or value has an owner (its name's id, never 0), and its
            # role stays DEF_NAME or DEF_VALUE until it is SPENT
            target = torch.where(step[:, STALE_COLUMN] > 0, new_f, -1.0)  # -1 (no owner's id): nothing stale
            roles.masked_fill_(owner == target[:, None], SPENT)
            line = prev_line + step[:, STARTS_COLUMN]
            this_owner = torch.addcmul(prev_owner * step[:, INHERITS_COLUMN], new_f, step[:, OWNS_COLUMN])
            prev_order = prev_order + 1
            for target, value in ((tokens, new_f), (roles, role), (lines, line), (order, prev_order),
                                  (owner, this_owner)):
                obs.write(target, value[:, None], j)
            prev_token, prev_role, prev_line, prev_owner = new, role, line, this_owner

    def score(self, view: CacheView) -> torch.Tensor:
        roles, lines = view.state[ROLE], view.state[LINE]
        recency = view.positions.float() / (view.positions.max().clamp(min=1).float())  # in [0, 1]
        latest = lines.masked_fill(~view.valid, -1).amax(-1, keepdim=True)
        in_line = (roles != OTHER) & (roles != SPENT)
        return (recency + 4.0 * ((roles == DEF_NAME) | (roles == DEF_VALUE)).float()
                + 2.0 * (in_line & (lines == latest)).float() + 1.0 * in_line.float())
