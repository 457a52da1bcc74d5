#!/usr/bin/env bash
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # `sh gpu_check.sh` works too
# One prepared check of the GPU paths, < 10 min on one modern GPU; one line per check:
#
#   bash bench/gpu_check.sh            # from a fresh clone, on a machine with an NVIDIA GPU
#
#   prepare            model (BASE_MODEL, else the embedded SmolLM2-135M, else a tiny random LLaMA
#                      built here), data (Games when linked, else a synthetic set), prompt files
#   bf16_lora          LoRA fine-tuning in bf16 (20 steps): loss falls, adapter saved non-empty and
#                      reloads to the same logits
#   effort_fp32        effort scores of N_PROMPTS (300) training prompts, fp32 weights (reference)
#   effort_bf16        the same in bf16 (the GPU default), Spearman with fp32
#   effort_8bit        the same with 8-bit base weights (bitsandbytes), Spearman with fp32
#   effort_4bit        the same with 4-bit NF4 base weights, Spearman with fp32
#   torchrun_generate  inference.py with the bf16 adapter: 1 process, then torchrun over all GPUs
#                      (nccl when ≥ 2); every user answered once, answers compared
#   sharded_effort     prune.py --stage effort on 1,100 users, 1 process and `accelerate launch`
#                      over all GPUs; the scores must agree
#
# Exit status: 0 all checks passed (SKIPs allowed), 1 a check failed or timed out,
#   3 no CUDA device (nothing checked), 4 no Python with torch (CUDA), transformers, peft, accelerate.
# Environment: BASE_MODEL (a local HF model folder), N_PROMPTS (300), CHECK_TIMEOUT (seconds per check,
#   150), PY (the Python to use), GPU_CHECK_DIR (work folder; default a new temporary one),
#   SETUP=1 (run tools/setup.sh first: creates .venv; needs the package index),
#   GPU_CHECK_CPU=1 (dry run of the plumbing on the CPU with tiny sizes; not a GPU check).
# The full output of each check is in $GPU_CHECK_DIR/<check>.log.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
say() { printf 'gpu_check: %s\n' "$*"; }
START=$SECONDS
CPU_RUN=${GPU_CHECK_CPU:-0}

# 1. a GPU?
if [[ "$CPU_RUN" != 1 ]]; then
    if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
        say "no CUDA device: nothing to check (no working nvidia-smi)"
        exit 3
    fi
fi

# 2. a Python that has what the checks need
[[ "${SETUP:-0}" == 1 ]] && { bash tools/setup.sh || say "tools/setup.sh failed; trying the Pythons at hand"; }
want_cuda="assert torch.cuda.is_available(), 'no CUDA'"
[[ "$CPU_RUN" == 1 ]] && want_cuda="pass"
probe="import torch, transformers, peft, accelerate, safetensors; $want_cuda"
chosen=""
for cand in "${PY:-}" "$ROOT/.venv/bin/python" python3 python; do
    [[ -n "$cand" ]] || continue
    command -v "$cand" >/dev/null 2>&1 || [[ -x "$cand" ]] || continue
    if "$cand" -c "$probe" >/dev/null 2>&1; then chosen="$cand"; break; fi
done
if [[ -z "$chosen" ]]; then
    if [[ "$CPU_RUN" != 1 ]] && command -v python3 >/dev/null 2>&1 \
        && python3 -c "import torch, sys; sys.exit(0 if not torch.cuda.is_available() else 1)" 2>/dev/null; then
        say "no CUDA device: torch sees none although nvidia-smi does (a CPU build of torch?); nothing to check"
        exit 3
    fi
    say "no Python with torch (CUDA), transformers, peft, accelerate and safetensors: run SETUP=1 bash $0, or set PY"
    exit 4
fi
PY="$chosen"
export PYTHONPATH="$ROOT/code${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TQDM_DISABLE=1

WORK="${GPU_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/dealrec-gpu-check.XXXXXX")}"
mkdir -p "$WORK"
T=${CHECK_TIMEOUT:-150}
N=${N_PROMPTS:-300}
EXTRA=()
if [[ "$CPU_RUN" == 1 ]]; then EXTRA=(--cpu --n_test 8 --users 600); N=${N_PROMPTS:-24}; export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
about="$("$PY" - 2>&1 <<'PYEOF'
import importlib.util as u
import torch
missing = [m for m in ("sentencepiece", "google.protobuf", "bitsandbytes") if u.find_spec(m.split(".")[0]) is None]
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}" + (f"; not installed: {', '.join(missing)}" if missing else ""))
PYEOF
)"
say "python $PY ($about); work folder $WORK; ${T} s per check"
if [[ "$CPU_RUN" == 1 ]]; then say "GPU_CHECK_CPU=1: a CPU dry run of the plumbing, NOT a GPU check"; fi

n_pass=0; n_fail=0; n_skip=0; failed=""
run_check() {  # run_check NAME ARGS...
    local name="$1"; shift
    local out rc t0=$SECONDS
    out="$(timeout -k 10 "$T" "$PY" bench/gpu_check.py "$@" --work "$WORK" --n_prompts "$N" ${EXTRA[@]+"${EXTRA[@]}"} \
        2>"$WORK/$name.log")"
    rc=$?
    if (( rc == 124 || rc == 137 )); then
        out="$name: FAIL  timed out after ${T} s (see $WORK/$name.log)"
        rc=1
    elif [[ -z "$out" ]]; then
        out="$name: FAIL  exit status $rc and no result line (see $WORK/$name.log)"
        rc=1
    fi
    case $rc in
        0) n_pass=$((n_pass + 1)) ;;
        5) n_skip=$((n_skip + 1)) ;;
        *) n_fail=$((n_fail + 1)); failed="$failed $name" ;;
    esac
    say "$out"
    return "$rc"
}

if ! run_check prepare prepare; then
    say "prepare failed: the other checks need its model and prompts; stopping ($((SECONDS - START)) s)"
    exit 1
fi
run_check bf16_lora bf16_lora
run_check effort_fp32 effort --quant fp32
run_check effort_bf16 effort --quant bf16
run_check effort_8bit effort --quant 8bit
run_check effort_4bit effort --quant 4bit
run_check torchrun_generate torchrun_generate
run_check sharded_effort sharded_effort

say "$n_pass passed, $n_fail failed, $n_skip skipped in $((SECONDS - START)) s${failed:+ (failed:$failed)}; logs in $WORK"
(( n_fail == 0 )) || exit 1
exit 0
