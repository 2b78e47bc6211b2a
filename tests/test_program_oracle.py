"""The oracle on the second embedded task (a register program): it finds the task from the model's vocabulary and
keeps p, the loop counter and the live statement of every register, and lets stale statements go -- checked
against the generator's offline ground truth (``program.statement_dead_at``, ``program.critical_mask``)."""

from __future__ import annotations

import pytest
import torch

from backends.base import GenerationRequest, SamplingParams
from backends.hf.backend import TransformersBackend
from backends.hf.decode import generate_batch
from harness.tinyreasoner import program as pg
from harness.tinyreasoner.oracle import ROLE, SPENT, Oracle
from harness.tinyreasoner.problems import DEF_NAME, DEF_VALUE, DIGITS, OTHER
from harness.tinyreasoner.vocab import PROGRAM_VOCABULARY, SUM_VOCABULARY, prompt_tokens
from zoo.base import CacheView, ModelInfo, PolicyError, StepObservation
from zoo.schedule import EvictionSchedule

STATEMENT = (DEF_NAME, DEF_VALUE)


def _oracle(tokens: tuple[str, ...], model_id: str = "tiny-reasoner-program") -> Oracle:
    oracle = Oracle()
    oracle.prepare(ModelInfo(model_id, model_id, 8, 1, lambda: list(tokens)))
    return oracle


def _online_roles(problem: pg.Problem) -> tuple[int, list[list[int]]]:
    """Feed the prompt as one prefill and the trace one token at a time; the trace's online roles after each
    trace token (``after[t][k]``: role of trace token k once trace token t was observed)."""
    oracle = _oracle(PROGRAM_VOCABULARY.tokens)
    prompt = prompt_tokens(problem.prompt)
    ids = PROGRAM_VOCABULARY.encode(prompt + problem.trace)
    state = {name: torch.zeros(1, len(ids)) for name in oracle.state_names}
    oracle.observe(StepObservation(torch.tensor([ids[: len(prompt)]]), 0, is_prefill=True), state)
    after = []
    for slot in range(len(prompt), len(ids)):
        oracle.observe(StepObservation(torch.tensor([[ids[slot]]]), slot), state)
        after.append(state[ROLE][0, len(prompt):].long().tolist())
    return len(prompt), after


def test_the_oracle_applies_the_rules_of_the_task_whose_words_the_model_has() -> None:
    assert _oracle(SUM_VOCABULARY.tokens, "tiny-reasoner").task == "sum"
    assert _oracle(PROGRAM_VOCABULARY.tokens).task == "program"
    words = [f"w{i}" for i in range(40)] + ["=", ".", *map(str, range(10))]
    with pytest.raises(PolicyError, match="tiny-reasoner-program") as refused:
        _oracle(tuple(words), "some/model")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("index", range(4))
def test_a_statement_is_spent_exactly_when_its_register_is_stated_again(index: int) -> None:
    """At every step of the trace the online roles are the offline roles, with ``SPENT`` on exactly the statements
    whose ``statement_dead_at`` has been reached."""
    problem = pg.generate(index, seed=0, split="heldout")
    roles = pg.token_roles(problem.trace)
    dead = pg.statement_dead_at(problem.trace, roles)
    _, after = _online_roles(problem)
    for t, online in enumerate(after):
        expected = [SPENT if roles[k] in STATEMENT and dead[k] <= t else roles[k] for k in range(t + 1)]
        assert online[: t + 1] == expected, (t, " ".join(problem.trace[max(0, t - 12): t + 1]))


@pytest.mark.parametrize("index", range(4))
def test_every_critical_statement_is_live_whenever_a_later_line_reads_it(index: int) -> None:
    """The query at a reading token ``j`` attends over what the cache held after token ``j - 1`` (compression runs
    after a token is observed): each statement ``critical_mask`` marks is still live there, for every read. The
    counter's read is the next ``iter`` (its digit is the old one plus one), the very token that overwrites it."""
    problem = pg.generate(index, seed=1, split="heldout")
    trace, critical = problem.trace, problem.critical
    roles = pg.token_roles(trace)
    _, after = _online_roles(problem)
    checked = 0
    for k in (k for k, r in enumerate(roles) if r == DEF_NAME and critical[k]):
        for j in _reads(trace, roles, k):
            assert after[j - 1][k] == DEF_NAME and after[j - 1][k + 1] == DEF_VALUE, (k, j)
            checked += 1
    assert checked > 10


