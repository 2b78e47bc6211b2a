"""The DynTS predictor pipeline: collect -> label -> train -> evaluate -> analyze, and the labels' maths."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaForCausalLM
from typer.testing import CliRunner

from backends.base import SamplingParams
from backends.hf.backend import TransformersBackend
from harness.cli import app
from harness.predictor_pipeline.evaluate import analyze, concentration, evaluate
from harness.predictor_pipeline.fit import FitConfig, fit, pool_labels, transform_labels
from harness.predictor_pipeline.labels import (
    attention_label,
    copy_label,
    far_copies,
    label_store,
    later_label,
    lifetime_label,
    lifetimes,
    load_labels,
    lookback_label,
)
from harness.predictor_pipeline.rankers import ranking_metrics, top_set
from harness.predictor_pipeline.traces import TraceStore, TraceStoreError, collect
from harness.tinyreasoner.problems import generate
from harness.workloads.replay_traces import TraceRow
from zoo.predictor import ImportancePredictor

runner = CliRunner()


def trace_rows(count: int, split: str = "train") -> list[TraceRow]:
    return [TraceRow(p.id, p.prompt, p.trace, p.answer) for p in (generate(i, split=split) for i in range(count))]


@pytest.fixture(scope="module")
def store(random_reasoner, tmp_path_factory) -> TraceStore:
    engine = TransformersBackend(str(random_reasoner), batch_size=4)
    store = TraceStore(tmp_path_factory.mktemp("traces") / "store")
    store.open_for({"model": str(random_reasoner), "hidden_size": 32})
    report = collect(engine, trace_rows(12), store, SamplingParams(512))
    assert report == {"traces": 12, "correct": report["correct"], "new": 12}
    again = collect(engine, trace_rows(12), store, SamplingParams(512))  # resumes: nothing redone
    assert again["new"] == 0 and len(store.records()) == 12
    label_store(engine, store, ["attention", "gradient", "lookback", "later", "copy", "lifetime"])
    return store


def test_attention_label_equals_eager_attention(random_reasoner, store) -> None:
    engine = TransformersBackend(str(random_reasoner))
    trace = next(store.load(store.records()[:1]))
    r = trace.record
    end = r.length - (1 if int(trace.tokens[-1]) in engine.parts.eos_ids else 0)
    eager = LlamaForCausalLM.from_pretrained(random_reasoner, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = eager(input_ids=trace.tokens[None, :end], output_attentions=True).attentions
    probs = torch.stack(attentions)[:, 0, :, r.answer_start : end].clone()  # [L, H, A, T]
    for a, row in enumerate(range(r.answer_start, end)):
        probs[:, :, a, row] = 0.0  # diagonal zeroed
    expected = probs.mean(dim=(0, 1, 2))[r.thinking]
    torch.testing.assert_close(attention_label(engine, trace), expected, atol=1e-6, rtol=1e-4)


def _eager_attention(random_reasoner, store, which: slice):
    """A stored trace (up to its EOS) and its attention probabilities from an eager forward, [L, T(query), T(key)]
    averaged over heads: the slow reference the labels are checked against."""
    engine = TransformersBackend(str(random_reasoner))
    trace = next(store.load(store.records()[which]))
    end = trace.record.length - (1 if int(trace.tokens[-1]) in engine.parts.eos_ids else 0)
    eager = LlamaForCausalLM.from_pretrained(random_reasoner, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = eager(input_ids=trace.tokens[None, :end], output_attentions=True).attentions
    return engine, trace, end, torch.stack(attentions)[:, 0].mean(1)


def test_lookback_label_equals_eager_attention(random_reasoner, store) -> None:
    engine, trace, end, probs = _eager_attention(random_reasoner, store, slice(1, 2))
    r = trace.record
    rows, cols = torch.arange(end)[:, None], torch.arange(end)[None, :]
    far = probs * (cols <= rows - 32)
    expected = far.amax(dim=1).mean(0)[r.thinking]
    torch.testing.assert_close(lookback_label(engine, trace), expected, atol=1e-6, rtol=1e-4)


def test_later_label_equals_eager_attention_from_every_far_query(random_reasoner, store) -> None:
    engine, trace, end, probs = _eager_attention(random_reasoner, store, slice(2, 3))
    r = trace.record
    expected = torch.zeros(end)
    for query in range(end):  # every query (thinking or answer) at least 32 tokens after the key
        for key in range(max(0, query - 31)):
            expected[key] += probs[:, query, key].mean()
    torch.testing.assert_close(later_label(engine, trace), expected[r.thinking], atol=1e-5, rtol=1e-4)
    assert load_labels(store, "later").keys() == load_labels(store, "attention").keys()


def test_far_copies_marks_the_one_far_source_of_a_copied_bigram() -> None:
    filler = [50 + (i % 7) for i in range(40)]
    tokens = torch.tensor([1, 5, 6, *filler, 5, 6, 9])  # (5, 6) stated at 1-2, copied at 43 -> 44
    needed = far_copies(tokens, 32)
    assert needed[43, 2] == 1.0  # query 43 (token 5) wrote 6, the token after the far 5 at slot 1
    assert needed[43].sum() == 1.0
    assert needed[:43].sum() == 0  # the filler's bigrams repeat every 7 tokens: always a nearer copy (a template)
    near = torch.tensor([1, 5, 6, *filler[:20], 5, 6, *filler[:20], 5, 6])  # restated 22 tokens before the copy
    assert far_copies(near, 32)[len(near) - 2].sum() == 0  # a nearer copy served it: no far read needed
    twice = torch.tensor([5, 6, 5, 6, *filler, 5, 6])  # two far sources: the credit is split
    row = far_copies(twice, 32)[len(twice) - 2]
    assert row[1] == row[3] == 0.5 and row.sum() == 1.0


def _eager_far_reads(random_reasoner, store):
    """The copy and lifetime labels' reference, from eager attention and the token bigrams by hand: ``(engine,
    trace, read)``, ``read[query, key]`` the largest single-head attention a query pays a key while writing the
    token that followed it, the bigram absent from the query's 32-token window, split between equally far
    sources; 0 elsewhere."""
    engine = TransformersBackend(str(random_reasoner))
    trace = next(store.load(store.records()[3:4]))
    end = trace.record.length - (1 if int(trace.tokens[-1]) in engine.parts.eos_ids else 0)
    eager = LlamaForCausalLM.from_pretrained(random_reasoner, attn_implementation="eager").eval()
    with torch.no_grad():
        probs = torch.stack(eager(input_ids=trace.tokens[None, :end], output_attentions=True).attentions)[:, 0]
    t = trace.tokens[:end].tolist()
    read = torch.zeros(end, end)
    for i in range(end - 1):
        pair = (t[i], t[i + 1])
        if any((t[m - 1], t[m]) == pair for m in range(max(1, i - 31), i + 1)):
            continue  # the bigram is in the query's window
        sources = [j for j in range(1, i - 31) if (t[j - 1], t[j]) == pair]
        for j in sources:
            read[i, j] = float(probs[:, :, i, j].max()) / len(sources)
    return engine, trace, read


def test_copy_label_equals_eager_attention_of_the_far_copying_reads(random_reasoner, store) -> None:
    """Per key: the largest single-head attention any far query pays it while writing the token that followed
    it, that bigram absent from the query's window; split between sources that are equally far copies."""
    engine, trace, read = _eager_far_reads(random_reasoner, store)
    expected = read.amax(0)
    torch.testing.assert_close(copy_label(engine, trace), expected[trace.record.thinking], atol=1e-6, rtol=1e-4)
    assert load_labels(store, "copy").keys() == load_labels(store, "attention").keys()


