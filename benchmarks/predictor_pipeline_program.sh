#!/usr/bin/env bash
# The DynTS predictor pipeline on the second embedded task (the register program, tiny-reasoner-program), run as
# it is for the first task, with nothing chosen by hand: full-cache traces of 600 training problems -> copy labels
# spread to the preceding token (--pool prev) -> the default head (MSE + pairwise ranking, one thread, seed 0) ->
# the ranking options (pool_next, recency) chosen by `select-ranking --write` on the task's own validation split
# (100 problems, mean accuracy at budgets 104 and 146: 25% and 35% of the median trace). The paper's recipe
# (answer-attention labels, no options) is trained beside it on the same traces, for comparison.
# Reproduces harness/tinyreasoner/program-predictor/ (weights bit for bit; the options as selected).
# Usage: benchmarks/predictor_pipeline_program.sh [WORKDIR]        (about 10 minutes on 2 quiet CPU cores)
set -euo pipefail
W=${1:-/tmp/dynts-predictor-program}
M=tiny-reasoner-program
export OMP_NUM_THREADS=1
rm -rf "$W"; mkdir -p "$W"
dynts-bench make-task --task program --split train --count 600 --out "$W/train.jsonl"
dynts-bench make-task --task program --split validation --seed 7 --count 200 --out "$W/validation.jsonl"
dynts-bench collect-traces --model "$M" --prompts "$W/train.jsonl" --out "$W/traces-train" --batch-size 50
dynts-bench label "$W/traces-train" --method attention --method copy
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-paper" --label-method attention --seed 0
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-shipped" --label-method copy --pool prev --seed 0
dynts-bench select-ranking "$W/pred-shipped" --model "$M" --prompts "$W/validation.jsonl" --limit 100 \
    --budget 104 --budget 146 --pool-next 0,1 --recency 0,0.5,1,2 --out "$W/runs" \
    --json "$W/select-ranking.json" --write
sha256sum "$W/pred-shipped/model.safetensors"
