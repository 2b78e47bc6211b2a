"""The second embedded task (a register program): traces are correct executions, marks name the live values."""

from __future__ import annotations

import random

import pytest

from harness.tinyreasoner import program as pg
from harness.tinyreasoner.dropout import view_mask
from harness.tinyreasoner.problems import DEF_NAME, DEF_VALUE, TaskConfigError
from harness.tinyreasoner.tasks import PROGRAM, embedded_task
from harness.tinyreasoner.vocab import PROGRAM_VOCABULARY, prompt_tokens


def run_program(prompt: str) -> tuple[int, int]:
    """An interpreter written from the task's statement, not from the generator: (answer, loop count)."""
    words = prompt.split()
    assert words[0] == "run"
    regs = {words[i]: int(words[i + 1]) for i in range(1, 9, 2)}
    loops = int(words[words.index("loop") + 1])
    p = (regs["c"] + regs["d"]) % 10
    for _ in range(loops):
        regs["a"] = (regs["a"] + regs["b"]) % 10
        regs["b"] = (regs["b"] + regs["c"]) % 10
        if regs["a"] >= 5:
            regs["c"] = (regs["c"] + regs["d"]) % 10
    return (regs["a"] + p) % 10, loops


@pytest.mark.parametrize("index", range(40))
def test_the_answer_is_the_programs_result(index):
    problem = pg.generate(index, seed=3, split="heldout")
    answer, loops = run_program(problem.prompt)
    assert problem.answer == str(answer)
    assert problem.trace.count("iter") == loops


@pytest.mark.parametrize("index", range(40))
def test_every_operand_in_the_trace_is_the_registers_live_value(index):
    """Replaying the trace left to right: each ``name value`` a line reads equals the latest value stated."""
    problem = pg.generate(index, seed=1, split="train")
    words = problem.prompt.split()
    live = {words[i]: words[i + 1] for i in range(1, 9, 2)}
    trace = problem.trace
    for k, token in enumerate(trace[:-1]):
        if token in pg.NAMES and trace[k + 1].isdigit():
            statement = k >= 2 and trace[k - 2] == "="
            if statement:
                live[token] = trace[k + 1]
            else:
                assert live[token] == trace[k + 1], (k, " ".join(trace[max(0, k - 12): k + 2]))


def test_the_same_arguments_give_the_same_problem_and_splits_differ():
    assert pg.generate(5, 0, "train").trace == pg.generate(5, 0, "train").trace
    assert pg.generate(5, 0, "train").prompt != pg.generate(5, 0, "heldout").prompt
    assert pg.generate(5, 0, "train").id != pg.generate(5, 0, "validation").id


def test_roles_mark_statements_and_the_counter():
    trace = "keep c 1 + d 4 = 5 p 5 . iter 1 . set a 3 + b 7 = 0 a 0 . if a 0 small . hmm let me see .".split()
    roles = pg.token_roles(trace)
    stated = [t for t, r in zip(trace, roles) if r in (DEF_NAME, DEF_VALUE)]
    assert stated == ["p", "5", "iter", "1", "a", "0"]


def test_a_statement_goes_stale_at_the_next_statement_of_its_register():
    trace = ("keep c 1 + d 4 = 5 p 5 . iter 1 . set a 3 + b 7 = 0 a 0 . iter 2 . set a 0 + b 7 = 7 a 7 . "
             "end a 7 + p 5 = 2 .").split()
    roles = pg.token_roles(trace)
    dead = pg.statement_dead_at(trace, roles)
    first_a = trace.index("a", trace.index("=", 14))  # the statement ``a 0``
    second_a = len(trace) - 1 - trace[::-1].index("a", trace[::-1].index("end"))  # ``a 7`` of the second set line
    assert trace[first_a: first_a + 2] == ["a", "0"] and dead[first_a] == dead[first_a + 1] == second_a
    assert dead[trace.index("p")] == len(trace)  # p is never overwritten
    assert dead[trace.index("iter")] == trace.index("iter", trace.index("iter") + 1)
    assert dead[trace.index("set")] == -1


def test_critical_marks_exactly_the_statements_read_later():
    problem = pg.generate(0, seed=0, split="heldout")
    trace, marks = problem.trace, problem.critical
    roles = pg.token_roles(trace)
    # every stated p, counter and a is read later; the last b statement is never read
    last_b = max(k for k, (t, r) in enumerate(zip(trace, roles)) if t == "b" and r == DEF_NAME)
    assert not marks[last_b] and not marks[last_b + 1]
    assert marks[trace.index("p")]
    assert all(marks[k] for k, (t, r) in enumerate(zip(trace, roles)) if r == DEF_NAME and t in ("a", "iter"))
    assert not any(m for m, r in zip(marks, roles) if r not in (DEF_NAME, DEF_VALUE))


def test_the_vocabulary_covers_every_token_the_task_writes():
    for problem in pg.problems(30, seed=0, split="train"):
        words = [*prompt_tokens(problem.prompt), *problem.completion]
        assert "<unk>" not in [PROGRAM_VOCABULARY.tokens[i] for i in PROGRAM_VOCABULARY.encode(words)]


def test_the_oracle_view_keeps_the_live_statements_and_p_but_not_stale_ones():
    problem = pg.generate(2, seed=0, split="heldout")
    words = [*prompt_tokens(problem.prompt), *problem.trace]
    start = len(prompt_tokens(problem.prompt))
    allowed = view_mask(words, start, "oracle", random.Random(0), PROGRAM)
    last = len(words) - 1  # the final query, reading the answer's operands
    roles = pg.token_roles(problem.trace)
    p_at = start + problem.trace.index("p")
    assert allowed[last, p_at] and allowed[last, p_at + 1]
    a_statements = [start + k for k, (t, r) in enumerate(zip(problem.trace, roles)) if t == "a" and r == DEF_NAME]
    assert allowed[last, a_statements[-1]]
    assert not allowed[last, a_statements[0]]  # overwritten long ago, and far outside any window


def test_bad_knobs_and_unknown_tasks_are_refused_in_one_line():
    with pytest.raises(TaskConfigError, match="min_iterations"):
        pg.ProgramKnobs(min_iterations=4, max_iterations=12)
    with pytest.raises(TaskConfigError, match="choose one of sum, program"):
        embedded_task("search")


def test_the_facts_of_the_training_distribution():
    facts = pg.task_facts(list(pg.problems(200, seed=0, split="heldout")))
    assert 350 <= facts["median_thinking_tokens"] <= 480
    assert 0.05 < facts["critical_fraction"] < 0.2