def _reads(trace: list[str], roles: list[int], k: int) -> list[int]:
    """Where later lines read the statement at ``k`` before it is overwritten: a register operand in a work line,
    or, for the counter, the next line start that depends on it (the next ``iter`` or ``end``)."""
    name, found = trace[k], []
    for j in range(k + 2, len(trace)):
        if name == pg.COUNTER:
            if trace[j] in (pg.COUNTER, "end"):
                return [j]
            continue
        if roles[j] == DEF_NAME and trace[j] == name:
            break
        if trace[j] == name and roles[j] != OTHER:
            found.append(j)
    return found


def _scores_at(problem: pg.Problem, cut: int) -> tuple[torch.Tensor, int]:
    """The oracle's scores over prompt + trace[:cut], every slot cached."""
    oracle = _oracle(PROGRAM_VOCABULARY.tokens)
    prompt = prompt_tokens(problem.prompt)
    ids = PROGRAM_VOCABULARY.encode(prompt + problem.trace[:cut])
    state = {name: torch.zeros(1, len(ids)) for name in oracle.state_names}
    oracle.observe(StepObservation(torch.tensor([ids]), 0, is_prefill=True), state)
    n = len(ids)
    view = CacheView(valid=torch.ones(1, n, dtype=torch.bool), positions=torch.arange(n).unsqueeze(0),
                     token_ids=torch.tensor([ids]), is_prompt=torch.arange(n).unsqueeze(0) < len(prompt), keys=[],
                     state=state)
    return oracle.score(view)[0], len(prompt)


@pytest.mark.parametrize("index", range(3))
def test_scores_put_p_the_counter_and_the_live_registers_above_everything_stale(index: int) -> None:
    """At the start of every iteration and at ``end``: the live statement of each of p, the counter and a, b, c
    (the latest one of each stated so far) outranks every stale statement and every filler token."""
    problem = pg.generate(index, seed=2, split="heldout")
    trace = problem.trace
    roles = pg.token_roles(trace)
    second = trace.index(pg.COUNTER, trace.index(pg.COUNTER) + 1)  # a, b and the counter are stated by then
    cuts = [k for k, w in enumerate(trace) if w in (pg.COUNTER, "end") and k >= second]
    for cut in cuts:
        scores, start = _scores_at(problem, cut)
        dead = pg.statement_dead_at(trace[:cut], roles[:cut])
        live = [k for k in range(cut) if roles[k] in STATEMENT and dead[k] == cut]
        stale = [k for k in range(cut) if roles[k] in STATEMENT and dead[k] < cut]
        filler = [k for k in range(cut) if roles[k] == OTHER]
        live_names = {trace[k] for k in live if roles[k] == DEF_NAME}
        assert {pg.KEPT, pg.COUNTER, "a", "b"} <= live_names and live_names <= set(pg.NAMES) | {pg.COUNTER}
        floor = min(float(scores[start + k]) for k in live)
        assert all(float(scores[start + k]) < floor for k in stale + filler), cut


