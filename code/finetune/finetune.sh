#!/usr/bin/env bash
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # `sh script.sh` works too
# Few-shot fine-tuning pipeline of DEALRec (BIGRec backend):
#   gen_fewshot -> finetune (LoRA) -> inference (beam search) -> evaluate (grounding + metrics)
#
# Usage: bash finetune.sh <data_name> [--preset cpu-demo | cpu-demo]
# Environment: SEEDS ("0"), N_FEWSHOT (1024), BASE_MODEL (embedded SmolLM2-135M), PRESET,
#   SELECTED (selection file; default ../prune/selected/<data>_<n>.pt),
#   WARM_START (warm-start LoRA adapter, the original's alpaca-lora-7B; its rank, alpha and target
#   modules must equal LORA_R (8), LORA_ALPHA (16), LORA_TARGET_MODULES (q_proj,v_proj)), GPU_IDS (all visible),
#   DATA_DIR (folder holding <data_name>/; default: the repository's data/), LOG_DIR (logs/<data>/).
# Outputs (relative to this folder): data/<data>/, model/<data>/<seed>_<n>/,
#   results/<data>/<seed>_<n>.json (+ .metrics.json), logs/<data>/.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck disable=SC1091
. "$REPO/tools/find_python.sh"
cd "$HERE"

DATASET=${1:?usage: finetune.sh <data_name> [--preset cpu-demo]}
PRESET=${PRESET:-}
if [[ "${2:-}" == "--preset" ]]; then PRESET=${3:?--preset needs a name}; elif [[ -n "${2:-}" ]]; then PRESET=$2; fi
SEEDS=${SEEDS:-0}
N_FEWSHOT=${N_FEWSHOT:-1024}
LORA_R=${LORA_R:-8}; LORA_ALPHA=${LORA_ALPHA:-16}; LORA_TARGET_MODULES=${LORA_TARGET_MODULES:-q_proj,v_proj}
BASE_MODEL=${BASE_MODEL:-smollm2-135m-instruct}
LOG_DIR=${LOG_DIR:-$HERE/logs/$DATASET}

# Full recipe of the paper (§5.1); the cpu-demo preset finishes in minutes on 2 cores.
BATCH_SIZE=128; MICRO_BATCH=4; NUM_EPOCHS=50; LR=1e-4; WARMUP=20; CUTOFF=512; MAX_STEPS=-1; EVAL_STEPS=100
VAL_SET_SIZE=""; MAX_TEST_USERS=""; NUM_BEAMS=4; MAX_NEW_TOKENS=128; GEN_BATCH=8; MAX_ITEMS=""
case "$PRESET" in
    "") ;;
    cpu-demo)
        # 8 steps cannot warm up for 20: a short warm-up and alpaca-lora's 3e-4 instead
        BATCH_SIZE=4; MICRO_BATCH=4; MAX_STEPS=8; EVAL_STEPS=4; CUTOFF=256; VAL_SET_SIZE=8; WARMUP=2; LR=3e-4
        MAX_TEST_USERS=50; NUM_BEAMS=2; MAX_NEW_TOKENS=24; GEN_BATCH=4
        # Grounding against all 17k titles takes ~10 min on 2 cores (cached afterwards);
        # the demo ranks among the first 1000 items + the targets (labelled in the metrics).
        MAX_ITEMS=${MAX_ITEMS:-1000}
        # Shared 2-core machines: one thread per process avoids OpenMP thrashing.
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
        ;;
    *) echo "unknown preset '$PRESET' (known: cpu-demo)" >&2; exit 2 ;;
esac
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
echo "data: $DATASET  n: $N_FEWSHOT  seeds: $SEEDS  preset: ${PRESET:-full}  GPUs: $N_GPU  base: $BASE_MODEL"

# 1. few-shot data
GEN_ARGS=(--data_name "$DATASET" --n_sample "$N_FEWSHOT" --cutoff_len "$CUTOFF" --base_model "$BASE_MODEL"
          --log_file "$LOG_DIR/gen_fewshot_${N_FEWSHOT}.log")
[[ -n "${SELECTED:-}" ]] && GEN_ARGS+=(--selected "$SELECTED")
[[ -n "${DATA_DIR:-}" ]] && GEN_ARGS+=(--data_dir "$DATA_DIR")
[[ -n "$MAX_TEST_USERS" ]] && GEN_ARGS+=(--max_test_users "$MAX_TEST_USERS")
"$PY" -u data/gen_fewshot.py "${GEN_ARGS[@]}"

for SEED in $SEEDS; do
    RUN=${SEED}_${N_FEWSHOT}
    echo "== seed $SEED: run $RUN"
    # 2. LoRA fine-tuning
    FT_ARGS=(--base_model "$BASE_MODEL"
             --train_data_path "data/$DATASET/train/train-$N_FEWSHOT.json"
             --val_data_path "data/$DATASET/valid/valid-$N_FEWSHOT.json"
             --output_dir "model/$DATASET/$RUN"
             --batch_size "$BATCH_SIZE" --micro_batch_size "$MICRO_BATCH" --num_epochs "$NUM_EPOCHS"
             --learning_rate "$LR" --warmup_steps "$WARMUP" --cutoff_len "$CUTOFF" --lora_r "$LORA_R" --lora_alpha "$LORA_ALPHA" --lora_dropout 0.05
             --lora_target_modules "$LORA_TARGET_MODULES" --train_on_inputs --group_by_length
             --seed "$SEED" --sample "$N_FEWSHOT" --max_steps "$MAX_STEPS" --eval_steps "$EVAL_STEPS"
             --log_file "$LOG_DIR/finetune_$RUN.log")
    [[ -n "$VAL_SET_SIZE" ]] && FT_ARGS+=(--val_set_size "$VAL_SET_SIZE" --logging_steps 1)
    [[ -n "${WARM_START:-}" ]] && FT_ARGS+=(--resume_from_checkpoint "$WARM_START")
    "${TRAIN_LAUNCH[@]}" finetune.py "${FT_ARGS[@]}"

    # 3. generation
    INF_ARGS=(--base_model "$BASE_MODEL" --lora_weights "model/$DATASET/$RUN"
              --test_data_path "data/$DATASET/test/test.json" --result_json_data "results/$DATASET/$RUN.json"
              --num_beams "$NUM_BEAMS" --max_new_tokens "$MAX_NEW_TOKENS" --batch_size "$GEN_BATCH"
              --cutoff_len "$CUTOFF" --log_file "$LOG_DIR/inference_$RUN.log")
    [[ -n "$MAX_TEST_USERS" ]] && INF_ARGS+=(--max_test_users "$MAX_TEST_USERS")
    "${GEN_LAUNCH[@]}" inference.py "${INF_ARGS[@]}"

    # 4. grounding + metrics (base model, no adapter)
    EV_ARGS=(--base_model "$BASE_MODEL" --log_file "$LOG_DIR/evaluate_$RUN.log")
    [[ -n "${DATA_DIR:-}" ]] && EV_ARGS+=(--data_dir "$DATA_DIR")
    [[ -n "$MAX_ITEMS" ]] && EV_ARGS+=(--max_items "$MAX_ITEMS")
    bash data/evaluate.sh "results/$DATASET/$RUN.json" "$GPU" "$DATASET" "${EV_ARGS[@]}"
done