def test_lifetime_is_the_distance_to_the_last_substantial_far_copy() -> None:
    """(5, 6) stated at slots 1-2, copied at 43 -> 44 and again at 85 -> 86 (where slot 44's copy is as far: the
    credit is split). Attention is placed by hand, the copy at 43 in one layer and the one at 85 in another:
    key 2 is read at 43 (0.6) and at 85 (0.6 x 1/2 = 0.3, at least a quarter of 0.6), so it is needed for 83
    tokens; key 44 is read at 85 (0.3): 41 tokens. Faint reads do not extend a lifetime."""
    filler = [50 + (i % 7) for i in range(40)]
    tokens = torch.tensor([1, 5, 6, *filler, 5, 6, *filler, 5, 6, 9])
    weights = far_copies(tokens, 32)
    t = tokens.numel()
    first, second = torch.zeros(t, t), torch.zeros(t, t)
    first[43, 2] = 0.6
    second[85, 2] = second[85, 44] = 0.6
    layers = [first * weights, second * weights]

    def reads():
        return ((torch.arange(t), layer) for layer in layers)

    expected = torch.zeros(t)
    expected[2], expected[44] = 85 - 2, 85 - 44
    assert torch.equal(lifetimes(reads, t), expected)
    second[85, 2] = 0.2  # 0.1 after the split: below a quarter of key 2's strongest read (0.6)
    layers = [first * weights, second * weights]
    expected[2] = 43 - 2
    assert torch.equal(lifetimes(reads, t), expected)
    first[43, 2], second[85, 2] = 0.04, 0.08  # both reads 0.04: below the floor (0.05), key 2 is never needed
    layers = [first * weights, second * weights]
    expected[2] = 0
    assert torch.equal(lifetimes(reads, t), expected)


