#!/usr/bin/env bash
# Create (or reuse) the SGLang CPU environment of the sglang backend and run its tests there.
#
#   backends/sglang/install_cpu_env.sh [VENV_DIR] [--no-tests]
#
# SGLang 0.5.23 pins torch==2.14.1, transformers==5.19.0, sglang-kernel==0.4.10, flashinfer and cuda-python: a
# GPU stack that cannot share an environment with vLLM (torch 2.13) nor be installed on a CPU machine (the
# registry's sglang-kernel / sgl-kernel builds are CUDA only). So, in its own venv:
#   1. torch==2.13.0 (the CPU file; SGLang's torch pin is not honoured, it runs on 2.13 for what we use);
#   2. sglang==0.5.23 --no-deps, then only the pure-Python packages it imports on the way to a CPU engine (found
#      by importing until nothing was missing; versions pinned where SGLang pins them);
#   3. no torchvision, no sgl_kernel: the registry's torchvision links CUDA ("operator torchvision::nms does not
#      exist") and sgl_kernel has no CPU build; backends/sglang/cpu_shim stands in for the few names SGLang
#      imports (activated by the tests and the CPU backend only, never installed as a package);
#   4. this project --no-deps and the rest of its dependencies under a constraints file that keeps torch,
#      transformers and SGLang's pins as installed above.
# The first run takes a few minutes (mostly triton and torch); reruns only check and run the tests.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../paged/install_common.sh
source "$ROOT/backends/paged/install_common.sh"
install_args "${SGLANG_VENV:-$HOME/.cache/dynts-bench/venv-sglang-cpu}" "$@"

# What SGLang imports on CPU, beyond torch. Pinned where sglang 0.5.23's metadata pins them.
SGLANG_DEPS=(
    "transformers==5.19.0" "tokenizers==0.23.2" "sentencepiece==0.2.1" "compressed-tensors==0.18.0" "openai==2.8.0"
    "apache-tvm-ffi==0.1.11" "xgrammar==0.2.7"  # xgrammar: the detokenizer's function-call parser imports it
    triton  # imported at the top of mem_cache/memory_pool.py (@triton.jit kernels; never launched on CPU)
    numpy orjson psutil pybase64 msgspec pydantic pyzmq starlette gguf einops partial_json_parser
    pillow ipython aiohttp dill uvicorn fastapi uvloop setproctitle
)
# What SGLang's HTTP server (dynts-bench serve --backend sglang) imports beyond the engine; installed on every run
# (a no-op once present), outside the stamp, so that adding one does not rebuild an existing venv.
SERVER_DEPS=("soundfile==0.13.1" jsonschema python-multipart "prometheus-client>=0.20.0")
STAMP="$VENV/.dynts-bench-sglang"
WANT="sglang==0.5.23 torch==2.13.0 ${SGLANG_DEPS[*]}"

if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]] || ! "$PY" -c "import importlib.metadata as m; assert m.version('sglang') == '0.5.23'" 2>/dev/null; then
    new_torch_venv "$VENV" "$PY"
    "$PY" -m pip install --quiet --no-deps sglang==0.5.23
    "$PY" -m pip install --quiet "${SGLANG_DEPS[@]}" torch==2.13.0
    "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec sgl-kernel sglang-kernel 2>/dev/null || true
    echo "$WANT" > "$STAMP"
fi
"$PY" -m pip install --quiet "${SERVER_DEPS[@]}" torch==2.13.0
install_project "$PY" "$ROOT" "torch|transformers|tokenizers|numpy|sglang|sentencepiece|compressed-tensors|openai|pydantic|triton"
"$PY" - <<'PYEOF'
import importlib.metadata as m
import torch
assert torch.__version__ == "2.13.0+cpu", torch.__version__
assert m.version("sglang") == "0.5.23"
eps = {ep.name for ep in m.entry_points(group="sglang.srt.plugins")}
assert "dynts_bench" in eps, f"the dynts_bench SGLang plugin is not registered: {eps}"
print(f"sglang env ok: torch {torch.__version__}, sglang {m.version('sglang')}, transformers {m.version('transformers')}")
PYEOF
if [[ $RUN_TESTS == 1 ]]; then
    run_engine_tests "$PY" "$ROOT" tests/sglang tests/test_sglang_backend.py
fi
