#!/usr/bin/env bash
# The DynTS predictor pipeline end to end on the shipped tiny reasoner: reproduces the shipped predictor
# (harness/tinyreasoner/predictor/, round 2 below) and, beside it, the paper's recipe on the same traces.
# About 25 minutes on 2 busy CPU cores (each collection ~3-4 min, each labelling ~1-2 min, each training ~75 s).
#
#   paper recipe:   full-cache traces -> answer-attention labels (the paper's) -> MSE + pairwise ranking
#                   (the previously shipped recipe; add --rank-weight 0 for the paper's MSE alone)
#   shipped recipe: answer-attention labels spread to the preceding token (--pool prev: a result's name gets its
#                   value's label), MSE + pairwise ranking, then two rounds of on-policy traces: generated under
#                   DynTS with the previous round's predictor (budget 104, then 86), hidden states as DynTS saw
#                   them, incorrect traces included.
# Usage: [MODEL=tiny-reasoner-control] benchmarks/predictor_pipeline_tiny.sh [WORKDIR]
#        (predictors and evaluation JSON under WORKDIR/; MODEL: any tiny-reasoner model, default tiny-reasoner)
set -euo pipefail
W=${1:-/tmp/dynts-predictor-bench}
M=${MODEL:-tiny-reasoner}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
rm -rf "$W"; mkdir -p "$W"
dynts-bench make-task --split train --count 600 --out "$W/train.jsonl"
dynts-bench collect-traces --model "$M" --prompts "$W/train.jsonl" --out "$W/traces-train" --batch-size 50
dynts-bench label "$W/traces-train" --method attention
# the paper's labels on full-cache traces -- kept available, reported beside the shipped recipe
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-paper" --label-method attention --seed 0
# round 0: full-cache traces, pooled labels
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-round0" --label-method attention --pool prev --seed 0
# round 1: on-policy traces under round 0 at budget 104
dynts-bench collect-traces --model "$M" --prompts "$W/train.jsonl" --out "$W/traces-onpolicy1" --batch-size 50 \
    --on-policy-budget 104 --predictor "$W/pred-round0"
dynts-bench label "$W/traces-onpolicy1" --method attention
dynts-bench train-predictor "$W/traces-onpolicy1" --out "$W/pred-round1" --label-method attention --pool prev \
    --include-incorrect --seed 0
# round 2 (shipped): on-policy traces under round 1 at budget 86
dynts-bench collect-traces --model "$M" --prompts "$W/train.jsonl" --out "$W/traces-onpolicy2" --batch-size 50 \
    --on-policy-budget 86 --predictor "$W/pred-round1"
dynts-bench label "$W/traces-onpolicy2" --method attention
dynts-bench train-predictor "$W/traces-onpolicy2" --out "$W/pred-round2" --label-method attention --pool prev \
    --include-incorrect --seed 0
# ranking quality on held-out full-cache traces, both recipes against the same answer-attention labels
dynts-bench collect-traces --model "$M" --out "$W/traces-heldout" --limit 150 --batch-size 50
dynts-bench label "$W/traces-heldout" --method attention
for P in paper round2; do
    dynts-bench eval-predictor "$W/traces-heldout" --predictor "$W/pred-$P" --label-method attention \
        --json "$W/eval-$P.json"
done
# what matters: accuracy against the budget (validation split, not the held-out set)
dynts-bench make-task --split validation --seed 7 --count 200 --out "$W/validation.jsonl"
python "$(dirname "$0")/dynts_budget_curve.py" --model "$M" --prompts "$W/validation.jsonl" \
    --predictor paper="$W/pred-paper" --predictor round2="$W/pred-round2" --json "$W/budget-curve.json"