def test_lifetime_label_equals_eager_attention_of_the_last_far_copying_read(random_reasoner, store) -> None:
    """Per key: how far the last query is whose far-copy read (single-head attention x its copy weight, in any
    layer) is at least half the key's strongest; a random model's reads are faint, so the floor is lowered."""
    engine, trace, read = _eager_far_reads(random_reasoner, store)
    end = read.shape[0]
    expected = torch.zeros(end)
    for j in range(end):
        strongest = float(read[:, j].max())
        counted = [i for i in range(end) if read[i, j] > 0 and read[i, j] >= 0.5 * strongest]
        expected[j] = max(counted) - j if counted else 0
    assert (expected > 0).sum() >= 3  # the trace has far copies to measure
    got = lifetime_label(engine, trace, min_attention=0.0, share=0.5)
    assert torch.equal(got, expected[trace.record.thinking])
    assert load_labels(store, "lifetime").keys() == load_labels(store, "copy").keys()


def test_on_policy_collection_stores_the_hidden_states_dynts_saw(random_reasoner, tmp_path) -> None:
    from harness.predictor_pipeline.traces import final_hidden
    from harness.workloads.prompt_file import PromptItem
    from zoo.dynts import DynTS
    from zoo.predictor import PredictorConfig
    from zoo.schedule import EvictionSchedule

    engine = TransformersBackend(str(random_reasoner), batch_size=3)
    ImportancePredictor(PredictorConfig(str(random_reasoner), 32, [8])).save(tmp_path / "pred")
    items = [PromptItem(p.id, p.prompt, p.answer) for p in (generate(i) for i in range(3))]
    store = TraceStore(tmp_path / "on-policy")
    store.open_for({"model": str(random_reasoner), "hidden_size": 32})
    collect(engine, items, store, SamplingParams(80), policy=DynTS(predictor=str(tmp_path / "pred")),
            schedule=EvictionSchedule(budget=56, interval=8, window=16))
    for trace in store.load(store.records()):
        r = trace.record
        full = final_hidden(engine, trace.tokens.tolist())[r.thinking]
        assert trace.hidden.shape == full.shape
        first = 64 - r.prompt_len - 1  # tokens written before the first compression saw the whole context
        torch.testing.assert_close(trace.hidden[:first].float(), full[:first].half().float(), atol=2e-3, rtol=1e-2)
        assert not torch.allclose(trace.hidden[first + 8 :].float(), full[first + 8 :].half().float(), atol=2e-3)


def test_tapped_hidden_states_go_to_their_own_row_after_the_ring_cache_wraps() -> None:
    """Each batch row gets one captured hidden state per token it fed back, even once the cache's write slot has
    wrapped round several times (slot 0 reused, tokens moved by compaction)."""
    from backends.base import GenerationRequest
    from harness.predictor_pipeline.traces import tap_hidden
    from zoo import build_policy
    from zoo.schedule import EvictionSchedule

    engine = TransformersBackend("tiny-reasoner", batch_size=3)
    prompts = [engine.encode_prompt(generate(i, split="heldout").prompt) for i in range(3)]
    requests = [GenerationRequest(str(i), p) for i, p in enumerate(prompts)]
    tapped, captured = tap_hidden(build_policy("window"))
    engine.prepare(tapped)
    results = engine.generate(requests, tapped, EvictionSchedule(budget=40, interval=8, window=8),
                              SamplingParams(max_new_tokens=160))
    assert all(len(p) + len(r.output_ids) > 3 * (40 + 8) for p, r in zip(prompts, results))  # wrapped
    assert {row: len(hidden) for row, hidden in captured.items()} == {
        row: len(r.output_ids) - 1 for row, r in enumerate(results)}


