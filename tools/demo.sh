#!/usr/bin/env bash
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # `sh script.sh` works too
# The README's main command (`make demo`): prune Games with DEALRec and few-shot fine-tune +
# evaluate BIGRec on the embedded SmolLM2-135M-Instruct, at a CPU-sized preset (~15-20 min on 2
# cores after set-up). Sizes (override with the environment):
#   DEMO_USERS=600     users considered by every pruning stage (--max_users)
#   DEMO_N=64          selected samples (n_fewshot)
#   DEMO_EPOCHS=20     surrogate epochs; DEMO_DEPTH=1000 LiSSA recursion depth
# Fine-tuning uses finetune.sh's cpu-demo preset (8 LoRA steps, 50 test users, 2 beams,
# 24 new tokens, grounding among 1,000 items + the targets). Full-scale commands: README.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
USERS=${DEMO_USERS:-600}; N=${DEMO_N:-64}; EPOCHS=${DEMO_EPOCHS:-20}; DEPTH=${DEMO_DEPTH:-1000}
start=$(date +%s)
echo "== 1/2 prune: sh prune.sh games SASRec 0.3 50 demo cpu (first $USERS users, n=$N)"
(cd code/prune && PRUNE_ARGS="--max_users $USERS --n_fewshot $N --epochs $EPOCHS --eval_every 5 \
    --recursion_depth $DEPTH --cutoff_len 256" sh prune.sh games SASRec 0.3 50 demo cpu)
echo "== 2/2 finetune: N_FEWSHOT=$N bash finetune.sh games --preset cpu-demo"
(cd code/finetune && N_FEWSHOT=$N bash finetune.sh games --preset cpu-demo)
echo "== demo finished in $(( $(date +%s) - start )) s"
echo "   selection: code/prune/selected/games_$N.pt (+ .json, .png)"
echo "   metrics:   code/finetune/results/games/0_$N.metrics.json"
