#!/usr/bin/env bash
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # `sh script.sh` works too
# Few-shot fine-tuning pipeline of DEALRec (BIGRec backend):
#   gen_fewshot -> finetune (LoRA) -> inference (beam search) -> evaluate (grounding + metrics)
#
# Usage: bash finetune.sh <data_name> [--preset cpu-demo | cpu-demo] [finetune.py options ...]
#   e.g. bash finetune.sh games --preset cpu-demo --learning_rate 1e-3 --lora_r 16
# The preset (dealrec/presets.py: FINETUNE_PRESETS) goes to every step; the other options go to
# finetune.py (its defaults are the paper's recipe: FinetuneConfig). Environment: SEEDS ("0"),
# N_FEWSHOT (1024), STRATEGY (dealrec: the selection prune.sh made with STRATEGY=...; every output
# is labelled <n> for dealrec, <n>_<strategy> otherwise, so runs of two strategies never overwrite
# each other), BASE_MODEL (embedded SmolLM2-135M), PRESET, SELECTED (selection file; default
# ../prune/selected/<data>_<label>.pt), WARM_START (warm-start LoRA adapter, the original's
# alpaca-lora-7B; its rank, alpha and target modules must equal the run's --lora_r, --lora_alpha,
# --lora_target_modules, or LORA_R, LORA_ALPHA, LORA_TARGET_MODULES when set: no defaults here,
# FinetuneConfig's apply), GPU_IDS (all visible), DATA_DIR (folder holding <data_name>/;
# default: the repository's data/), LOG_DIR (logs/<data>/), INFERENCE_ARGS / EVALUATE_ARGS (extra
# options of inference.py / evaluate.py, e.g. INFERENCE_ARGS="--gen_precision bf16"
# EVALUATE_ARGS="--ground_precision bf16").
# Outputs (relative to this folder): data/<data>/{train,valid}/*-<label>.json, model/<data>/<seed>_<label>/,
#   results/<data>/<seed>_<label>.json (+ .metrics.json), logs/<data>/.
# --backend tiger (anywhere after <data_name>): after gen_fewshot, TIGER (semantic IDs + a small T5
# trained from scratch: tiger.py, dealrec.tiger) instead of finetune/inference/evaluate; the other
# options go to tiger.py; outputs model/<data>/tiger_<seed>_<label>/, results/<data>/tiger_<seed>_<label>.json.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck disable=SC1091
. "$REPO/tools/find_python.sh"
cd "$HERE"

DATASET=${1:?usage: finetune.sh <data_name> [--preset cpu-demo] [--backend bigrec|tiger] [finetune.py options]}
shift
BACKEND=bigrec
REST=()
while (( $# )); do
    case "$1" in
        --backend) BACKEND=${2:?--backend needs bigrec or tiger}; shift 2 ;;
        --backend=*) BACKEND=${1#--backend=}; shift ;;
        *) REST+=("$1"); shift ;;
    esac
done
set -- ${REST[@]+"${REST[@]}"}
if [[ "$BACKEND" != bigrec && "$BACKEND" != tiger ]]; then
    echo "unknown --backend '$BACKEND' (known: bigrec, tiger)" >&2
    exit 2
fi
PRESET=${PRESET:-}
if [[ "${1:-}" == "--preset" ]]; then PRESET=${2:?--preset needs a name}; shift 2
elif [[ -n "${1:-}" && "${1:-}" != --* ]]; then PRESET=$1; shift; fi
SEEDS=${SEEDS:-0}
N_FEWSHOT=${N_FEWSHOT:-1024}
STRATEGY=${STRATEGY:-dealrec}
# the label of this selection's files: <n> for dealrec (the original's names), <n>_<strategy> otherwise
if [[ "$STRATEGY" == dealrec ]]; then LABEL=$N_FEWSHOT; else LABEL=${N_FEWSHOT}_$STRATEGY; fi
BASE_MODEL=${BASE_MODEL:-smollm2-135m-instruct}
LOG_DIR=${LOG_DIR:-$HERE/logs/$DATASET}
PRESET_ARGS=()
if [[ -n "$PRESET" ]]; then
    if ! "$PY" -c "import sys; from dealrec.presets import FINETUNE_PRESETS as P; sys.exit(sys.argv[1] not in P)" \
            "$PRESET"; then
        echo "unknown preset '$PRESET' (known: $("$PY" -c "from dealrec.presets import FINETUNE_PRESETS as P; print(', '.join(P))"))" >&2
        exit 2
    fi
    PRESET_ARGS=(--preset "$PRESET")
    # Shared 2-core machines: one thread per process avoids OpenMP thrashing.
    if [[ "$PRESET" == cpu-* ]]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
fi
mkdir -p "$LOG_DIR"

