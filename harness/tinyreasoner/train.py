"""Train the tiny reasoning model from scratch on generated traces (``dynts-bench make-tiny-reasoner``).

What made it learn on 2 CPU cores (see the issue's calibration notes): one token per value (copying is one
induction step), untied input/output embeddings, a predictable order of steps, loss only on what the model
writes (the trace and answer, not the random prompt values), and a curriculum from short problems with
little filler to the full distribution, and, from 40% of training on, *context drop-out* (``dropout.py``):
attention masks with the gaps that eviction leaves, without which even the oracle policy broke the model.
The log reports loss per token type, because the overall loss hides
the part that matters: values *retrieved* from far back versus sums computed locally versus format.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from harness.tinyreasoner.dropout import RECIPE, batch_mask, parse_views
from harness.tinyreasoner.problems import DIGITS, Knobs, is_result_name
from harness.tinyreasoner.tasks import EmbeddedTask, embedded_task
from harness.tinyreasoner.vocab import EOS, PAD, Vocabulary, prompt_tokens
from zoo.errors import UserError

IGNORE = -100
TASK_SOURCES = {"sum": "`harness/tinyreasoner/problems.py`", "program": "`harness/tinyreasoner/program.py`"}
# token types of the per-type loss
RETRIEVED, COMPUTED, FORMAT = 0, 1, 2
TYPE_NAMES = ("retrieved", "computed", "format")


@functools.cache  # token_types asks for every problem of every batch
def _digit_ids(vocabulary: Vocabulary) -> frozenset[int]:
    return frozenset(vocabulary.token_id[d] for d in DIGITS)


@functools.cache
def _name_ids(vocabulary: Vocabulary) -> frozenset[int]:
    """Ids of the names a value follows: one-letter variables and registers, ``r1``.. results."""
    return frozenset(i for i, t in enumerate(vocabulary.tokens) if len(t) == 1 and t.isalpha() or is_result_name(t))


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 8000
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 300
    weight_decay: float = 0.01
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 512
    eval_every: int = 1000
    eval_problems: int = 64
    threads: int = 2
    dropout_from: float = 0.4  # share of training after which context drop-out masks are used
    dropout_views: str = RECIPE  # views and weights of context drop-out (``dropout.parse_views``)
    # curriculum extension: start from a trained model's weights (its directory) and train only the last stage,
    # widened to ``extra_vars`` more variables than the training defaults, context drop-out on throughout
    init_from: str = ""
    extra_vars: int = 0
    task: str = "sum"  # the embedded task (``tasks.TASKS``): sum (the shipped tiny reasoner's) or program


def model_config(cfg: TrainConfig):
    from transformers import LlamaConfig

    vocabulary = embedded_task(cfg.task).vocabulary
    token_id = vocabulary.token_id
    return LlamaConfig(
        vocab_size=len(vocabulary.tokens), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=token_id[EOS], eos_token_id=token_id[EOS], pad_token_id=token_id[PAD],
    )


def final_stage(cfg: TrainConfig):
    """The curriculum's last stage: the task's training defaults (the sum task: with ``cfg.extra_vars`` more
    variables at most)."""
    if cfg.task == "sum":
        return Knobs(max_vars=Knobs().max_vars + cfg.extra_vars)
    if cfg.extra_vars:
        raise UserError(f"--extra-vars widens the sum task only; the {cfg.task} task has no variables to add")
    return embedded_task(cfg.task).knobs()


def dropout_start(cfg: TrainConfig) -> float:
    """The step from which context drop-out masks are used: an extension's base already reached that point."""
    return 0.0 if cfg.init_from else cfg.dropout_from * cfg.steps


def curriculum(progress: float, cfg: TrainConfig):
    """An arithmetic warm-up on short problems with random filler (20%), then short problems with the
    deterministic filler, then the full distribution from 35% of training on. An extension (``cfg.init_from``)
    starts from a model that went through all of it, so it trains only the (widened) last stage."""
    if cfg.init_from:
        return final_stage(cfg)
    task = embedded_task(cfg.task)
    if progress < 0.2:
        return task.warmup_stage()
    if progress < 0.35:
        return task.middle_stage()
    return final_stage(cfg)