def test_on_policy_collection_over_several_budgets_runs_each_prompt_at_its_own(random_reasoner, tmp_path) -> None:
    from harness.workloads.prompt_file import PromptItem
    from zoo.dynts import DynTS
    from zoo.predictor import PredictorConfig
    from zoo.schedule import EvictionSchedule

    engine = TransformersBackend(str(random_reasoner), batch_size=2)
    ImportancePredictor(PredictorConfig(str(random_reasoner), 32, [8])).save(tmp_path / "pred")
    items = [PromptItem(p.id, p.prompt, p.answer) for p in (generate(i) for i in range(4))]
    tight, roomy = EvictionSchedule(budget=48, interval=8, window=16), EvictionSchedule(budget=72, interval=8,
                                                                                         window=16)

    def hidden_by_id(name: str, chosen: list[PromptItem], schedule) -> dict[str, torch.Tensor]:
        store = TraceStore(tmp_path / name)
        store.open_for({"model": str(random_reasoner), "hidden_size": 32})
        collect(engine, chosen, store, SamplingParams(80), policy=DynTS(predictor=str(tmp_path / "pred")),
                schedule=schedule)
        return {t.record.id: t.hidden for t in store.load(store.records())}

    spread = hidden_by_id("spread", items, [tight, roomy])
    alone = {**hidden_by_id("tight", items[0::2], tight), **hidden_by_id("roomy", items[1::2], roomy)}
    assert spread.keys() == alone.keys() == {i.id for i in items}
    for trace_id, hidden in spread.items():  # prompts 0, 2 at budget 48, prompts 1, 3 at budget 72
        torch.testing.assert_close(hidden, alone[trace_id], atol=0, rtol=0)
    tight_for_all = hidden_by_id("tight-all", items[1:2], tight)[items[1].id]
    assert tight_for_all.shape != spread[items[1].id].shape or not torch.equal(tight_for_all, spread[items[1].id])


def test_store_holds_thinking_hidden_states_and_labels(store) -> None:
    labels = load_labels(store, "attention")
    for trace in store.load(store.records()):
        r = trace.record
        assert trace.hidden.dtype == torch.float16 and trace.hidden.shape == (r.think_end - r.prompt_len, 32)
        assert labels[r.id].shape == (trace.hidden.shape[0],) and bool((labels[r.id] >= 0).all())
    assert load_labels(store, "gradient").keys() == labels.keys() == load_labels(store, "lookback").keys()


def test_predictor_trains_and_is_evaluated_against_every_baseline(random_reasoner, store, tmp_path) -> None:
    cfg = FitConfig(epochs=2, layer_sizes=[16, 8], val_fraction=0.3, correct_only=False, seed=3)
    report = fit(store, tmp_path / "pred", cfg)
    again = fit(store, tmp_path / "pred2", cfg)
    assert report["validation"] == again["validation"]  # deterministic per seed
    predictor = ImportancePredictor.load(tmp_path / "pred")
    assert predictor.config.base_model == str(random_reasoner)
    assert predictor.config.extra["training_data_sha256"] and predictor.config.label_method == "attention"
    engine = TransformersBackend(str(random_reasoner))
    result = evaluate(engine, store, predictor, "attention", correct_only=False)
    assert set(result) == {"dynts", "recency", "h2o", "snapkv", "rkv", "random"}
    for metrics in result.values():
        assert -1.0 <= metrics["kendall_tau"] <= 1.0 and 0.0 <= metrics["top20_recall@40"] <= 1.0
        assert metrics["critical_recall@20"] >= 0.0  # the generator's ground truth is available on task words


def test_analysis_reports_concentration_and_refeeding(random_reasoner, store) -> None:
    engine = TransformersBackend(str(random_reasoner))
    report = analyze(engine, store, "attention", [0.2, 0.5], limit=3)
    part = report["correct"] if report["correct"]["traces"] else report["incorrect"]
    assert 0 < part["tokens_for_80pct_attention"] <= part["tokens_for_90pct_attention"] <= 1
    assert set(part["refeed_same_answer"]) == {"top@0.2", "bottom@0.2", "random@0.2", "top@0.5", "bottom@0.5",
                                               "random@0.5"}


def test_ranking_helpers() -> None:
    labels = torch.tensor([0.0, 5.0, 1.0, 4.0, 0.5])
    assert ranking_metrics(labels, labels)["kendall_tau"] == pytest.approx(1.0)
    assert ranking_metrics(-labels, labels)["top20_recall@20"] == 0.0
    assert top_set(labels, 0.4).tolist() == [False, True, False, True, False]
    assert concentration(torch.tensor([8.0, 1.0, 1.0, 0.0]), 0.8) == 0.25
    assert transform_labels(labels, "rank").tolist() == [0.0, 1.0, 0.5, 0.75, 0.25]
    with pytest.raises(TraceStoreError, match="unknown label transform"):
        transform_labels(labels, "cube")
    # pooling: a token also gets its successor's label (prev), or the max of a 3-token neighbourhood (max3)
    assert pool_labels(labels, "prev").tolist() == [5.0, 5.0, 4.0, 4.0, 0.5]
    assert pool_labels(labels, "max3").tolist() == [5.0, 5.0, 5.0, 4.0, 4.0]
    assert pool_labels(labels, "none").tolist() == labels.tolist()
    with pytest.raises(TraceStoreError, match="unknown label pooling"):
        pool_labels(labels, "wide")


