"""Context drop-out masks: each view shows exactly what its eviction pattern would have kept."""

from __future__ import annotations

import random

import pytest
import torch

from harness.tinyreasoner.dropout import RECIPE, VIEWS, batch_mask, parse_views, view_mask
from harness.tinyreasoner.problems import DEF_NAME, DEF_VALUE, OTHER, Knobs, generate, statement_spent_at, token_roles
from harness.tinyreasoner.vocab import prompt_tokens


def _sequence(index: int = 3) -> tuple[list[str], int]:
    problem = generate(index, seed=0, split="heldout", knobs=Knobs())
    prompt = prompt_tokens(problem.prompt)
    return [*prompt, *problem.completion], len(prompt)


def test_a_statement_is_spent_where_a_later_step_reads_it() -> None:
    words = "step a 2 + b 0 = 2 r1 2 . note a 2 . step c 1 + r1 2 = 3 r2 3 .".split()
    spent = statement_spent_at(words, token_roles(words))
    reader = words.index("r1", 10)
    assert spent[words.index("r1")] == spent[words.index("r1") + 1] == reader
    assert spent[words.index("r2")] == len(words)  # never read
    assert spent[0] == -1


@pytest.mark.parametrize("view", VIEWS)
def test_every_view_is_causal_and_keeps_each_token_visible_to_itself(view: str) -> None:
    words, prompt_length = _sequence()
    mask = view_mask(words, prompt_length, view, random.Random(0))
    assert not mask.triu(1).any()
    assert mask.diagonal().all()
    assert mask[:, :prompt_length].sum() == torch.ones(len(words), prompt_length).tril().sum()  # prompt kept


def test_full_view_is_the_causal_mask() -> None:
    words, prompt_length = _sequence()
    assert torch.equal(view_mask(words, prompt_length, "full", random.Random(0)),
                       torch.ones(len(words), len(words), dtype=torch.bool).tril())


def test_oracle_view_shows_unread_statements_and_hides_old_filler_and_read_statements() -> None:
    words, prompt_length = _sequence()
    mask = view_mask(words, prompt_length, "oracle", random.Random(0))
    roles = [OTHER] * prompt_length + token_roles(words[prompt_length:])
    spent = statement_spent_at(words, roles)
    last = len(words) - 1
    for key, role in enumerate(roles[: last - 64]):
        if key < prompt_length:
            continue
        if role in (DEF_NAME, DEF_VALUE):
            assert bool(mask[last, key]) == (spent[key] >= last)
            assert mask[spent[key], key]  # still visible to the step that reads it
        elif role == OTHER:
            assert not mask[last, key]  # filler beyond any window is gone


def test_random_view_never_hides_statements_and_hides_some_filler() -> None:
    words, prompt_length = _sequence()
    mask = view_mask(words, prompt_length, "random", random.Random(0))
    roles = [OTHER] * prompt_length + token_roles(words[prompt_length:])
    statements = [k for k, r in enumerate(roles) if r in (DEF_NAME, DEF_VALUE)]
    assert mask[-1, statements].all()
    hidden = (~mask[-1, prompt_length:-121]).float().mean()
    assert 0.4 < hidden < 0.8  # about 60% of the old non-statement tokens
    assert mask[-1, -32:].all()  # nothing vanishes sooner than 32 tokens after it


def _vanish_after(column: torch.Tensor, key: int) -> int | None:
    """How many queries after ``key`` still see it, if it vanishes at all; asserts the column is one run."""
    seen = column[key:]
    if seen.all():
        return None
    gone = int((~seen).nonzero()[0])
    assert not seen[gone:].any(), "a vanished token came back"
    return gone


