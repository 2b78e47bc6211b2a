#!/usr/bin/env bash
# The DynTS predictor pipeline end to end on a tiny reasoner: reproduces the shipped predictor bit for bit
# (harness/tinyreasoner/predictor/, or control-predictor/ with MODEL=tiny-reasoner-control) and, beside it, the
# paper's recipe on the same traces. About 5 minutes on 2 CPU cores (collection ~2 min, labels and each
# training well under a minute; the validation curve ~2 min). Training runs on one thread: the weights depend on
# the thread count (floating-point sums), and the shipped heads were trained on one.
#
#   paper recipe:   full-cache traces -> answer-attention labels (the paper's) -> MSE + pairwise ranking
#   shipped recipe: the same traces -> copy labels (`dynts-bench label --method copy`: the far source each later
#                   token copied its next token from, templates and restated values excluded), spread to the
#                   preceding token (--pool prev: a result's name gets its value's label) -> MSE + pairwise
#                   ranking, with the DynTS ranking options chosen on the validation split stored in the head:
#                   tiny-reasoner --pool-next 1 --recency 2, tiny-reasoner-control --recency 0.5 (SELECTION).
#                   "copy-plain" is the same head with the paper's ranking (no options), for the table.
# Usage: [MODEL=tiny-reasoner-control] [SELECTION="--recency 0.5"] benchmarks/predictor_pipeline_tiny.sh [WORKDIR]
set -euo pipefail
W=${1:-/tmp/dynts-predictor-bench}
M=${MODEL:-tiny-reasoner}
if [ "$M" = tiny-reasoner-control ]; then DEFAULT_SELECTION="--recency 0.5"; else DEFAULT_SELECTION="--pool-next 1 --recency 2"; fi
read -r -a SEL <<< "${SELECTION:-$DEFAULT_SELECTION}"
export OMP_NUM_THREADS=1
rm -rf "$W"; mkdir -p "$W"
dynts-bench make-task --split train --count 600 --out "$W/train.jsonl"
dynts-bench collect-traces --model "$M" --prompts "$W/train.jsonl" --out "$W/traces-train" --batch-size 50
dynts-bench label "$W/traces-train" --method attention --method copy
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-paper" --label-method attention --seed 0
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-copy-plain" --label-method copy --pool prev --seed 0
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-shipped" --label-method copy --pool prev --seed 0 \
    "${SEL[@]}"
# ranking quality on held-out full-cache traces, each head against its own labels
dynts-bench collect-traces --model "$M" --out "$W/traces-heldout" --limit 150 --batch-size 50
dynts-bench label "$W/traces-heldout" --method attention --method copy
dynts-bench eval-predictor "$W/traces-heldout" --predictor "$W/pred-paper" --label-method attention \
    --json "$W/eval-paper.json"
dynts-bench eval-predictor "$W/traces-heldout" --predictor "$W/pred-shipped" --label-method copy \
    --json "$W/eval-shipped.json"
# what matters: accuracy against the budget (validation split, not the held-out set)
dynts-bench make-task --split validation --seed 7 --count 200 --out "$W/validation.jsonl"
OMP_NUM_THREADS=2 python "$(dirname "$0")/dynts_budget_curve.py" --model "$M" --prompts "$W/validation.jsonl" \
    --predictor paper="$W/pred-paper" --predictor copy-plain="$W/pred-copy-plain" \
    --predictor shipped="$W/pred-shipped" --json "$W/budget-curve.json" --markdown "$W/budget-curve.md"
sha256sum "$W/pred-shipped/model.safetensors"
