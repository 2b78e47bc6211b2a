"""What a DynTS predictor scores high, by the tiny task's token roles, beside what its labels asked for.

    OMP_NUM_THREADS=2 python -m benchmarks.predictor_roles STORE --label-method attention --pool prev \
        --predictor shipped=harness/tinyreasoner/predictor [--predictor NAME=DIR ...] [--limit 200] [--probe]

STORE is a trace store of a tiny reasoner (``dynts-bench collect-traces``) labelled with ``--label-method``
(``dynts-bench label``). For every thinking token the table takes its percentile within its trace -- of the raw
label, of the label after ``--pool``, and of each predictor's score -- and averages it per role: the result
statements (name and value, split by who reads them: a later step, or only the answer) and the filler and step
lines around them. A role whose score percentile sits far below its label percentile is one the head did not
learn. ``--probe`` adds the question behind that: can a head of the predictor's own shape tell a statement's name
from every other token by its final hidden state alone? (Trained on the first three quarters of the traces as a
classifier, scored on the rest.)
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch

from backends.hf.facts import model_directory
from harness.predictor_pipeline.eviction import fine_roles, statements
from harness.predictor_pipeline.fit import pool_labels, transform_labels
from harness.predictor_pipeline.labels import load_labels
from harness.predictor_pipeline.traces import TraceStore, TraceStoreError
from harness.tinyreasoner.problems import token_roles
from zoo.predictor import ImportancePredictor, PredictorConfig

NAME = "statement-name"
TOP = "statements in the top k"  # the table's last row (its count: traces)


def percentile(x: torch.Tensor) -> torch.Tensor:
    """Each entry's rank within ``x``, scaled to 0..1 (the ``rank`` label transform)."""
    return transform_labels(x.float(), "rank")


def trace_roles(words: list[str]) -> list[str]:
    """The eviction analysis' roles of a trace's thinking tokens; statements split by their first reader."""
    roles = token_roles(words)
    step_read = {s.name_pos for s in statements(words, roles) if s.read_pos is not None}
    step_read |= {p + 1 for p in step_read}  # the value after each such name
    return [f"{role}/{'step' if i in step_read else 'answer'}-read" if role.startswith("statement") else role
            for i, role in enumerate(fine_roles(words, roles, set()))]


def role_table(store: TraceStore, method: str, pool: str, predictors: dict[str, ImportancePredictor],
               limit: int, tokenizer) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """{role: {column: mean percentile}} and the token count per role, over the first ``limit`` labelled traces."""
    labels = load_labels(store, method)
    records = [r for r in store.records() if r.id in labels][:limit]
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, int] = defaultdict(int)
    for trace in store.load(records):
        words = tokenizer.convert_ids_to_tokens(trace.tokens.tolist())[trace.record.thinking]
        roles = trace_roles(words)
        label = labels[trace.record.id]
        columns = {"label": percentile(label), f"label, pool {pool}": percentile(pool_labels(label, pool))}
        with torch.no_grad():
            for name, head in predictors.items():
                columns[name] = percentile(head(trace.hidden.float()).flatten())
        n = min(len(roles), label.numel(), trace.hidden.shape[0])
        for i in range(n):
            counts[roles[i]] += 1
            for column, values in columns.items():
                sums[roles[i]][column] += float(values[i])
        statement = torch.tensor([role.startswith("statement") for role in roles[:n]])
        k = int(statement.sum())
        if k:
            counts[TOP] += 1
            for column, values in columns.items():
                sums[TOP][column] += float(statement[values[:n].topk(k).indices].float().mean())
    return {role: {c: s / counts[role] for c, s in row.items()} for role, row in sums.items()}, dict(counts)


def name_probe(store: TraceStore, limit: int, tokenizer, layer_sizes: list[int], steps: int = 300,
               seed: int = 0) -> dict[str, float]:
    """A head of the predictor's shape trained to flag statement names (class-weighted logistic loss, full batch,
    Adam) on the first 3/4 of the traces; recall, precision and the share of other tokens it leaves out on the
    rest."""
    hidden, target, group = [], [], []
    for k, trace in enumerate(store.load(store.records()[:limit])):
        words = tokenizer.convert_ids_to_tokens(trace.tokens.tolist())[trace.record.thinking]
        roles = fine_roles(words, token_roles(words), set())
        n = min(len(roles), trace.hidden.shape[0])
        hidden.append(trace.hidden[:n].float())
        target += [role == NAME for role in roles[:n]]
        group += [k] * n
    x, y, g = torch.cat(hidden), torch.tensor(target, dtype=torch.float32), torch.tensor(group)
    train = g < max(1, int(0.75 * (int(g.max()) + 1)))
    if not bool(y[train].any()) or not bool(y[~train].any()):
        raise SystemExit("too few statement names to probe: raise --limit")
    torch.manual_seed(seed)
    head = ImportancePredictor(PredictorConfig("probe", x.shape[1], layer_sizes)).mlp[:-1]  # logits, no Softplus
    optimiser = torch.optim.Adam(head.parameters(), 1e-3)
    weight = (1 - y[train].mean()) / y[train].mean()
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x[train]).flatten(), y[train],
                                                                    pos_weight=weight)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        flagged = head(x[~train]).flatten() > 0
    names = y[~train].bool()
    return {"recall": float((flagged & names).sum() / names.sum()),
            "precision": float((flagged & names).sum() / flagged.sum().clamp(min=1)),
            "others left out": float((~flagged & ~names).sum() / (~names).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--label-method", default="attention")
    parser.add_argument("--pool", default="prev")
    parser.add_argument("--predictor", action="append", default=[], help="NAME=DIR; repeatable")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    store = TraceStore(args.store)
    tokenizer = AutoTokenizer.from_pretrained(model_directory(store.meta["model"])[0])
    predictors = {}
    for spec in args.predictor:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--predictor {spec!r}: write NAME=DIR")
        predictors[name] = ImportancePredictor.load(path).eval()
    table, counts = role_table(store, args.label_method, args.pool, predictors, args.limit, tokenizer)
    columns = list(next(iter(table.values())))
    print(f"Mean within-trace percentile by role, {args.limit} traces of {args.store} ({args.label_method} labels)\n")
    print("| role | tokens | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for role in sorted(table, key=lambda r: (r == TOP, r)):
        print(f"| {role} | {counts[role]} | " + " | ".join(f"{table[role][c]:.3f}" for c in columns) + " |")
    if args.probe:
        hidden = store.meta["hidden_size"]
        found = name_probe(store, args.limit, tokenizer, PredictorConfig.default_sizes(hidden))
        print("\nProbe, a head of the default shape flagging statement names by their hidden state alone: "
              + ", ".join(f"{k} {v:.3f}" for k, v in found.items()))


if __name__ == "__main__":
    try:
        main()
    except TraceStoreError as error:  # a store without the labels asked for, or not a store: one line
        raise SystemExit(f"error: {error}") from None
