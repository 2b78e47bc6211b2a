"""The synthetic reasoning task of the embedded default workload.

A problem gives ``n`` variables with one-digit values; the answer is their sum modulo 10, reached by a
*pairwise reduction* written out as a thinking trace::

    <think> step a 3 + b 7 = 0 r1 0 . wait check a 3 + b 7 = 0 ok . hmm let me see .
            step c 1 + d 5 = 6 r2 6 . maybe a 3 + d 5 = 8 no . ...
            step r1 0 + r2 6 = 6 r7 6 . ...          <- r1 was stated once, far back in the trace
    </think> answer 4

Operands are consumed in one fixed order (the prompt's variables, then the results ``r1, r2, ...``), two per
step, so the order of steps is predictable; only the *values* must be retrieved. Results of the first half are
used again many lines later, so an eviction policy that loses the statement ``r1 0`` loses the answer, while the
filler between steps (re-checks, abandoned branches, restatements of prompt values, hesitation) can go. The
generator marks every trace token the answer depends on (:func:`critical_mask`); the same rules drive the
``oracle`` policy, which sees only tokens, never the generator.

Every statement of a value is correct, so a name is always followed by its value wherever it appears: the
retrieval a model must learn is "find the last time this name was written and copy the next token". Every sum
is written right after ``=``, with its operands 1 and 4 tokens back, in step lines, re-checks and branches
alike: one arithmetic circuit serves them all.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from zoo.errors import UserError

MAX_VARS = 20
PROMPT_NAMES = tuple(chr(ord("a") + i) for i in range(MAX_VARS))  # a .. t
RESULT_NAMES = tuple(f"r{i}" for i in range(1, MAX_VARS))  # r1 .. r19
DIGITS = tuple(str(d) for d in range(10))
WORDS = ("sum", "step", "wait", "check", "ok", "maybe", "no", "note", "hmm", "let", "me", "see", "so", "far",
         "good", "answer", "+", "=", ".")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Roles of trace tokens, as assigned by :func:`token_roles`.
OTHER, STEP, EQUALS, SUM, DEF_NAME, DEF_VALUE = 0, 1, 2, 3, 4, 5


class TaskConfigError(UserError, ValueError):
    """Knobs that cannot describe a problem; the message names the fix."""


@dataclass(frozen=True)
class Knobs:
    """Difficulty knobs. Defaults are the shipped model's training distribution.

    - ``min_vars``/``max_vars``: number of prompt variables (steps = vars - 1).
    - ``filler_lines``: filler lines after each step (restatement, abandoned branch, hesitation, in turn):
      the filler ratio, and with it the distance, in tokens, between a result and the step that reads it.
    - ``gap_lines``: extra filler lines before the first step on results: more dependency distance.
    - ``recheck``: every step is followed by a "wait check" of itself.

    The filler is redundant but *predictable* (its kind and operands follow from the step), so that greedy
    decoding reproduces whole traces: with random filler a model learns the distribution, and greedy
    decoding collapses it to the single most likely line.
    """

    min_vars: int = 9
    max_vars: int = 13
    filler_lines: int = 2
    gap_lines: int = 2
    recheck: bool = True
    random_filler: bool = False  # the training warm-up's variant (see ``_generate_random_filler``)
    filler_ratio: float = 1.0  # random filler only: filler tokens per step-line token

    def __post_init__(self) -> None:
        if not 2 <= self.min_vars <= self.max_vars <= MAX_VARS:
            raise TaskConfigError(f"need 2 <= min_vars <= max_vars <= {MAX_VARS}, got {self.min_vars}..{self.max_vars}")
        if self.filler_lines < 0 or self.gap_lines < 0:
            raise TaskConfigError("filler_lines and gap_lines must be >= 0")


@dataclass
class Problem:
    """One problem: the prompt (user text), the reference trace and answer, and per-trace-token ground truth."""

    id: str
    values: dict[str, int]
    prompt: str  # user message, e.g. "sum a 3 b 7 c 1"
    trace: list[str]  # thinking tokens, after <think>, up to and including </think>
    answer: str  # one digit
    critical: list[bool] = field(default_factory=list)  # per trace token: the answer needs it, far later

    @property
    def completion(self) -> list[str]:
        """What the model writes after the chat template's ``<think>``: trace, answer line."""
        return [*self.trace, "answer", self.answer]

    def to_json(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "answer": self.answer, "trace": " ".join(self.trace),
                "critical": [i for i, c in enumerate(self.critical) if c], "values": self.values}