def test_fit_options_pool_and_loss_weights_are_recorded(store, tmp_path) -> None:
    cfg = FitConfig(epochs=1, layer_sizes=[8], val_fraction=0.3, correct_only=False, pool="prev", rank_weight=1.0,
                    mse_weight=0.0, label_method="later")
    report = fit(store, tmp_path / "pred", cfg)
    saved = ImportancePredictor.load(tmp_path / "pred").config
    assert saved.label_method == "later" and report["fit"]["pool"] == "prev" and report["fit"]["mse_weight"] == 0.0


def test_a_lifetime_head_records_its_target_and_reads_back_in_tokens(store, tmp_path) -> None:
    cfg = FitConfig(epochs=1, layer_sizes=[8], val_fraction=0.3, correct_only=False, pool="prev",
                    label_method="lifetime", transform="log1p", target="lifetime")
    report = fit(store, tmp_path / "life", cfg)
    written = json.loads((tmp_path / "life" / "predictor.json").read_text())
    assert (written["target"], written["label_transform"], report["fit"]["target"]) == ("lifetime", "log1p",
                                                                                        "lifetime")
    config = ImportancePredictor.load(tmp_path / "life").config
    assert config.target == "lifetime"
    assert torch.allclose(config.log_lifetime(torch.tensor([0.0, 2.5])),
                          torch.tensor([0.0, 2.5]))
    fit(store, tmp_path / "importance", FitConfig(epochs=1, layer_sizes=[8], val_fraction=0.3, correct_only=False))
    assert ImportancePredictor.load(tmp_path / "importance").config.target == "importance"
    with pytest.raises(TraceStoreError, match="--transform log1p"):
        fit(store, tmp_path / "bad", FitConfig(epochs=1, label_method="lifetime", transform="power",
                                               target="lifetime"))


def test_cli_trains_a_lifetime_head_for_lifetime_labels(store, tmp_path) -> None:
    common = [str(store.path), "--epochs", "1", "--layer-sizes", "8", "--include-incorrect", "--val-fraction", "0.3"]
    result = runner.invoke(app, ["train-predictor", *common, "--out", str(tmp_path / "p"), "--label-method",
                                 "lifetime"])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "p" / "predictor.json").read_text())
    assert (written["target"], written["label_transform"]) == ("lifetime", "log1p")
    bad = runner.invoke(app, ["train-predictor", *common, "--out", str(tmp_path / "q"), "--label-method", "copy",
                              "--target", "lifetime", "--transform", "power"])
    assert bad.exit_code == 2 and "--transform log1p" in " ".join(bad.output.split())
    bad = runner.invoke(app, ["train-predictor", *common, "--out", str(tmp_path / "q"), "--target", "age"])
    assert bad.exit_code == 2 and "target 'age' is unknown" in " ".join(bad.output.split())


def test_training_on_two_stores_trains_on_both_and_keeps_a_problem_on_one_side(store, tmp_path) -> None:
    import hashlib
    import shutil

    from harness.predictor_pipeline.labels import labels_path

    twin = TraceStore(tmp_path / "twin")
    shutil.copytree(store.path, twin.path)  # a second round of the same problems
    cfg = FitConfig(epochs=1, layer_sizes=[8], val_fraction=0.3, correct_only=False, seed=1)
    one = fit(store, tmp_path / "one", cfg)
    both = fit([store, twin], tmp_path / "both", cfg)
    assert both["traces"] == {"train": 2 * one["traces"]["train"], "validation": 2 * one["traces"]["validation"]}
    expected = hashlib.sha256((store.path / "index.jsonl").read_bytes() + labels_path(store, "attention").read_bytes())
    assert one["training_data_sha256"] == expected.hexdigest() != both["training_data_sha256"]
    meta = json.loads((twin.path / "meta.json").read_text())
    (twin.path / "meta.json").write_text(json.dumps({**meta, "model": "another-model"}))
    with pytest.raises(TraceStoreError, match="train on stores of one model"):
        fit([store, twin], tmp_path / "mixed", cfg)


