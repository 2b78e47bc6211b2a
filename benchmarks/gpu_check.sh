#!/usr/bin/env bash
# The prepared check for a lent NVIDIA GPU: one command, no network, <= 8 minutes, everything in one directory.
#   1. the GPU-marked tests (CUDA decode = CPU decode for every policy, NVML sampling, CUDA peak memory, no
#      host sync inside the decode step, the CUDA-graph step's logits = the eager step's);
#   2. a real run on CUDA (the tiny reasoner, full vs window): summary.json's NVML and CUDA-memory fields;
#   3. the paper's latency setting at reduced length (benchmarks/gpu_latency.py): a Qwen2-7B-shaped model with
#      random weights, bf16, batch 20, full vs window vs dynts, each eager and with the decode step replayed as
#      CUDA graphs (--capture both), trigger 512 / window 256 of 768 new tokens (on an H200 before the
#      decode-loop rework 1536 took 205 s for three policies once), each twice in rotated order, EOS ignored:
#      ms/step with and without the policy's time, tokens/s, allocated KV, CUDA peak, the ratios with their
#      range, and each step's ratio to the bandwidth limit (weights + held KV read once).
# Usage: bash benchmarks/gpu_check.sh [OUTDIR]        (default: gpu-check-<date>; or $OUT when set)
# Works from a checkout without installing it (PYTHONPATH=.), with the torch/transformers already there.
set -uo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${OUT:-gpu-check-$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$DIR"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
step() { echo "== $1 ($(date +%T))" | tee -a "$DIR/summary.txt"; }

step "environment"
{ nvidia-smi; $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'transformers', transformers.__version__, 'gpu', torch.cuda.get_device_name())"; } > "$DIR/environment.txt" 2>&1
tail -1 "$DIR/environment.txt" | tee -a "$DIR/summary.txt"

step "GPU tests"
timeout 150 $PY -m pytest -q -m gpu tests/test_gpu.py tests/test_decode_step_syncs.py -p no:cacheprovider > "$DIR/gpu-tests.txt" 2>&1 || status=1
tail -1 "$DIR/gpu-tests.txt" | tee -a "$DIR/summary.txt"

step "a real run on CUDA (NVML, CUDA peak memory)"
timeout 60 $PY -m harness.cli run -p full -p window --device cuda --limit 16 --batch-size 16 \
    --out "$DIR/runs" > "$DIR/run.txt" 2>&1 || status=1
$PY - "$DIR/runs" <<'PY' 2>&1 | tee -a "$DIR/summary.txt"
import json, sys, pathlib
for s in sorted(pathlib.Path(sys.argv[1]).glob("*/summary.json")):
    m = json.loads(s.read_text())["metrics"]
    nvml = m.get("nvml")
    print(s.parent.name, "accuracy", m.get("accuracy"), "cuda_max_allocated", m.get("cuda_max_memory_allocated_bytes"),
          "nvml", json.dumps(nvml)[:300])
PY

step "paper latency setting, reduced length"
timeout 420 $PY -m benchmarks.gpu_latency --new-tokens 768 --trigger 512 --window 256 --repeats 2 --capture both \
    --out "$DIR/latency.json" > "$DIR/latency.txt" 2>&1 || status=1
cat "$DIR/latency.txt" | tee -a "$DIR/summary.txt"

step "paged compaction (vllm adapter, DenseStore) on CUDA vs CPU"; timeout 120 $PY -m benchmarks.paged_gpu_check > "$DIR/paged.txt" 2>&1 || status=1; tee -a "$DIR/summary.txt" < "$DIR/paged.txt"
step "done: exit $status; everything is in $DIR"
exit $status