def test_random_any_view_hides_statements_like_any_other_trace_token() -> None:
    """The control model's view: every trace token, result statements included, vanishes with probability 0.6
    for queries 32-120 tokens after it, for good; the prompt stays."""
    hidden_statements = hidden_other = statements = others = 0
    for index in range(8):
        words, prompt_length = _sequence(index)
        mask = view_mask(words, prompt_length, "random-any", random.Random(index))
        assert not mask.triu(1).any() and mask.diagonal().all()
        assert mask[-1, :prompt_length].all()  # the prompt is never hidden
        roles = [OTHER] * prompt_length + token_roles(words[prompt_length:])
        for key in range(prompt_length, len(words) - 121):  # old enough to have vanished if drawn
            after = _vanish_after(mask[:, key], key)
            assert after is None or 32 <= after <= 120
            if roles[key] in (DEF_NAME, DEF_VALUE):
                statements += 1
                hidden_statements += after is not None
            else:
                others += 1
                hidden_other += after is not None
    assert statements > 40 and hidden_statements > 0
    assert 0.45 < hidden_statements / statements < 0.75  # about 60%, as for any other token
    assert 0.5 < hidden_other / others < 0.7


def test_random_view_gaps_are_single_runs_of_32_to_120_tokens() -> None:
    words, prompt_length = _sequence()
    mask = view_mask(words, prompt_length, "random", random.Random(1))
    for key in range(prompt_length, len(words)):
        after = _vanish_after(mask[:, key], key)
        assert after is None or 32 <= after <= 120


def test_view_specs_parse_with_the_recipe_weights_by_default() -> None:
    assert parse_views(RECIPE) == (("full", "oracle", "random"), (0.3, 0.4, 0.3))
    assert parse_views("full,oracle,random") == parse_views(RECIPE)
    assert parse_views("full,random-any") == (("full", "random-any"), (0.3, 0.7))  # the gapped share stays 70%
    assert parse_views(" full:1 , random-any:3") == (("full", "random-any"), (1.0, 3.0))
    for bad, message in (("full,sideways", "unknown view"), ("full,full", "twice"), ("full:0", "positive sum"),
                         ("full:-1,random:2", "non-negative")):
        with pytest.raises(ValueError, match=message):
            parse_views(bad)


def _batch(count: int = 6) -> tuple[list[list[str]], list[int], int]:
    pairs = [_sequence(index) for index in range(count)]
    rows, lengths = [w for w, _ in pairs], [p for _, p in pairs]
    return rows, lengths, max(map(len, rows))


def test_the_recipe_draws_exactly_what_the_shipped_model_was_trained_on() -> None:
    """Golden values from the implementation the shipped model was trained with (before views became a knob):
    the default path must consume the random stream and build the masks exactly as it did."""
    rows, lengths, width = _batch()
    for kwargs in ({}, dict(zip(("views", "weights"), parse_views(RECIPE)))):
        rng = random.Random(0)
        mask, views = batch_mask(rows, lengths, width, rng, **kwargs)
        assert views == ["random", "random", "oracle", "full", "oracle", "oracle"]
        assert (mask == 0).sum(dim=(1, 2, 3)).tolist() == [92249, 75252, 38125, 102831, 77657, 53021]
        assert rng.getrandbits(32) == 3082896635


def test_the_control_views_never_draw_the_oracle_view() -> None:
    rows, lengths, width = _batch(4)
    names, weights = parse_views("full,random-any")
    drawn: list[str] = []
    for seed in range(10):
        drawn += batch_mask(rows, lengths, width, random.Random(seed), weights=weights, views=names)[1]
    assert set(drawn) == {"full", "random-any"}
    assert 0.5 < drawn.count("random-any") / len(drawn) < 0.9


def test_batch_mask_is_additive_and_keeps_padding_rows_causal() -> None:
    first, p1 = _sequence(1)
    second, p2 = _sequence(2)
    width = max(len(first), len(second)) + 3
    mask, views = batch_mask([first, second], [p1, p2], width, random.Random(0), weights=(0, 1, 0))
    assert mask.shape == (2, 1, width, width) and views == ["oracle", "oracle"]
    assert set(mask.unique().tolist()) == {0.0, float("-inf")}
    for b, words in enumerate((first, second)):
        pad_rows = mask[b, 0, len(words):]
        assert torch.equal(pad_rows == 0, torch.ones(width, width, dtype=torch.bool).tril()[len(words):])