N_GPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [[ -n "${GPU_IDS:-}" ]]; then N_GPU=$(awk -F, '{print NF}' <<<"$GPU_IDS"); export CUDA_VISIBLE_DEVICES=$GPU_IDS; fi
if (( N_GPU > 1 )); then
    TRAIN_LAUNCH=("$PY" -m accelerate.commands.launch --num_processes "$N_GPU" --multi_gpu)
    GEN_LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$N_GPU")
    GPU=0
elif (( N_GPU == 1 )); then
    TRAIN_LAUNCH=("$PY" -u); GEN_LAUNCH=("$PY" -u); GPU=0
else
    TRAIN_LAUNCH=("$PY" -u); GEN_LAUNCH=("$PY" -u); GPU=cpu
fi
RECIPE=${PRESET:-"the original code's (FinetuneConfig defaults)"}
echo "data: $DATASET  n: $N_FEWSHOT  strategy: $STRATEGY  seeds: $SEEDS  recipe: $RECIPE  GPUs: $N_GPU  base: $BASE_MODEL"

# 1. few-shot data
GEN_ARGS=(--data_name "$DATASET" --n_sample "$N_FEWSHOT" --strategy "$STRATEGY" --base_model "$BASE_MODEL"
          "${PRESET_ARGS[@]}" --log_file "$LOG_DIR/gen_fewshot_${LABEL}.log")
[[ -n "${SELECTED:-}" ]] && GEN_ARGS+=(--selected "$SELECTED")
[[ -n "${DATA_DIR:-}" ]] && GEN_ARGS+=(--data_dir "$DATA_DIR")
"$PY" -u data/gen_fewshot.py "${GEN_ARGS[@]}"

for SEED in $SEEDS; do
    if [[ "$BACKEND" == tiger ]]; then
        RUN=tiger_${SEED}_${LABEL}
        echo "== seed $SEED: run $RUN"
        TG_ARGS=(--data_name "$DATASET" --base_model "$BASE_MODEL" "${PRESET_ARGS[@]}" --seed "$SEED" --gpu "$GPU"
                 --train_data_path "data/$DATASET/train/train-$LABEL.json"
                 --val_data_path "data/$DATASET/valid/valid-$LABEL.json"
                 --test_data_path "data/$DATASET/test/test.json" --output_dir "model/$DATASET/$RUN"
                 --result_file "results/$DATASET/$RUN.json" --log_file "$LOG_DIR/$RUN.log")
        [[ -n "${DATA_DIR:-}" ]] && TG_ARGS+=(--data_dir "$DATA_DIR")
        "$PY" -u tiger.py "${TG_ARGS[@]}" "$@"
        continue
    fi
    RUN=${SEED}_${LABEL}
    echo "== seed $SEED: run $RUN"
    # 2. LoRA fine-tuning
    FT_ARGS=(--base_model "$BASE_MODEL" "${PRESET_ARGS[@]}"
             --train_data_path "data/$DATASET/train/train-$LABEL.json"
             --val_data_path "data/$DATASET/valid/valid-$LABEL.json"
             --output_dir "model/$DATASET/$RUN" --seed "$SEED" --sample "$N_FEWSHOT"
             --log_file "$LOG_DIR/finetune_$RUN.log")
    [[ -n "${WARM_START:-}" ]] && FT_ARGS+=(--resume_from_checkpoint "$WARM_START")
    [[ -n "${LORA_R:-}" ]] && FT_ARGS+=(--lora_r "$LORA_R")
    [[ -n "${LORA_ALPHA:-}" ]] && FT_ARGS+=(--lora_alpha "$LORA_ALPHA")
    [[ -n "${LORA_TARGET_MODULES:-}" ]] && FT_ARGS+=(--lora_target_modules "$LORA_TARGET_MODULES")
    "${TRAIN_LAUNCH[@]}" finetune.py "${FT_ARGS[@]}" "$@"

    # 3. generation
    INF_ARGS=(--base_model "$BASE_MODEL" "${PRESET_ARGS[@]}" --lora_weights "model/$DATASET/$RUN"
              --test_data_path "data/$DATASET/test/test.json" --result_json_data "results/$DATASET/$RUN.json"
              --log_file "$LOG_DIR/inference_$RUN.log")
    # shellcheck disable=SC2086
    "${GEN_LAUNCH[@]}" inference.py "${INF_ARGS[@]}" ${INFERENCE_ARGS:-}

    # 4. grounding + metrics (base model, no adapter)
    EV_ARGS=(--base_model "$BASE_MODEL" "${PRESET_ARGS[@]}" --log_file "$LOG_DIR/evaluate_$RUN.log")
    [[ -n "${DATA_DIR:-}" ]] && EV_ARGS+=(--data_dir "$DATA_DIR")
    # shellcheck disable=SC2086
    bash data/evaluate.sh "results/$DATASET/$RUN.json" "$GPU" "$DATASET" "${EV_ARGS[@]}" ${EVALUATE_ARGS:-}
done
