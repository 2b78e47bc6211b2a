"""The second embedded task: running a small register program, written out as a thinking trace.

A problem gives four registers with one-digit values and a loop count; the program is always the same::

    keep p = c + d                      (once, before the loop)
    loop N times:  a = a + b;  b = b + c;  if a >= 5: c = c + d
    answer a + p                        (all sums modulo 10)

and the model writes its execution out::

    <think> keep c 1 + d 4 = 5 p 5 .                  <- p: written first, read once, at the very end
            iter 1 . set a 3 + b 7 = 0 a 0 . set b 7 + c 1 = 8 b 8 . if a 0 small .
                     check a 0 b 8 ok . maybe b 8 + a 0 = 8 no . hmm let me see .
            iter 2 . set a 0 + b 8 = 8 a 8 . set b 8 + c 1 = 9 b 9 . if a 8 big . set c 1 + d 4 = 5 c 5 . ...
            ...
            end a 4 + p 5 = 9 . </think> answer 9

Where the first task's values are written once and read once, here a register is *overwritten*: every
statement ``a 8`` makes every earlier value of ``a`` -- the prompt's, older statements, restatements in filler
-- stale, and a stale copy is worse than none: a model reading the latest ``a`` it can still see copies a wrong
value. What the answer needs at any moment is the live statement of each register, the loop counter (``iter
3``: when to stop), and ``p``, written first and read last; re-checks, abandoned pairings and hesitation are
never needed again. The generator marks the statements a later line reads (:func:`critical_mask`); the same
role rules drive the oracle policy, which sees only tokens.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from harness.tinyreasoner.problems import (
    DEF_NAME,
    DEF_VALUE,
    OTHER,
    THINK_CLOSE,
    Problem,
    TaskConfigError,
    next_role,
    problem_seed,
)
from harness.tinyreasoner.problems import task_facts as problems_task_facts

REGISTERS = ("a", "b", "c", "d")
KEPT = "p"  # the register written before the loop and read after it
COUNTER = "iter"  # the loop counter's line start; the digit after it is its value
NAMES = (*REGISTERS, KEPT)
WORDS = ("run", "loop", "keep", COUNTER, "set", "if", "big", "small", "end", "check", "ok", "maybe", "no", "hmm",
         "let", "me", "see", "answer", "+", "=", ".")
#: words that open a line of the program's execution (anything else opens filler)
LINE_STARTS = ("keep", COUNTER, "set", "if", "end")
#: the line start that is itself a register statement (``iter 3``: the counter's value)
COUNTER_STARTS = (COUNTER,)
MAX_ITERATIONS = 9  # the counter is one digit
BIG = 5  # ``if a`` takes the branch from this value on


@dataclass(frozen=True)
class ProgramKnobs:
    """Difficulty knobs. Defaults are the shipped model's training distribution.

    - ``min_iterations``/``max_iterations``: loop count (one digit);
    - ``filler_lines``: filler lines after each iteration (a re-check of the live registers, an abandoned
      pairing, hesitation, in turn): the filler ratio, and with it how far back ``p`` and the counter lie.
    """

    min_iterations: int = 5
    max_iterations: int = 9
    filler_lines: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.min_iterations <= self.max_iterations <= MAX_ITERATIONS:
            raise TaskConfigError(f"need 1 <= min_iterations <= max_iterations <= {MAX_ITERATIONS}, "
                                  f"got {self.min_iterations}..{self.max_iterations}")
        if self.filler_lines < 0:
            raise TaskConfigError("filler_lines must be >= 0")


def _sum_line(start: str, x: str, y: str, target: str, values: dict[str, int]) -> list[str]:
    """``start x vx + y vy = s target s .``, storing ``s`` in ``values[target]``."""
    vx, vy = values[x], values[y]
    values[target] = (vx + vy) % 10
    s = str(values[target])
    return [start, x, str(vx), "+", y, str(vy), "=", s, target, s, "."]


def _filler(iteration: int, count: int, values: dict[str, int]) -> list[str]:
    """``count`` filler lines after an iteration, in turn: a re-check of the live registers, an abandoned
    pairing, hesitation. Predictable (kind and operands follow from the iteration), so greedy decoding
    reproduces whole traces."""
    a, b = str(values["a"]), str(values["b"])
    lines = (["check", "a", a, "b", b, "ok", "."],
             ["maybe", "b", b, "+", "a", a, "=", str((values["a"] + values["b"]) % 10), "no", "."],
             ["hmm", "let", "me", "see", "."])
    return [token for i in range(count) for token in lines[(iteration + i) % 3]]


def generate(index: int, seed: int = 0, split: str = "train", knobs: ProgramKnobs | None = None) -> Problem:
    """Problem ``index`` of ``split`` under ``seed``: the same arguments always give the same problem."""
    knobs = knobs or ProgramKnobs()
    rng = random.Random(problem_seed(f"program-{split}", seed, index))
    loops = rng.randint(knobs.min_iterations, knobs.max_iterations)
    values = {name: rng.randrange(10) for name in REGISTERS}
    initial = dict(values)
    trace = _sum_line("keep", "c", "d", KEPT, values)
    for iteration in range(1, loops + 1):
        trace += [COUNTER, str(iteration), "."]
        trace += _sum_line("set", "a", "b", "a", values)
        trace += _sum_line("set", "b", "c", "b", values)
        big = values["a"] >= BIG
        trace += ["if", "a", str(values["a"]), "big" if big else "small", "."]
        if big:
            trace += _sum_line("set", "c", "d", "c", values)
        trace += _filler(iteration, knobs.filler_lines, values)
    answer = str((values["a"] + values[KEPT]) % 10)
    trace += ["end", "a", str(values["a"]), "+", KEPT, str(values[KEPT]), "=", answer, ".", THINK_CLOSE]
    prompt = " ".join(["run", *(f"{name} {initial[name]}" for name in REGISTERS), "loop", str(loops)])
    problem = Problem(f"program-{split}-{seed}-{index}", {**initial, "loop": loops}, prompt, trace, answer)
    problem.critical = critical_mask(trace)
    return problem


def problems(count: int, seed: int = 0, split: str = "heldout", knobs: ProgramKnobs | None = None) -> Iterator[Problem]:
    for index in range(count):
        yield generate(index, seed, split, knobs)


# ---------------------------------------------------------------------------------------------------- ground truth
def is_name(token: str) -> bool:
    return token in NAMES


def token_roles(tokens: Sequence[str]) -> list[int]:
    """Role of every trace token, by the first task's local rules (``problems.next_role``) with this task's
    line starts and names: the statement after a sum (``a 8`` in ``set a 0 + b 8 = 8 a 8 .``) is a
    ``DEF_NAME``/``DEF_VALUE`` pair, and so is the counter (``iter 3``)."""
    roles: list[int] = []
    for i, token in enumerate(tokens):
        roles.append(next_role(token, roles[-1] if roles else OTHER, tokens[i - 1] if i else "",
                               starts=LINE_STARTS, is_name=is_name, counter_starts=COUNTER_STARTS))
    return roles


def statement_names(tokens: Sequence[str], roles: Sequence[int]) -> list[str | None]:
    """Per token: the register a statement token states (``a`` for both tokens of ``a 8``; ``iter`` for the
    counter's), else None."""
    names: list[str | None] = [None] * len(tokens)
    for k, role in enumerate(roles):
        if role == DEF_NAME:
            names[k] = tokens[k]
            if k + 1 < len(tokens) and roles[k + 1] == DEF_VALUE:
                names[k + 1] = tokens[k]
    return names


def statement_dead_at(tokens: Sequence[str], roles: Sequence[int]) -> list[int]:
    """Per token: where a statement goes stale -- the position of the next statement of the same register
    (``len(tokens)`` if none comes); -1 for tokens that state nothing."""
    names = statement_names(tokens, roles)
    dead = [-1] * len(tokens)
    following: dict[str, int] = {}
    for k in range(len(tokens) - 1, -1, -1):
        name = names[k]
        if name is None:
            continue
        dead[k] = following.get(name, len(tokens))
        if roles[k] == DEF_NAME:
            following[name] = k
    return dead


def critical_mask(tokens: Sequence[str]) -> list[bool]:
    """Per token: a statement some later line reads before the register is overwritten (the live values the
    answer is computed from; the last ``b`` and a counter past the loop's end are read by nothing)."""
    roles = token_roles(tokens)
    dead = statement_dead_at(tokens, roles)
    names = statement_names(tokens, roles)
    critical = [False] * len(tokens)
    for k, name in enumerate(names):
        if name is None:
            continue
        if name == COUNTER:
            # the counter is read where the next line start is decided: the next ``iter`` or the ``end``
            critical[k] = any(tokens[j] in (COUNTER, "end") for j in range(k + 2, len(tokens)))
            continue
        reads = (j for j in range(k + 1, dead[k]) if tokens[j] == name and roles[j] != DEF_NAME
                 and roles[j] != OTHER)
        critical[k] = next(reads, None) is not None
    return critical


def task_facts(items: Sequence[Problem]) -> dict[str, float]:
    """Length and criticality statistics of a problem set, by this task's role rules."""
    return problems_task_facts(items, roles=token_roles)
