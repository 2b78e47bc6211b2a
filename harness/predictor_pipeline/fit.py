"""Train the DynTS importance predictor on labelled traces (``dynts-bench train-predictor``).

The reference trains a bias-free MLP on the frozen model's final hidden states with a (weighted) MSE to the
rescaled labels, 15 epochs, lr 5e-4, cosine with 10% warm-up, weight decay 0.01. Eviction only needs the
*order* of tokens, so we add a pairwise ranking term (a logistic loss on score differences of token pairs of
the same trace, weight ``rank_weight``) and stop early on the held-out traces' Kendall tau.

A head's ``target`` says what its output means (``zoo.predictor.TARGETS``): an importance score, or -- trained
on ``lifetime`` labels -- how long a token stays needed, a regression in the label transform's space (``log1p``:
MSE on log-tokens, so that a 10-token error matters at 20 tokens and not at 400) that DynTS turns back into
tokens.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.predictor_pipeline.labels import labels_path, load_labels
from harness.predictor_pipeline.rankers import mean_metrics, ranking_metrics
from harness.predictor_pipeline.traces import TraceStore, TraceStoreError
from harness.runs.fingerprints import model_fingerprint
from zoo.base import PolicyError
from zoo.predictor import ImportancePredictor, PredictorConfig

TRANSFORMS = ("none", "power", "scale", "rank", "log1p")
POOLS = ("none", "prev", "max3")
PRESETS = {"paper": [8192, 2048]}  # the reference's head for 7-8B models (~50M parameters)


def transform_labels(labels: torch.Tensor, name: str) -> torch.Tensor:
    """``power``: (x^0.3 / 0.3) * 10 (the reference's Qwen setting); ``scale``: x * 1e4 (its Llama setting);
    ``rank``: the label's percentile within its trace; ``log1p``: log(1 + x), for lifetimes in tokens; ``none``."""
    if name == "none":
        return labels
    if name == "power":
        return labels.clamp(min=0).pow(0.3) / 0.3 * 10
    if name == "scale":
        return labels * 1e4
    if name == "rank":
        return labels.argsort().argsort().float() / max(1, labels.numel() - 1)
    if name == "log1p":
        return labels.clamp(min=0).log1p()
    raise TraceStoreError(f"unknown label transform {name!r}: choose from {', '.join(TRANSFORMS)}")


def pool_labels(labels: torch.Tensor, name: str) -> torch.Tensor:
    """Spread a label to its neighbours before training, as SnapKV pools attention over a kernel so that a kept
    token keeps its context: ``prev`` -- a token also gets its successor's label (the name before a value);
    ``max3`` -- the max over the token and both neighbours; ``none``. Both take maxima, which is also right for
    lifetimes: a name is needed for as long as the value after it."""
    if name == "none" or labels.numel() < 2:
        return labels
    if name == "prev":
        return torch.cat([torch.maximum(labels[:-1], labels[1:]), labels[-1:]])
    if name == "max3":
        return torch.nn.functional.max_pool1d(labels[None, None].float(), 3, 1, 1)[0, 0].to(labels.dtype)
    raise TraceStoreError(f"unknown label pooling {name!r}: choose from {', '.join(POOLS)}")


@dataclass
class FitConfig:
    label_method: str = "attention"
    transform: str = "power"
    pool: str = "none"
    layer_sizes: list[int] | None = None  # None: hidden -> 2h -> h/2 -> 1
    epochs: int = 15
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    rank_weight: float = 1.0
    mse_weight: float = 1.0
    pairs_per_trace: int = 256
    batch_traces: int = 8
    val_fraction: float = 0.1
    patience: int = 4
    seed: int = 0
    correct_only: bool = True
    #: DynTS ranking options stored with the head (``pool_next``, ``recency``: zoo.dynts); empty = the paper's
    selection: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: what the head's output means (zoo.predictor.TARGETS): an importance score, or a lifetime in tokens
    target: str = "importance"


def is_validation(trace_id: str, fraction: float) -> bool:
    return int(hashlib.sha256(trace_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def _pair_loss(scores: torch.Tensor, labels: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    n = labels.numel()
    i = torch.randint(n, (count,), generator=generator)
    j = torch.randint(n, (count,), generator=generator)
    sign = torch.sign(labels[i] - labels[j])
    keep = sign != 0
    if not keep.any():
        return scores.sum() * 0.0
    return nn.functional.softplus(-sign[keep] * (scores[i] - scores[j])[keep]).mean()


def data_hash(store: TraceStore | Sequence[TraceStore], method: str) -> str:
    """sha256 of the trace indexes and labels trained on (one store: the same digest as before stores could be
    combined)."""
    stores = [store] if isinstance(store, TraceStore) else list(store)
    digest = hashlib.sha256()
    for one in stores:
        digest.update((one.path / "index.jsonl").read_bytes())
        digest.update(labels_path(one, method).read_bytes())
    return digest.hexdigest()


def _training_data(stores: list[TraceStore], cfg: FitConfig) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(trace id, hidden states, transformed labels) of every usable trace of every store."""
    first = stores[0].meta
    data = []
    for store in stores:
        meta = store.meta
        if (meta["model"], meta["hidden_size"]) != (first["model"], first["hidden_size"]):
            raise TraceStoreError(f"{store.path} holds traces of {meta['model']} ({meta['hidden_size']} wide), "
                                  f"{stores[0].path} of {first['model']} ({first['hidden_size']}): train on "
                                  "stores of one model")
        labels = load_labels(store, cfg.label_method)
        records = [r for r in store.records(True if cfg.correct_only else None) if r.id in labels]
        data += [(t.record.id, t.hidden.float(),
                  transform_labels(pool_labels(labels[t.record.id], cfg.pool), cfg.transform))
                 for t in store.load(records) if t.hidden.shape[0] > 1]
    return data


def fit(store: TraceStore | Sequence[TraceStore], out: Path, cfg: FitConfig,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train, keep the epoch with the best held-out Kendall tau, and save the predictor to ``out``.

    Several stores (e.g. on-policy rounds, aggregated as DAgger does) are trained on together; a problem is held
    out by its id, so the same problem collected in two rounds is on the same side of the split in both.
    """
    transform_labels(torch.zeros(1), cfg.transform)  # an unknown transform fails before any loading
    pool_labels(torch.zeros(2), cfg.pool)
    check_target(cfg)
    stores = [store] if isinstance(store, TraceStore) else list(store)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    meta = stores[0].meta
    data = _training_data(stores, cfg)
    train, val = _split(data, cfg.val_fraction, stores)
    hidden = meta["hidden_size"]
    sizes = cfg.layer_sizes or PredictorConfig.default_sizes(hidden)
    pconfig = PredictorConfig(meta["model"], hidden, list(sizes), cfg.label_method, cfg.transform,
                              selection=dict(cfg.selection), target=cfg.target)
    model = ImportancePredictor(pconfig)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = _warmup_cosine(optimizer, math.ceil(len(train) / cfg.batch_traces) * cfg.epochs, cfg.warmup)
    best: tuple[float, dict[str, torch.Tensor], int, dict[str, float]] | None = None
    history = []
    for epoch in range(cfg.epochs):
        loss = _train_epoch(model, train, optimizer, schedule, cfg, generator)
        metrics = _held_out_metrics(model, val)
        row = {"epoch": epoch + 1, "train_loss": loss, **metrics}
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch + 1, row)
        if best is None or metrics["kendall_tau"] > best[0]:
            best = (metrics["kendall_tau"], {k: v.clone() for k, v in model.state_dict().items()}, epoch + 1, metrics)
        elif epoch + 1 - best[2] >= cfg.patience:
            break
    assert best is not None
    model.load_state_dict(best[1])
    model.config.extra = {
        "base_fingerprint": _fingerprint(meta["model"]),  # binds the head to these weights (harness.runs.runplan)
        "training_data_sha256": data_hash(stores, cfg.label_method),
        "traces": {"train": len(train), "validation": len(val)},
        "best_epoch": best[2],
        "validation": best[3],
        "fit": {k: v for k, v in asdict(cfg).items() if k not in ("extra", "selection")},
        "history": history,
        **cfg.extra,
    }
    model.save(out)
    return model.config.extra


Example = tuple[str, torch.Tensor, torch.Tensor]  # (trace id, hidden states, transformed labels)


def check_target(cfg: FitConfig) -> None:
    """Refuse a target the head could not be read back with (an unknown one, a lifetime under a transform that
    cannot be undone), before any training."""
    probe = PredictorConfig("", 1, [], cfg.label_method, cfg.transform, target=cfg.target)
    try:
        probe.check_target()
    except PolicyError as exc:
        raise TraceStoreError(str(exc)) from None


def _split(data: list[Example], val_fraction: float, stores: list[TraceStore]) -> tuple[list[Example],
                                                                                      list[Example]]:
    """(training, validation) traces, by problem id; refused when either part would be empty."""
    val = [d for d in data if is_validation(d[0], val_fraction)]
    train = [d for d in data if not is_validation(d[0], val_fraction)]
    if not train or not val:
        where = ", ".join(str(s.path) for s in stores)
        raise TraceStoreError(f"{where} has {len(data)} usable labelled traces: need enough for a "
                              f"training and a validation part (collect more, or change --val-fraction)")
    return train, val


def _warmup_cosine(optimizer: torch.optim.Optimizer, total: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first ``warmup`` share of the ``total`` steps, then a cosine decay to zero."""
    warm = max(1, int(warmup * total))

    def lr_factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def _train_epoch(model: ImportancePredictor, train: list[Example], optimizer: torch.optim.Optimizer,
                 schedule: torch.optim.lr_scheduler.LambdaLR, cfg: FitConfig, generator: torch.Generator) -> float:
    """One pass over the training traces in a fresh order, ``cfg.batch_traces`` per step; the mean loss."""
    model.train()
    order = torch.randperm(len(train), generator=generator).tolist()
    losses = []
    for start in range(0, len(order), cfg.batch_traces):
        batch = [train[i] for i in order[start : start + cfg.batch_traces]]
        mse, pairs = [], []
        for _, h, y in batch:
            s = model(h)
            mse.append(((s - y) ** 2).mean())
            pairs.append(_pair_loss(s, y, cfg.pairs_per_trace, generator))
        loss = cfg.mse_weight * torch.stack(mse).mean() + cfg.rank_weight * torch.stack(pairs).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    return sum(losses) / len(losses)


def _held_out_metrics(model: ImportancePredictor, val: list[Example]) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        return mean_metrics([ranking_metrics(model(h), y) for _, h, y in val])


def _fingerprint(model: str) -> str | None:
    """The content fingerprint of the model the traces came from (None when it cannot be resolved here)."""
    try:
        return model_fingerprint(model)
    except Exception:  # a hub id without network, a moved directory: the name check still applies
        return None
