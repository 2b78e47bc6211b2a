#!/usr/bin/env bash
# The DynTS predictor pipeline on the second embedded task (the register program, tiny-reasoner-program), with
# nothing chosen by hand: full-cache traces of 600 training problems -> lifetime labels (how long each token stays
# needed: the distance to the last far-copying read of it) spread to the preceding token (--pool prev) -> a
# lifetime head (log1p(lifetime) regression, MSE + pairwise ranking, one thread, seed 0) -> the ranking options
# (pool_next, recency) chosen by `select-ranking --write` on the task's own validation split (100 problems, mean
# accuracy at budgets 104 and 146: 25% and 35% of the median trace). Beside it, for comparison, on the same traces
# and validation problems: the copy-label importance head (the shipped head until issue 29's lifetime labels,
# validation 0.92) with its own selected options, and the paper's recipe (answer-attention labels, no options).
# Reproduces harness/tinyreasoner/program-predictor/ (weights bit for bit; the options as selected).
# Usage: benchmarks/predictor_pipeline_program.sh [WORKDIR]        (about 15 minutes on 2 quiet CPU cores)
set -euo pipefail
W=${1:-/tmp/dynts-predictor-program}
M=tiny-reasoner-program
export OMP_NUM_THREADS=1
rm -rf "$W"; mkdir -p "$W"
dynts-bench make-task --task program --split train --count 600 --out "$W/train.jsonl"
dynts-bench make-task --task program --split validation --seed 7 --count 200 --out "$W/validation.jsonl"
dynts-bench collect-traces --model "$M" --prompts "$W/train.jsonl" --out "$W/traces-train" --batch-size 50
dynts-bench label "$W/traces-train" --method attention --method copy --method lifetime
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-paper" --label-method attention --seed 0
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-copy" --label-method copy --pool prev --seed 0
# --label-method lifetime trains a lifetime head (--target lifetime --transform log1p)
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-shipped" --label-method lifetime --pool prev --seed 0
for head in pred-copy pred-shipped; do
    dynts-bench select-ranking "$W/$head" --model "$M" --prompts "$W/validation.jsonl" --limit 100 \
        --budget 104 --budget 146 --pool-next 0,1 --recency 0,0.5,1,2 --out "$W/runs-$head" \
        --json "$W/select-ranking-$head.json" --write
done
sha256sum "$W/pred-shipped/model.safetensors"