def token_types(ids: list[int], vocabulary: Vocabulary) -> list[int]:
    """Type of each token as a prediction target: a value after a name is retrieved, after '=' computed."""
    digits, names = _digit_ids(vocabulary), _name_ids(vocabulary)
    types = []
    for i, token in enumerate(ids):
        previous = ids[i - 1] if i else -1
        if token in digits and previous in names:
            types.append(RETRIEVED)
        elif token in digits:
            types.append(COMPUTED)
        else:
            types.append(FORMAT)
    return types


def make_batch(rng: random.Random, size: int, knobs, seed: int,
               task: EmbeddedTask | None = None) -> tuple[torch.Tensor, ...]:
    """Right-padded inputs, labels (prompt and padding ignored) and per-target token types."""
    task = task or embedded_task("sum")
    encode = task.vocabulary.encode
    rows, labels, types = [], [], []
    for _ in range(size):
        problem = task.generate(rng.getrandbits(48), seed, "train", knobs)
        prompt = encode(prompt_tokens(problem.prompt))
        completion = encode([*problem.completion, EOS])
        ids = prompt + completion
        rows.append(ids)
        labels.append([IGNORE] * len(prompt) + completion)
        types.append([FORMAT] * len(prompt) + token_types(ids, task.vocabulary)[len(prompt):])
    width = max(map(len, rows))
    pad = task.vocabulary.token_id[PAD]
    x = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    y = torch.tensor([r + [IGNORE] * (width - len(r)) for r in labels])
    t = torch.tensor([r + [FORMAT] * (width - len(r)) for r in types])
    return x, y, t


