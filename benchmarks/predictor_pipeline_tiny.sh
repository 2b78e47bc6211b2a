#!/usr/bin/env bash
# The DynTS predictor pipeline end to end on a tiny reasoner: reproduces the shipped predictor's weights bit for bit
# (harness/tinyreasoner/predictor/, or control-predictor/ with MODEL=tiny-reasoner-control) and, beside it, the
# paper's recipe on the same traces. About 6 minutes on 2 CPU cores (collection ~2 min, labels and each
# training well under a minute, the ranking options' selection ~1 min, the validation curve ~2 min). Training runs on one thread: the weights depend on
# the thread count (floating-point sums), and the shipped heads were trained on one.
#
#   paper recipe:   full-cache traces -> answer-attention labels (the paper's) -> MSE + pairwise ranking
#   shipped recipe: the same traces -> copy labels (`dynts-bench label --method copy`: the far source each later
#                   token copied its next token from, templates and restated values excluded), spread to the
#                   preceding token (--pool prev: a result's name gets its value's label) -> MSE + pairwise
#                   ranking -> the DynTS ranking options (pool_next, recency) chosen on the validation split by
#                   `dynts-bench select-ranking --write` (mean accuracy at budgets 86 and 128 over the grid
#                   pool_next 0,1 x recency 0,0.5,1,2; report in WORKDIR/select-ranking.json) and stored in the head.
#                   "copy-plain" is the same head with the paper's ranking (no options), for the table.
# The weights do not depend on the ranking options. SELECTION="--pool-next 1 --recency 2" (tiny-reasoner) or
# SELECTION="--recency 0.5" (tiny-reasoner-control) stores those options with train-predictor instead of running
# select-ranking: the options the shipped heads were released with (chosen by hand from a validation budget curve
# before select-ranking existed), as train-predictor recorded them then.
# Usage: [MODEL=tiny-reasoner-control] [SELECTION="--recency 0.5"] benchmarks/predictor_pipeline_tiny.sh [WORKDIR]
set -euo pipefail
W=${1:-/tmp/dynts-predictor-bench}
M=${MODEL:-tiny-reasoner}
export OMP_NUM_THREADS=1
rm -rf "$W"; mkdir -p "$W"
dynts-bench make-task --split train --count 600 --out "$W/train.jsonl"
dynts-bench make-task --split validation --seed 7 --count 200 --out "$W/validation.jsonl"
dynts-bench collect-traces --model "$M" --prompts "$W/train.jsonl" --out "$W/traces-train" --batch-size 50
dynts-bench label "$W/traces-train" --method attention --method copy
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-paper" --label-method attention --seed 0
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-copy-plain" --label-method copy --pool prev --seed 0
if [ -n "${SELECTION:-}" ]; then
    read -r -a SEL <<< "$SELECTION"
    dynts-bench train-predictor "$W/traces-train" --out "$W/pred-shipped" --label-method copy --pool prev --seed 0 \
        "${SEL[@]}"
else
    cp -r "$W/pred-copy-plain" "$W/pred-shipped"
    dynts-bench select-ranking "$W/pred-shipped" --model "$M" --prompts "$W/validation.jsonl" --limit 100 \
        --budget 86 --budget 128 --pool-next 0,1 --recency 0,0.5,1,2 --out "$W/runs" \
        --json "$W/select-ranking.json" --write
fi
# ranking quality on held-out full-cache traces, each head against its own labels
dynts-bench collect-traces --model "$M" --out "$W/traces-heldout" --limit 150 --batch-size 50
dynts-bench label "$W/traces-heldout" --method attention --method copy
dynts-bench eval-predictor "$W/traces-heldout" --predictor "$W/pred-paper" --label-method attention \
    --json "$W/eval-paper.json"
dynts-bench eval-predictor "$W/traces-heldout" --predictor "$W/pred-shipped" --label-method copy \
    --json "$W/eval-shipped.json"
# what matters: accuracy against the budget (validation split, not the held-out set)
OMP_NUM_THREADS=2 python "$(dirname "$0")/dynts_budget_curve.py" --model "$M" --prompts "$W/validation.jsonl" \
    --predictor paper="$W/pred-paper" --predictor copy-plain="$W/pred-copy-plain" \
    --predictor shipped="$W/pred-shipped" --json "$W/budget-curve.json" --markdown "$W/budget-curve.md"
sha256sum "$W/pred-shipped/model.safetensors"
