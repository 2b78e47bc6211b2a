"""The oracle's online roles do not depend on where a backend keeps a token: the transformers cache writes each new
token into a slot an eviction freed, so a sequence's slots come in no order, yet roles, step lines and spent
statements must be those of the task's own rules (``problems.token_roles``) applied to the tokens in generation
order."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate

import torch

from backends.base import GenerationRequest, SamplingParams
from backends.hf.backend import TransformersBackend
from backends.hf.cache import CompactingCache
from backends.paged.state import RequestState, flush_observations, observe_tokens
from harness.scoring.answers import is_correct
from harness.tinyreasoner.oracle import LINE, ROLE, SPENT, TOKEN, Oracle
from harness.tinyreasoner.problems import DEF_NAME, DEF_VALUE, OTHER, critical_mask, generate, token_roles
from harness.tinyreasoner.vocab import VOCAB, encode, prompt_tokens
from zoo.base import CacheView, ModelInfo, StepObservation
from zoo.schedule import EvictionSchedule


def expected_marks(words: list[str]) -> tuple[list[int], list[int]]:
    """Role of every token once all of ``words`` were seen (``SPENT`` for a statement a later step line read) and
    the number of step lines begun up to it, from the task's rules over the whole stream."""
    roles = token_roles(words)
    marks = list(roles)
    for i, statement in enumerate(critical_mask(words)):
        if statement and roles[i] == DEF_NAME:
            read = any(words[j] == words[i] and roles[j] not in (OTHER, DEF_NAME) for j in range(i + 1, len(words)))
            if read:
                marks[i] = SPENT
                if i + 1 < len(words) and roles[i + 1] == DEF_VALUE:
                    marks[i + 1] = SPENT
    return marks, list(accumulate(int(w == "step") for w in words))


def _oracle() -> Oracle:
    oracle = Oracle()
    oracle.prepare(ModelInfo("tiny-reasoner", "tiny", 8, 1, lambda: list(VOCAB)))
    return oracle


def _compact_keeping_every_other(cache: CompactingCache, window: int) -> None:
    """Evict every other live token but the newest ``window`` (the newest always survives, as under any schedule)."""
    order = cache.generation_order(torch.tensor([0]))[0]
    live = cache.valid[0, order].nonzero().squeeze(1)
    kept = torch.cat([live[:-window][::2], live[-window:]])
    cache.compact(kept[None], torch.ones(1, kept.numel(), dtype=torch.bool))


def _observe_through_cache(words: list[str], prompt_len: int, capacity: int) -> tuple[CompactingCache, int]:
    """Feed ``words`` to the oracle as the transformers backend does: the prompt at once, then one token per step
    at the sequence's write slot, compacting whenever the cache is full. Returns the cache and how many statement
    values were not written to the slot after their name's."""
    oracle, ids = _oracle(), encode(words)
    cache = CompactingCache(1, capacity, oracle.state_names)
    prompt = torch.tensor([ids[:prompt_len]])
    where = cache.append(prompt, torch.arange(prompt_len)[None], torch.ones_like(prompt, dtype=torch.bool), True)
    cache.allocate_kv(torch.zeros(1, 1, 1, 1))
    oracle.observe(StepObservation(prompt, where.start, is_prefill=True), cache.state)
    cache.advance(prompt_len)
    roles, split_statements, slot = token_roles(words), 0, prompt_len - 1
    for pos in range(prompt_len, len(ids)):
        if int(cache.live_counts()[0]) == capacity:
            _compact_keeping_every_other(cache, window=8)
        token = torch.tensor([[ids[pos]]])
        where = cache.append(token, torch.tensor([[pos]]), torch.tensor([[True]]), False)
        assert where.per_row is not None
        oracle.observe(StepObservation(token, where.start, slots=where.per_row), cache.state)
        cache.advance(1)
        previous, slot = slot, int(where.per_row[0, 0])
        split_statements += int(roles[pos] == DEF_VALUE and slot != previous + 1)
    return cache, split_statements


def test_oracle_marks_in_a_compacted_cache_reusing_freed_slots_match_a_linear_cache_and_the_task_rules() -> None:
    problem = generate(7)
    words = prompt_tokens(problem.prompt) + problem.trace
    prompt_len = len(prompt_tokens(problem.prompt))
    marks, lines = expected_marks(words)

    linear = {name: torch.zeros(1, len(words)) for name in _oracle().state_names}
    reference = _oracle()
    ids = encode(words)
    reference.observe(StepObservation(torch.tensor([ids[:prompt_len]]), 0, is_prefill=True), linear)
    for slot in range(prompt_len, len(ids)):
        reference.observe(StepObservation(torch.tensor([[ids[slot]]]), slot), linear)
    assert linear[ROLE][0].long().tolist() == marks
    assert linear[LINE][0].long().tolist() == lines

    split_total = 0
    for capacity in (32, 45, 56, 69):
        cache, split = _observe_through_cache(words, prompt_len, capacity)
        split_total += split
        assert cache.written > 3 * capacity, "the slots must have been reused several times"
        seen = cache.ordered_rows([0])
        valid = seen["valid"][0]
        positions = seen["positions"][0][valid].tolist()
        state = {name: seen["state"][name][0][valid].long().tolist() for name in (TOKEN, ROLE, LINE)}
        assert len(positions) < len(words), "compaction must have evicted tokens"
        assert positions == sorted(positions)
        assert state[TOKEN] == [ids[p] for p in positions]
        assert state[ROLE] == [marks[p] for p in positions], capacity
        assert state[LINE] == [lines[p] for p in positions], capacity
    assert split_total > 0, "some statement's value should have gone to a slot away from its name's"