def problem_seed(split: str, seed: int, index: int) -> int:
    """A seed per problem from (split, seed, index): splits never share problems' random streams."""
    digest = hashlib.sha256(f"{split}:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _filler(step: int, count: int, x: str, y: str, earlier: str, values: dict[str, int]) -> list[str]:
    """``count`` filler lines after step ``step`` (operands ``x``, ``y``; ``earlier``: an operand of the step
    before, already consumed), in turn: a restatement, an abandoned pairing, hesitation."""
    lines: list[list[str]] = []
    for i in range(count):
        kind = (step + i) % 3
        if kind == 0:
            lines.append(["note", x, str(values[x]), y, str(values[y]), "."])
        elif kind == 1:
            lines.append(["maybe", x, str(values[x]), "+", earlier, str(values[earlier]), "=",
                          str((values[x] + values[earlier]) % 10), "no", "."])
        else:
            lines.append(["hmm", "let", "me", "see", "."])
    return [token for line in lines for token in line]


def generate(index: int, seed: int = 0, split: str = "train", knobs: Knobs | None = None) -> Problem:
    """Problem ``index`` of ``split`` under ``seed``: the same arguments always give the same problem."""
    knobs = knobs or Knobs()
    if knobs.random_filler:
        return _generate_random_filler(index, seed, split, knobs)
    rng = random.Random(problem_seed(split, seed, index))
    n = rng.randint(knobs.min_vars, knobs.max_vars)
    prompt_names = PROMPT_NAMES[:n]
    values = {name: rng.randrange(10) for name in prompt_names}
    queue = list(prompt_names)
    trace: list[str] = []
    earlier = prompt_names[0]
    for step in range(n - 1):
        x, y = queue.pop(0), queue.pop(0)
        result = RESULT_NAMES[step]
        vx, vy = values[x], values[y]
        values[result] = (vx + vy) % 10
        queue.append(result)
        if is_result_name(x) and not is_result_name(earlier):
            trace += ["so", "far", "so", "good", "."] * knobs.gap_lines  # before the first step on results
        trace += ["step", x, str(vx), "+", y, str(vy), "=", str(values[result]), result, str(values[result]), "."]
        if step == n - 2:
            break  # the last result goes straight to the answer
        if knobs.recheck:
            trace += ["wait", "check", x, str(vx), "+", y, str(vy), "=", str(values[result]), "ok", "."]
        trace += _filler(step, knobs.filler_lines, x, y, earlier, values)
        earlier = x
    trace.append(THINK_CLOSE)
    answer = str(values[RESULT_NAMES[n - 2]])
    prompt = " ".join(["sum"] + [f"{name} {values[name]}" for name in prompt_names])
    problem = Problem(f"{split}-{seed}-{index}", {k: values[k] for k in prompt_names}, prompt, trace, answer)
    problem.critical = critical_mask(trace)
    return problem


def _filler_line(rng: random.Random, settled: Sequence[str], prompt_names: Sequence[str],
                 values: dict[str, int]) -> list[str]:
    """A line the answer never needs: an abandoned pairing, a restated prompt value, or hesitation."""
    kind = rng.random()
    if kind < 0.4 and len(settled) >= 2:
        x, y = rng.sample(list(settled), 2)
        return ["maybe", x, str(values[x]), "+", y, str(values[y]), "=", str((values[x] + values[y]) % 10), "no", "."]
    if kind < 0.7:
        x, y = rng.sample(list(prompt_names), 2)
        return ["note", x, str(values[x]), y, str(values[y]), "."]
    return rng.choice([["hmm", "let", "me", "see", "."], ["so", "far", "so", "good", "."]])


def _generate_random_filler(index: int, seed: int, split: str, knobs: Knobs) -> Problem:
    """The warm-up variant: filler drawn at random (re-check with probability 1/2, then lines of random kinds
    and operands up to ``filler_ratio`` x the step line). Its many abandoned pairings of random values are an
    arithmetic drill: the shipped model learned addition in this stage (the deterministic filler alone left
    the sums at chance for 1600 steps in one attempt)."""
    rng = random.Random(problem_seed(split, seed, index))
    n = rng.randint(knobs.min_vars, knobs.max_vars)
    prompt_names = PROMPT_NAMES[:n]
    values = {name: rng.randrange(10) for name in prompt_names}
    queue = list(prompt_names)
    # settled: names whose value no later step needs (prompt names are always kept, so they count too)
    settled: list[str] = list(prompt_names)
    trace: list[str] = []
    for step in range(n - 1):
        x, y = queue.pop(0), queue.pop(0)
        result = RESULT_NAMES[step]
        vx, vy = values[x], values[y]
        values[result] = (vx + vy) % 10
        queue.append(result)
        line = ["step", x, str(vx), "+", y, str(vy), "=", str(values[result]), result, str(values[result]), "."]
        trace += line
        settled += [name for name in (x, y) if name.startswith("r")]
        if step == n - 2:
            break  # the last result goes straight to the answer
        filler: list[str] = []
        if rng.random() < 0.5:
            filler += ["wait", "check", x, str(vx), "+", y, str(vy), "=", str(values[result]), "ok", "."]
        quota = rng.uniform(0.5, 1.5) * knobs.filler_ratio * len(line)
        if step == n // 2 - 1:
            quota += knobs.gap_lines * 8
        while len(filler) < quota:
            filler += _filler_line(rng, settled, prompt_names, values)
        trace += filler
    trace.append(THINK_CLOSE)
    answer = str(values[RESULT_NAMES[n - 2]])
    prompt = " ".join(["sum"] + [f"{name} {values[name]}" for name in prompt_names])
    problem = Problem(f"{split}-{seed}-{index}", {k: values[k] for k in prompt_names}, prompt, trace, answer)
    problem.critical = critical_mask(trace)
    return problem


def problems(count: int, seed: int = 0, split: str = "heldout", knobs: Knobs | None = None) -> Iterator[Problem]:
    for index in range(count):
        yield generate(index, seed, split, knobs)


# ---------------------------------------------------------------------------------------------------- ground truth
def is_result_name(token: str) -> bool:
    return len(token) > 1 and token[0] == "r" and token[1:].isdigit()


def next_role(token: str, previous_role: int, previous_token: str, starts: Sequence[str] = ("step",),
              is_name: Callable[[str], bool] = is_result_name, counter_starts: Sequence[str] = ()) -> int:
    """The role of ``token`` from the previous token and its role: the rules are local, so they can be
    applied online, one generated token at a time (the oracle does), or over a whole trace.

    ``starts`` are the words that open a line, ``is_name`` tells the names a line may state after its sum;
    a word of ``counter_starts`` opens a line and is itself a stated name (the second task's ``iter 3``).
    The defaults are this task's."""
    if token in counter_starts:
        return DEF_NAME
    in_step = token in starts or (previous_role != OTHER and previous_token != ".")
    if not in_step:
        return OTHER
    if token == "=":
        return EQUALS
    if previous_role == EQUALS and token in DIGITS:
        return SUM
    if previous_role == SUM and is_name(token):
        return DEF_NAME
    if previous_role == DEF_NAME and token in DIGITS:
        return DEF_VALUE
    return STEP


def token_roles(tokens: Sequence[str]) -> list[int]:
    """Role of every token, from the tokens alone (used by the generator and, online, by the oracle).

    Inside a ``step x 3 + y 7 = 0 r1 0 .`` line: ``EQUALS``, ``SUM`` (the computed digit), ``DEF_NAME`` and
    ``DEF_VALUE`` (the ``r1 0`` that states the result: the pair a later step must retrieve), ``STEP`` for the
    rest; ``OTHER`` outside step lines (filler).
    """
    roles: list[int] = []
    for i, token in enumerate(tokens):
        roles.append(next_role(token, roles[-1] if roles else OTHER, tokens[i - 1] if i else ""))
    return roles


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


def critical_mask(tokens: Sequence[str]) -> list[bool]:
    """Per token: the answer depends on it after it has left any local window.

    These are the statements of results (``r7 6`` after the sum in a step line): each is retrieved by a later
    step or by the answer, and nothing else restates it before that. The rest of a step line is needed only
    while the step is being written.
    """
    return [role in (DEF_NAME, DEF_VALUE) for role in token_roles(tokens)]


def task_facts(items: Sequence[Problem],
               roles: Callable[[Sequence[str]], list[int]] = token_roles) -> dict[str, float]:
    """Length and criticality statistics of a problem set (for the model card and the closing note); ``roles``
    is the task's role rule (the default: this task's), which tells work-line tokens from filler."""
    lengths = sorted(len(p.trace) for p in items)
    thinking = sum(len(p.trace) for p in items)
    critical = sum(sum(p.critical) for p in items)
    step_tokens = sum(sum(r != OTHER for r in roles(p.trace)) for p in items)
    return {
        "problems": len(items),
        "median_thinking_tokens": float(lengths[len(lengths) // 2]),
        "min_thinking_tokens": float(lengths[0]),
        "max_thinking_tokens": float(lengths[-1]),
        "critical_fraction": critical / thinking,
        "step_line_fraction": step_tokens / thinking,
    }
