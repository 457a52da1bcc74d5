#!/bin/sh
# Usage: sh prune.sh <data_name> <surrogate> <lamda> <k> <log_name> <gpu_id> [stable] [prune.py options ...]
#   e.g. sh prune.sh games SASRec 0.3 50 log 0
#        sh prune.sh games SASRec 0.3 50 demo cpu --preset demo
# gpu_id may be "cpu". A 7th argument "stable" (or DEALREC_STABLE=1) selects the seed-stable
# variant (strategy dealrec-stable: expected negatives + seed-free effort). Every further argument
# goes to prune.py unchanged (--preset NAME, --n_fewshot N, --max_users N, any setting); so do
# the words of PRUNE_ARGS="..." (before them), and STRATEGY=name picks the strategy.
set -e
if [ $# -lt 6 ]; then
    echo "usage: sh prune.sh <data_name> <surrogate> <lamda> <k> <log_name> <gpu_id> [stable] [prune.py options]" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck disable=SC1091
. "$REPO/tools/find_python.sh"
DATA=$1; SURROGATE=$2; LAMDA=$3; K=$4; LOG_NAME=$5; GPU_ARG=$6
shift 6
STRATEGY=${STRATEGY:-dealrec}
if [ "${1:-}" = "stable" ]; then STRATEGY=dealrec-stable; shift; fi
if [ "${DEALREC_STABLE:-0}" = "1" ]; then STRATEGY=dealrec-stable; fi
case "$GPU_ARG" in
    cpu|-1) GPU=cpu ;;
    *) export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-$GPU_ARG}; GPU=0 ;;
esac
cd "$HERE"
# shellcheck disable=SC2086
exec "$PY" prune.py --data_name "$DATA" --surrogate "$SURROGATE" --lamda "$LAMDA" --k "$K" --log_name "$LOG_NAME" \
    --gpu_id "$GPU" --strategy "$STRATEGY" ${PRUNE_ARGS:-} "$@"
