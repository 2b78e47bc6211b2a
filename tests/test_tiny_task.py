"""The synthetic task: deterministic, correct, with ground truth the oracle reproduces online."""

from __future__ import annotations

import pytest
import torch

from harness.tinyreasoner.oracle import ROLE, SPENT, TOKEN, Oracle
from harness.tinyreasoner.problems import (
    DEF_NAME,
    DEF_VALUE,
    Knobs,
    TaskConfigError,
    generate,
    is_result_name,
    problems,
    task_facts,
    token_roles,
)
from harness.tinyreasoner.vocab import TOKEN_ID, VOCAB, build_tokenizer, encode, prompt_tokens
from zoo.base import ModelInfo, StepObservation


def test_generator_is_deterministic_per_seed_and_split() -> None:
    assert generate(3, seed=1).trace == generate(3, seed=1).trace
    assert generate(3, seed=1).prompt != generate(3, seed=2).prompt
    train = {p.prompt for p in problems(200, split="train")}
    heldout = {p.prompt for p in problems(200, split="heldout")}
    assert len(train & heldout) <= 2  # independent streams; a coincidence of 10+ random digits is the only overlap


@pytest.mark.parametrize("index", range(20))
def test_every_statement_is_true_and_the_answer_is_the_sum(index: int) -> None:
    problem = generate(index, knobs=Knobs(min_vars=2, max_vars=16, filler_lines=3, gap_lines=3))
    values = dict(problem.values)
    assert problem.answer == str(sum(values.values()) % 10)
    words = problem.trace
    stated = dict(values)
    roles = token_roles(words)
    for i, (word, role) in enumerate(zip(words, roles)):
        if role == DEF_VALUE:
            stated[words[i - 1]] = int(word)
    for i, word in enumerate(words[:-1]):
        if (len(word) == 1 and word.isalpha() or is_result_name(word)) and words[i + 1].isdigit():
            assert int(words[i + 1]) == stated[word], f"{word} restated with a wrong value"
    assert words[-1] == "</think>" and problem.completion[-2:] == ["answer", problem.answer]
    # the last stated result is the answer
    last = max(i for i, r in enumerate(roles) if r == DEF_VALUE)
    assert words[last] == problem.answer


def test_critical_tokens_are_a_minority_of_long_traces() -> None:
    facts = task_facts(list(problems(200)))
    assert facts["median_thinking_tokens"] >= 300
    assert 0.0 < facts["critical_fraction"] < facts["step_line_fraction"] < 0.5


def test_bad_knobs_say_what_to_fix() -> None:
    with pytest.raises(TaskConfigError, match="min_vars"):
        Knobs(min_vars=1)


def test_tokenizer_chat_template_matches_training_format() -> None:
    tokenizer = build_tokenizer()
    problem = generate(0)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": problem.prompt}], add_generation_prompt=True,
                                        tokenize=True)
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    assert ids == encode(prompt_tokens(problem.prompt))
    text = " ".join(problem.completion)
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert len(tokenizer.encode("</think>", add_special_tokens=False)) == 1


def test_oracle_reads_the_same_roles_online_and_spends_consumed_results() -> None:
    oracle = Oracle()
    oracle.prepare(ModelInfo("tiny-reasoner", "tiny", 8, 1, lambda: list(VOCAB)))
    problem = generate(7)
    ids = encode(prompt_tokens(problem.prompt) + problem.trace)
    state = {name: torch.zeros(1, len(ids)) for name in oracle.state_names}
    oracle.observe(StepObservation(torch.tensor([ids[:5]]), 0, is_prefill=True), state)
    for slot in range(5, len(ids)):  # then one token at a time, as in decoding
        oracle.observe(StepObservation(torch.tensor([[ids[slot]]]), slot), state)
    offset = len(prompt_tokens(problem.prompt))
    online = state[ROLE][0, offset:].long().tolist()
    expected = token_roles(problem.trace)
    # every stated result but the last is read by a later step, so its statement is spent by the end
    for got, want in zip(online, expected):
        assert got == (SPENT if want in (DEF_NAME, DEF_VALUE) else want) or (got == want == DEF_VALUE) or (
            got == want == DEF_NAME)
    live = [i for i, r in enumerate(online) if r in (DEF_NAME, DEF_VALUE)]
    assert [problem.trace[i] for i in live] == [problem.trace[i] for i in live[-2:]]  # only the final result
    assert state[TOKEN][0].long().tolist() == ids
    assert TOKEN_ID["step"] in ids