def test_through_the_decode_loop_under_a_budget_it_keeps_every_critical_statement(random_program_reasoner) -> None:
    """Two reference traces forced through the transformers decode loop (left-padded batch) with the oracle and
    a budget of 64 tokens: every read of a statement ``critical_mask`` marks finds it in the cache, and a
    compression keeps a statement already stale only inside the recent window."""
    engine = TransformersBackend(str(random_program_reasoner), batch_size=2)
    policy = Oracle()
    engine.prepare(policy)
    problems = [pg.generate(i, seed=0, split="heldout") for i in (0, 1)]
    requests = [GenerationRequest(p.id, engine.encode_prompt(p.prompt),
                                  forced_ids=PROGRAM_VOCABULARY.encode([*p.trace, "answer"])) for p in problems]
    by_id = {p.id: (p, len(r.prompt_ids)) for p, r in zip(problems, requests)}
    window, interval = 16, 8
    truth = {}
    for p in problems:
        roles = pg.token_roles(p.trace)
        truth[p.id] = (roles, pg.statement_dead_at(p.trace, roles))
    reads = {p.id: {} for p in problems}  # trace index of a reading token -> the statements it reads
    for p in problems:
        roles = truth[p.id][0]
        for k in (k for k, r in enumerate(roles) if r == DEF_NAME and p.critical[k]):
            for j in _reads(p.trace, roles, k):
                reads[p.id].setdefault(j, []).append(k)
    checked = {"read": 0, "stale": 0}
    seen: dict[str, tuple[int, int]] = {}  # per request: (trace token last written, cache size) at the last hook
    compressed: dict[str, int] = {}  # per request: the trace token after which the cache was last compressed

    def hook(cache, logits, request_ids) -> None:
        """Called after a forward: ``held`` is what the query of the token written last attended over."""
        t_len = cache.length
        for b, rid in enumerate(request_ids):
            problem, base = by_id[rid]
            held = set(cache.positions[b, :t_len][cache.valid[b, :t_len]].tolist())
            t = max(held) - base  # the trace token written last
            if not 0 <= t < len(problem.trace):
                continue
            for k in reads[rid].get(t, []):
                assert {base + k, base + k + 1} <= held, (rid, t, k)
                checked["read"] += 1
            last_t, last_size = seen.get(rid, (t, len(held) - 1))
            if len(held) <= last_size:  # compressed after the previous token: what went stale by then went
                compressed[rid] = last_t
            seen[rid] = (t, len(held))
            roles, dead = truth[rid]
            if rid not in compressed:
                continue
            t_c = compressed[rid]
            for k in range(t_c - window + 1):  # older than the recent window at that compression
                if roles[k] in STATEMENT and dead[k] <= t_c:
                    assert base + k not in held, (rid, t, k)
                    checked["stale"] += 1

    schedule = EvictionSchedule(budget=64, interval=interval, window=window)
    longest = max(len(r.forced_ids) for r in requests)
    results = generate_batch(engine.parts, requests, policy, schedule, SamplingParams(longest + 2), engine.device,
                             on_forward=hook)
    assert all(r.kv_peak_tokens <= 64 + interval for r in results)
    assert checked["read"] == sum(len(ks) for by_token in reads.values() for ks in by_token.values())
    assert checked["stale"] > 1000 and len(compressed) == 2


@pytest.mark.parametrize("task_words", [("iter", "set", "keep"), ("step", "r1")])
def test_a_subword_vocabulary_holding_a_tasks_words_is_refused(task_words):
    """SmolLM2's 49k tokens include ``iter``, ``set`` and ``keep``: words alone must not select a task's rules."""
    texts = ["<pad>", "<eos>", *task_words, "=", ".", *DIGITS, *(f"piece{i}" for i in range(5000))]
    with pytest.raises(PolicyError, match="use it with --model tiny-reasoner"):
        Oracle().prepare(ModelInfo("subword-model", "subword-model", 8, 1, lambda: list(texts)))


@pytest.mark.parametrize("vocabulary", [SUM_VOCABULARY, PROGRAM_VOCABULARY], ids=["sum", "program"])
def test_the_step_table_equals_next_roles_and_the_stale_rule_for_every_token_and_previous_state(vocabulary):
    from harness.tinyreasoner import oracle as o

    policy = _oracle(vocabulary.tokens)
    ids = policy._ids
    vocab = len(vocabulary.tokens)
    new = torch.arange(vocab).repeat_interleave((SPENT + 1) * 4)  # every token after every role and 4 kinds of token
    prev_role = torch.arange(SPENT + 1).float().repeat_interleave(4).repeat(vocab)
    # '.', '=', an ordinary token, and -1: nothing observed yet
    prev_token = torch.tensor([int(ids["."]), int(ids["="]), 0, -1]).repeat((SPENT + 1) * vocab)
    role, starts, in_line = o.next_roles(ids, new, prev_token, prev_role)
    stale = policy._rules.stale(ids, new, role, in_line)
    step = ids["table"][o.step_index(ids, new, prev_token, prev_role)]
    assert torch.equal(step[:, o.ROLE_COLUMN], role)
    assert torch.equal(step[:, o.STARTS_COLUMN] > 0, starts)
    assert torch.equal(step[:, o.OWNS_COLUMN] > 0, role == DEF_NAME)
    assert torch.equal(step[:, o.INHERITS_COLUMN] > 0, role == DEF_VALUE)
    assert torch.equal(step[:, o.STALE_COLUMN] > 0, stale)
