#!/usr/bin/env bash
# The decode-loop acceptance measurement (issue 30), old against new side by side, interleaved in one run:
#   1. the default workload (tiny reasoner, batch 32, budget 96+16, 100 problems), each tree's default comparison
#      (full and every evicting policy it has): the table's "decode tok/s" and "policy time" columns (targets: window <= 5%, every evicting policy
#      but h2o / snapkv / rkv <= 8%, window >= 1.15x full's tok/s);
#   2. SmolLM2 at 8k context (`bench --context 8192`): ms/step, new no slower than old.
# Usage: bash benchmarks/decode_acceptance.sh [BASE_REF [ROUNDS]]   (default: 33a13d0, the loop before issue 30; 1)
# Set BENCH_ARGS to shorten step 2 on a loaded machine (e.g. "-p window -p dynts --steps 64 --repeats 2").
# Run it on a quiet machine; `uptime` is printed beside every measurement.
set -uo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-33a13d0}
ROUNDS=${2:-1}
OLD=$(mktemp -d)
trap 'rm -rf "$OLD"' EXIT
git archive "$BASE" | tar -x -C "$OLD"
run_in() {  # TREE LABEL ARGS...: one CLI invocation from a tree, its result tables only
    local tree=$1 label=$2; shift 2
    echo "== $label ($(git -C "$tree" rev-parse --short HEAD 2>/dev/null || echo "$BASE")); load: $(uptime | sed 's/.*load/load/')"
    (cd "$tree" && PYTHONPATH=$PWD python -m harness.cli "$@" 2>&1 | grep -E "[│┃]|policy time|ms/step" )
}
for round in $(seq 1 "$ROUNDS"); do
    echo "### round $round of $ROUNDS"
    for tree in "$OLD" "$PWD"; do
        label=$([ "$tree" = "$PWD" ] && echo new || echo old)
        run_in "$tree" "$label: default workload" run --limit 100 --out "$(mktemp -d)"  # each tree's default comparison: every policy it has
    done
    for tree in "$PWD" "$OLD"; do
        label=$([ "$tree" = "$PWD" ] && echo new || echo old)
        # shellcheck disable=SC2086
        run_in "$tree" "$label: SmolLM2 at 8k" bench --context 8192 ${BENCH_ARGS:-}
    done
done