def test_oracle_through_the_paged_engines_glue_matches_the_task_rules() -> None:
    """vLLM's and SGLang's workers observe a chunked prefill, then decode tokens buffered in chunks, and compact to
    the front of the request's slots (``backends/paged/state.py``)."""
    problem = generate(11)
    words = prompt_tokens(problem.prompt) + problem.trace
    prompt_len, ids = len(prompt_tokens(problem.prompt)), encode(words)
    marks, lines = expected_marks(words)
    oracle = _oracle()
    st = RequestState("r", "r", None, prompt_len, capacity=len(ids),
                      state={name: torch.zeros(1, len(ids)) for name in oracle.state_names})

    def step(tokens: list[int], prefill: bool) -> None:
        slot, st.physical = st.physical, st.physical + len(tokens)
        observe_tokens(oracle, st, slot, torch.tensor(tokens), None, prefill)

    step(ids[:10], True)  # a prefill in two chunks
    step(ids[10:prompt_len], True)
    compactions = 0
    for pos in range(prompt_len, len(ids)):
        step([ids[pos]], False)
        if st.physical == 48:
            flush_observations(oracle, st)
            live = torch.arange(st.physical)
            st.apply_compaction(torch.cat([live[:-8][::2], live[-8:]]))
            compactions += 1
    flush_observations(oracle, st)
    assert compactions >= 5
    positions = st.logical_map().tolist()
    assert st.state[TOKEN][0, : st.physical].long().tolist() == [ids[p] for p in positions]
    assert st.state[ROLE][0, : st.physical].long().tolist() == [marks[p] for p in positions]
    assert st.state[LINE][0, : st.physical].long().tolist() == [lines[p] for p in positions]


@dataclass
class RecordingOracle(Oracle):
    """The oracle, recording at every selection what it saw: per sequence its live positions, tokens, roles and
    step lines, in the view's (generation) order."""

    seen: list[tuple[list[int], list[int], list[int], list[int]]] = field(default_factory=list, init=False)

    def score(self, view: CacheView) -> torch.Tensor:
        for b in range(view.batch_size):
            live = view.valid[b]
            self.seen.append((view.positions[b][live].tolist(), view.token_ids[b][live].tolist(),
                              view.state[ROLE][b][live].long().tolist(), view.state[LINE][b][live].long().tolist()))
        return super().score(view)


def test_oracle_through_the_transformers_backend_keeps_task_roles_as_freed_slots_are_reused() -> None:
    backend = TransformersBackend("tiny-reasoner", batch_size=2)
    problems = [generate(i, split="heldout") for i in range(2)]
    requests = [GenerationRequest(str(i), backend.encode_prompt(p.prompt)) for i, p in enumerate(problems)]
    policy = RecordingOracle()
    backend.prepare(policy)
    capacity = 64 + 16  # budget + interval: what the cache allocates under this schedule
    results = backend.generate(requests, policy, EvictionSchedule(budget=64, interval=16, window=16),
                               SamplingParams(max_new_tokens=400))
    texts = [t.strip() for t in backend.model_info().token_texts()]
    streams = [r.prompt_ids + res.output_ids for r, res in zip(requests, results)]
    assert all(len(s) > 3 * capacity for s in streams), "every sequence must reuse the slots several times"
    assert len(policy.seen) >= 2 * 8
    checked_after_wrap = 0
    for positions, token_ids, roles, lines in policy.seen:
        matches = [s for s in streams if len(s) > positions[-1] and [s[p] for p in positions] == token_ids]
        assert len(matches) == 1
        words = [texts[t] for t in matches[0][: positions[-1] + 1]]
        marks, line_counts = expected_marks(words)
        assert roles == [marks[p] for p in positions]
        assert lines == [line_counts[p] for p in positions]
        checked_after_wrap += positions[-1] >= capacity
    assert checked_after_wrap >= 10
    for problem, result in zip(problems, results):  # the statements it kept are what the answer needed
        assert is_correct(problem.answer, result.text, thinking=True), result.text


def test_expected_marks_spend_a_statement_once_a_step_line_reads_it() -> None:
    words = ["step", "a", "1", "+", "b", "2", "=", "3", "r1", "3", ".", "step", "r1", "3"]
    marks, lines = expected_marks(words)
    assert marks[8:10] == [SPENT, SPENT] and marks[12] != SPENT
    assert lines == [1] * 11 + [2] * 3