def dropout_mask(x: torch.Tensor, rng: random.Random, views: str = RECIPE,
                 task: EmbeddedTask | None = None) -> torch.Tensor:
    """Context drop-out for a right-padded batch (see ``dropout.py``): the contexts eviction leaves."""
    task = task or embedded_task("sum")
    tokens, pad = task.vocabulary.tokens, task.vocabulary.token_id[PAD]
    names, weights = parse_views(views)
    rows, prompt_lengths = [], []
    for ids in x.tolist():
        words = [tokens[i] for i in ids if i != pad]
        rows.append(words)
        prompt_lengths.append(words.index("<think>") + 1)
    return batch_mask(rows, prompt_lengths, x.shape[1], rng, weights=weights, views=names, task=task)[0]


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def greedy_accuracy(model: nn.Module, count: int, seed: int, max_new_tokens: int = 700,
                    split: str = "heldout", batch_size: int = 32, task: EmbeddedTask | None = None) -> dict[str, float]:
    """Exact-match accuracy of free greedy generation on held-out problems (full cache, nothing forced)."""
    task = task or embedded_task("sum")
    vocabulary = task.vocabulary
    model.eval()
    correct, lengths = 0, []
    items = list(task.problems(count, seed, split))
    for start in range(0, count, batch_size):
        chunk = items[start : start + batch_size]
        prompts = [vocabulary.encode(prompt_tokens(p.prompt)) for p in chunk]
        width = max(map(len, prompts))
        pad = vocabulary.token_id[PAD]
        x = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = (x != pad).long()
        out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=vocabulary.token_id[EOS])
        for problem, row in zip(chunk, out[:, width:].tolist()):
            words = [vocabulary.tokens[i] for i in row]
            if EOS in words:
                words = words[: words.index(EOS)]
            got = words[-1] if len(words) >= 2 and words[-2] == "answer" else None
            correct += got == problem.answer
            lengths.append(words.index("</think>") if "</think>" in words else len(words))
    model.train()
    lengths.sort()
    return {"exact_match": correct / count, "median_thinking_tokens": float(lengths[len(lengths) // 2])}


def train(out: Path, cfg: TrainConfig, log: Callable[[str], None] = print,
          on_step: Callable[[int], None] | None = None) -> dict:
    """Train from scratch (or resume ``out/checkpoint.pt``); writes the model directory and returns metrics."""
    parse_views(cfg.dropout_views)  # fail before training, not at 40% of it
    final_stage(cfg)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    model = _initial_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed)
    checkpoint = out / "checkpoint.pt"
    start, history = _resume(checkpoint, model, optimizer, rng, log)
    model.train()
    began = time.time()
    window: list[list[float]] = [[], [], []]
    tokens_seen = 0
    for step in range(start, cfg.steps):
        knobs = curriculum(step / cfg.steps, cfg)
        loss, losses, valid, target_types = _train_step(model, optimizer, rng, step, knobs, cfg)
        tokens_seen += int(valid.sum())
        for kind in range(3):
            chosen = valid & (target_types == kind)
            if chosen.any():
                window[kind].append(float(losses[chosen].mean().detach()))
        if on_step is not None:
            on_step(step + 1)
        if (step + 1) % 100 == 0:
            means = {TYPE_NAMES[k]: round(sum(v) / len(v), 4) for k, v in enumerate(window) if v}
            row = {"step": step + 1, "loss": round(float(loss.detach()), 4), **means, "lr": round(lr_at(step, cfg), 6),
                   "elapsed_s": round(time.time() - began, 1), **embedded_task(cfg.task).stage_size(knobs)}
            history.append(row)
            log(json.dumps(row))
            window = [[], [], []]
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            quick = greedy_accuracy(model, cfg.eval_problems, seed=cfg.seed, split="validation",
                                    task=embedded_task(cfg.task))
            history.append({"step": step + 1, **quick})
            log(json.dumps({"step": step + 1, **quick}))
            _save_checkpoint(checkpoint, model, optimizer, rng, step + 1, history)
    _save_model(out, model, embedded_task(cfg.task).vocabulary)
    return {"history": history, "train_seconds": round(time.time() - began, 1), "train_tokens": tokens_seen,
            "parameters": sum(p.numel() for p in model.parameters()), "config": asdict(cfg)}


def _initial_model(cfg: TrainConfig) -> nn.Module:
    """A fresh model of ``cfg``'s shape, or the trained one ``cfg.init_from`` names (refused if shaped otherwise)."""
    from transformers import LlamaForCausalLM

    if not cfg.init_from:
        return LlamaForCausalLM(model_config(cfg))
    model = LlamaForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
    shape = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    wanted = model_config(cfg)
    if any(getattr(model.config, k) != getattr(wanted, k) for k in shape):
        raise UserError(f"{cfg.init_from} is not a model of this shape (hidden {cfg.hidden_size}, "
                        f"{cfg.layers} layers): pass the shape it was trained with")
    return model


def _resume(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rng: random.Random,
            log: Callable[[str], None]) -> tuple[int, list[dict]]:
    """(first step, history so far): a saved checkpoint's state restored into the model, optimizer and RNGs."""
    if not checkpoint.is_file():
        return 0, []
    state = torch.load(checkpoint, weights_only=True)  # tensors and plain data only: no code runs
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng.setstate(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    log(f"resumed at step {state['step']}")
    return state["step"], state["history"]


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, rng: random.Random, step: int, knobs: Knobs,
                cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step on a fresh batch (context drop-out after its start); (loss, per-token losses, which
    targets count, target token types)."""
    task = embedded_task(cfg.task)
    x, y, types = make_batch(rng, cfg.batch_size, knobs, cfg.seed, task)
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, cfg)
    mask = None
    if step >= dropout_start(cfg):
        mask = dropout_mask(x, rng, cfg.dropout_views, task)
    logits = model(input_ids=x, attention_mask=mask).logits[:, :-1]
    target, target_types = y[:, 1:], types[:, 1:]
    losses = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view_as(target)
    valid = target != IGNORE
    loss = losses[valid].mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss, losses, valid, target_types


def _save_checkpoint(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rng: random.Random,
                     step: int, history: list[dict]) -> None:
    tmp = checkpoint.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(), "step": step, "history": history}, tmp)
    tmp.replace(checkpoint)


def _save_model(out: Path, model: nn.Module, vocabulary: Vocabulary) -> None:
    """Weights, tokenizer and a generation config that stops at the task's end token."""
    model.save_pretrained(out)
    vocabulary.save_tokenizer(out)
    generation = model.generation_config
    generation.eos_token_id, generation.pad_token_id = vocabulary.token_id[EOS], vocabulary.token_id[PAD]
    generation.save_pretrained(out)


def write_card(out: Path, cfg: TrainConfig, trained: dict, heldout: dict, facts: dict) -> None:
    """``README.md`` (model card) and ``training.json`` next to the weights."""
    knobs = asdict(final_stage(cfg))
    record = {"train": {k: v for k, v in trained.items() if k != "history"}, "heldout": heldout,
              "task": facts, "knobs": knobs}
    (out / "training.json").write_text(json.dumps({**record, "history": trained["history"]}, indent=1) + "\n")
    control = cfg.dropout_views != RECIPE
    views = ("per problem a full, oracle-like or randomly gapped attention mask, so the model reads what an "
             "eviction policy kept") if not control else (
             f"views `{cfg.dropout_views}` (no oracle-like view; `random-any` gaps may hide result statements)")
    title = "tiny-reasoner-control" if control else "tiny-reasoner"
    if cfg.task != "sum":
        title = f"{title}-{cfg.task}"
    when = "throughout" if cfg.init_from else f"from {cfg.dropout_from:.0%} of training on"
    if cfg.init_from:
        title = f"{title}-extended"
        views += (f"; a curriculum extension of `{cfg.init_from}` (its weights are the start): only the last stage, "
                  f"widened to {cfg.extra_vars} more variables; the steps and minutes "
                  "below are the extension's alone")
    lines = [
        f"# {title}",
        "",
        f"A Llama-architecture model trained by `dynts-bench make-tiny-reasoner --task {cfg.task}` on the "
        f"embedded task `{cfg.task}` ({TASK_SOURCES[cfg.task]}): {embedded_task(cfg.task).summary}. It thinks in a "
        "`<think> ... </think>` trace; filler lines between the lines that matter are never needed again.",
        "",
        f"- parameters: {trained['parameters']:,}; layers {cfg.layers}, width {cfg.hidden_size}, heads {cfg.heads}",
        f"- seed {cfg.seed}; {cfg.steps} steps of {cfg.batch_size} problems; lr {cfg.lr} (cosine, warm-up "
        f"{cfg.warmup}); {trained['train_tokens']:,} trained tokens in {trained['train_seconds'] / 60:.1f} min",
        f"- task knobs (final stage of the curriculum): {json.dumps(knobs)}",
        f"- context drop-out (`dropout.py`) {when}: {views}",
        f"- held-out ({heldout['problems']} problems, split `heldout`, never trained on), greedy, full cache: "
        f"exact match {heldout['exact_match']:.1%}, median thinking {heldout['median_thinking_tokens']:.0f} tokens",
        f"- reference traces: median {facts['median_thinking_tokens']:.0f} thinking tokens; statements a later "
        f"line reads (the long-range critical tokens) are {facts['critical_fraction']:.1%} of them, work lines "
        f"{facts['step_line_fraction']:.1%}",
        "",
        "The loss per step (overall, and per token type: retrieved values, computed sums, format) is in",
        "`training.json`.",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def make_tiny_reasoner(out: Path, cfg: TrainConfig, heldout_problems: int = 500,
                       log: Callable[[str], None] = print, on_step: Callable[[int], None] | None = None) -> dict:
    trained = train(out, cfg, log, on_step)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(out)
    task = embedded_task(cfg.task)
    heldout = {"problems": heldout_problems,
               **greedy_accuracy(model, heldout_problems, seed=0, split="heldout", task=task)}
    facts = task.task_facts(list(task.problems(heldout_problems, seed=0, split="heldout")))
    write_card(out, cfg, trained, heldout, facts)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return {"heldout": heldout, "task": facts, "train_seconds": trained["train_seconds"]}
