#!/usr/bin/env bash
# The DynTS predictor pipeline end to end on the shipped tiny reasoner (about 3 minutes on 2 CPU cores):
# train traces -> labels -> two predictors (attention / lookback labels) -> held-out traces -> evaluation.
# Usage: benchmarks/predictor_pipeline_tiny.sh [WORKDIR]   (results JSON under WORKDIR/)
set -euo pipefail
W=${1:-/tmp/dynts-predictor-bench}
rm -rf "$W"; mkdir -p "$W"
dynts-bench make-task --split train --count 300 --out "$W/train.jsonl"
dynts-bench collect-traces --prompts "$W/train.jsonl" --out "$W/traces-train" --batch-size 50
dynts-bench label "$W/traces-train" --method attention --method lookback
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-attention" --label-method attention --seed 0
dynts-bench train-predictor "$W/traces-train" --out "$W/pred-lookback" --label-method lookback --seed 0
dynts-bench collect-traces --out "$W/traces-heldout" --limit 150 --batch-size 50
dynts-bench label "$W/traces-heldout" --method attention --method lookback --method gradient
dynts-bench eval-predictor "$W/traces-heldout" --predictor "$W/pred-attention" --label-method attention \
    --json "$W/eval-attention.json"
dynts-bench eval-predictor "$W/traces-heldout" --predictor "$W/pred-lookback" --label-method lookback \
    --json "$W/eval-lookback.json"
