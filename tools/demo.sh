#!/usr/bin/env bash
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # `sh script.sh` works too
# The README's main command (`make demo`): prune Games with DEALRec and few-shot fine-tune +
# evaluate BIGRec on the embedded SmolLM2-135M-Instruct, at a CPU-sized preset (~15-20 min on 2
# cores after set-up). Sizes: prune.py's `demo` preset (first 600 users, n = 64, 20 surrogate
# epochs, LiSSA depth 1000, 256-token prompts) and finetune.sh's `cpu-demo` preset (8 LoRA steps
# with the loss on the response only at lr 2e-3 — the recipe the reproduction study found makes
# the 135M model stop echoing its input —, 50 test users, 2 beams, 24 new tokens, grounding among
# 1,000 items + the targets); both in code/dealrec/presets.py. DEMO_N=64 selected samples; extra prune.py options:
# DEMO_PRUNE_ARGS="--n_fewshot 32 ..."; extra finetune.py options: DEMO_FINETUNE_ARGS="...".
# Full-scale commands: README.md and docs/commands.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
N=${DEMO_N:-64}  # selected samples (the demo preset's 64 by default)
start=$(date +%s)
echo "== 1/2 prune: sh prune.sh games SASRec 0.3 50 demo cpu --preset demo --n_fewshot $N"
# shellcheck disable=SC2086
(cd code/prune && sh prune.sh games SASRec 0.3 50 demo cpu --preset demo --n_fewshot "$N" ${DEMO_PRUNE_ARGS:-})
echo "== 2/2 finetune: N_FEWSHOT=$N bash finetune.sh games --preset cpu-demo"
# shellcheck disable=SC2086
(cd code/finetune && N_FEWSHOT=$N bash finetune.sh games --preset cpu-demo ${DEMO_FINETUNE_ARGS:-})
echo "== demo finished in $(( $(date +%s) - start )) s"
echo "   selection: code/prune/selected/games_$N.pt (+ .json, .png)"
echo "   metrics:   code/finetune/results/games/0_$N.metrics.json"