def test_cli_pipeline_and_its_errors(random_reasoner, tmp_path) -> None:
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(generate(i).to_json()) + "\n" for i in range(6)))
    store_dir = tmp_path / "store"
    steps = [
        ["collect-traces", "--model", str(random_reasoner), "--prompts", str(problems), "--out", str(store_dir),
         "--forced", "--batch-size", "3"],
        ["label", str(store_dir), "--method", "attention"],
        ["train-predictor", str(store_dir), "--out", str(tmp_path / "pred"), "--epochs", "1", "--layer-sizes",
         "8,4", "--include-incorrect", "--val-fraction", "0.4"],
        ["eval-predictor", str(store_dir), "--predictor", str(tmp_path / "pred"), "--include-incorrect", "--json",
         str(tmp_path / "eval.json")],
    ]
    for args in steps:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert "dynts" in json.loads((tmp_path / "eval.json").read_text())["rankers"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt, "answer": p.answer}) + "\n"
                               for p in (generate(i) for i in range(2))))
    spread = runner.invoke(app, ["collect-traces", "--model", str(random_reasoner), "--prompts", str(prompts),
                                 "--out", str(tmp_path / "spread"), "--on-policy-budget", "56",
                                 "--on-policy-budget", "72", "--predictor", str(tmp_path / "pred"), "--window", "16",
                                 "--interval", "8", "--max-new-tokens", "64"])
    assert spread.exit_code == 0, spread.output
    spread_store = TraceStore(tmp_path / "spread")
    assert [s["budget"] for s in spread_store.meta["on_policy"]["schedules"]] == [56, 72]
    assert len(spread_store.records()) == 2
    bad = runner.invoke(app, ["label", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "is not a trace store" in " ".join(bad.output.split())
    bad = runner.invoke(app, ["train-predictor", str(store_dir), "--out", str(tmp_path / "p"), "--transform", "x"])
    assert bad.exit_code == 2 and "unknown label transform" in " ".join(bad.output.split())
    bad = runner.invoke(app, ["train-predictor", str(store_dir), "--out", str(tmp_path / "p"), "--pool", "x"])
    assert bad.exit_code == 2 and "unknown label pooling" in " ".join(bad.output.split())
    bad = runner.invoke(app, ["train-predictor", str(store_dir), "--out", str(tmp_path / "p"), "--rank-weight", "0",
                              "--mse-weight", "0"])
    assert bad.exit_code == 2 and "one > 0" in " ".join(bad.output.split())
    bad = runner.invoke(app, ["collect-traces", "--model", str(random_reasoner), "--prompts", str(problems),
                              "--out", str(tmp_path / "s2"), "--forced", "--on-policy-budget", "64",
                              "--predictor", str(tmp_path / "pred")])
    assert bad.exit_code == 2 and "drop --forced" in " ".join(bad.output.split())


@pytest.mark.slow
@pytest.mark.smollm2
def test_pipeline_runs_end_to_end_on_smollm2(tmp_path) -> None:
    engine = TransformersBackend("smollm2-135m", batch_size=2)
    store = TraceStore(tmp_path / "store")
    store.open_for({"model": "smollm2-135m", "hidden_size": engine.model.config.hidden_size})
    rows = [TraceRow(p.id, p.prompt, p.trace, p.answer)
            for p in (generate(i, split="train", knobs=None) for i in range(4))]
    collect(engine, rows, store, SamplingParams(600))
    report = label_store(engine, store, ["attention", "gradient"])
    assert report["labelled"] == 4 and report["spearman_between_methods"]["attention~gradient"] is not None
    extra = fit(store, tmp_path / "pred", FitConfig(epochs=1, layer_sizes=[32, 8], val_fraction=0.5,
                                                     correct_only=False))
    assert extra["traces"]["train"] + extra["traces"]["validation"] == 4
    result = evaluate(engine, store, ImportancePredictor.load(tmp_path / "pred"), "attention", correct_only=False)
    assert {"dynts", "h2o", "snapkv", "rkv"} <= set(result)


def test_far_copies_of_a_chunk_of_queries_are_those_rows_of_the_whole() -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 6, (150,), generator=g)  # a small vocabulary: many repeated bigrams
    whole = far_copies(tokens, 32)
    rows = torch.arange(40, 90)
    assert whole.sum() > 0
    torch.testing.assert_close(far_copies(tokens, 32, rows), whole[rows])