def test_unknown_view_is_refused() -> None:
    words, prompt_length = _sequence()
    with pytest.raises(ValueError, match="unknown view"):
        view_mask(words, prompt_length, "sideways", random.Random(0))


def test_trainer_uses_drop_out_late_resumes_and_writes_a_loadable_model(tmp_path, monkeypatch) -> None:
    """``make-tiny-reasoner`` end to end at toy size: drop-out masks only from ``dropout_from`` on, resume from
    the checkpoint, and a standard transformers directory with its card at the end."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.tinyreasoner import train as trainer

    calls: list[int] = []
    real = trainer.dropout_mask

    def counting(x, rng, views=RECIPE, task=None):
        calls.append(x.shape[0])
        assert views == RECIPE
        return real(x, rng, views, task)

    monkeypatch.setattr(trainer, "dropout_mask", counting)
    toy = dict(batch_size=2, hidden_size=32, layers=1, heads=2, intermediate=64, eval_problems=2, dropout_from=0.5)
    logs: list[str] = []
    trainer.train(tmp_path, trainer.TrainConfig(steps=4, eval_every=4, **toy), log=logs.append)
    assert len(calls) == 2  # steps 2 and 3 of 0-3
    result = trainer.make_tiny_reasoner(tmp_path, trainer.TrainConfig(steps=6, eval_every=4, **toy), heldout_problems=2,
                                        log=logs.append)
    assert "resumed at step 4" in logs and len(calls) == 4  # steps 4 and 5 of the resumed 6-step run
    assert result["heldout"]["problems"] == 2 and not (tmp_path / "checkpoint.pt").exists()
    assert "context drop-out" in (tmp_path / "README.md").read_text()
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.hidden_size == 32
    assert AutoTokenizer.from_pretrained(tmp_path).decode([0]) == "<pad>"


def test_trainer_trains_the_control_views_and_says_so_on_the_card(tmp_path, monkeypatch) -> None:
    from harness.tinyreasoner import dropout
    from harness.tinyreasoner import train as trainer

    drawn: list[str] = []
    real = dropout.batch_mask

    def recording(*args, **kwargs):
        mask, views = real(*args, **kwargs)
        drawn.extend(views)
        return mask, views

    monkeypatch.setattr(trainer, "batch_mask", recording)
    cfg = trainer.TrainConfig(steps=3, eval_every=3, batch_size=4, hidden_size=32, layers=1, heads=2, intermediate=64,
                              eval_problems=2, dropout_from=0.0, dropout_views="full:0,random-any:1")
    trainer.make_tiny_reasoner(tmp_path, cfg, heldout_problems=2, log=lambda _: None)
    assert drawn == ["random-any"] * 12
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("# tiny-reasoner-control") and "full:0,random-any:1" in card
    with pytest.raises(ValueError, match="unknown view"):
        trainer.train(tmp_path / "bad", trainer.TrainConfig(steps=1, dropout_views="oracle,sideways"))


def test_the_control_model_has_its_own_alias() -> None:
    """``--model tiny-reasoner-control``: the model trained without the oracle-like view, or, where it is not
    shipped, an error that says how to make it."""
    from backends.base import BackendError
    from backends.hf.loading import TINY_REASONER_ALIAS, resolve, tiny_reasoner_dir

    assert resolve(TINY_REASONER_ALIAS).path == str(tiny_reasoner_dir())
    try:
        source = resolve("tiny-reasoner-control")
    except BackendError as exc:
        assert "--dropout-views full,random-any" in str(exc)
    else:
        assert source.kind == "alias" and source.path.endswith("control") and source.path != str(tiny_reasoner_dir())


@pytest.mark.slow
def test_a_curriculum_extension_starts_from_the_given_weights_and_trains_only_the_widened_last_stage(
        tmp_path, monkeypatch) -> None:
    """``make-tiny-reasoner --init-from DIR --extra-vars 4``: the first forward pass is the base model's (its
    loss on the first batch equals the base model's own loss on that batch), every batch comes from the last stage
    with up to 4 more variables, drop-out masks from step 0, and the card names the base; a base of another
    shape is refused with one line."""
    from transformers import LlamaForCausalLM

    from harness.tinyreasoner import train as trainer
    from zoo.errors import UserError

    toy = dict(batch_size=2, hidden_size=32, layers=1, heads=2, intermediate=64, eval_problems=2)
    base = tmp_path / "base"
    trainer.make_tiny_reasoner(base, trainer.TrainConfig(steps=2, eval_every=2, **toy), heldout_problems=2,
                               log=lambda _: None)
    knobs_seen: list = []
    real_batch, masks = trainer.make_batch, []

    def recording_batch(rng, size, knobs, seed, task=None):
        knobs_seen.append(knobs)
        return real_batch(rng, size, knobs, seed, task)

    monkeypatch.setattr(trainer, "make_batch", recording_batch)
    real_mask = trainer.dropout_mask

    def counting_mask(x, rng, views=RECIPE, task=None):
        masks.append(1)
        return real_mask(x, rng, views, task)

    monkeypatch.setattr(trainer, "dropout_mask", counting_mask)
    first_losses: list[float] = []
    real_ce = torch.nn.functional.cross_entropy

    def recording_ce(*args, **kwargs):
        out = real_ce(*args, **kwargs)
        if not first_losses:
            first_losses.append(float(out.detach()[out.detach() > 0].mean()))
        return out

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", recording_ce)
    cfg = trainer.TrainConfig(steps=3, eval_every=3, init_from=str(base), extra_vars=4, **toy)
    trainer.make_tiny_reasoner(tmp_path / "ext", cfg, heldout_problems=2, log=lambda _: None)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", real_ce)

    assert [(k.min_vars, k.max_vars) for k in knobs_seen] == [(9, 17)] * 3
    assert len(masks) == 3
    # the base model's own loss on the extension's first batch, with its first mask
    rng = random.Random(cfg.seed)
    x, y, _ = real_batch(rng, cfg.batch_size, knobs_seen[0], cfg.seed)
    mask = real_mask(x, rng, cfg.dropout_views)
    model = LlamaForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        logits = model(input_ids=x, attention_mask=mask).logits[:, :-1]
    target = y[:, 1:]
    losses = real_ce(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=trainer.IGNORE,
                     reduction="none")
    assert first_losses[0] == pytest.approx(float(losses[losses > 0].mean()), rel=1e-4)
    card = (tmp_path / "ext" / "README.md").read_text()
    assert card.startswith("# tiny-reasoner-extended") and str(base) in card and '"max_vars": 17' in card
    assert "drop-out (`dropout.py`) throughout" in card

    wider = trainer.TrainConfig(steps=1, init_from=str(base), **{**toy, "hidden_size": 64})
    with pytest.raises(UserError, match="not a model of this shape") as err:
        trainer.train(tmp_path / "bad", wider)
    assert "\n" not in str(err.value)


def test_the_program_model_has_its_own_alias_and_folder() -> None:
    """``--model tiny-reasoner-program``: the model trained on the register-program task, in its own folder, or,
    where its weights are not in the package, one line that names the folder and the command that makes it."""
    from backends.base import BackendError
    from backends.hf.loading import MODEL_ALIASES, resolve, tiny_reasoner_dir

    assert "tiny-reasoner-program" in MODEL_ALIASES
    try:
        source = resolve("tiny-reasoner-program")
    except BackendError as exc:
        message = str(exc)
        assert "\n" not in message and "tinyreasoner/program-model" in message
        assert "make-tiny-reasoner --out DIR --task program --steps 3000" in message
    else:
        assert source.kind == "alias" and source.path.endswith("program-model")
        assert source.path != str(tiny_reasoner_dir())
