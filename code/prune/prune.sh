#!/bin/sh
# Usage: sh prune.sh <data_name> <surrogate> <lamda> <k> <log_name> <gpu_id> [stable]
#   e.g. sh prune.sh games SASRec 0.3 50 log 0
# gpu_id may be "cpu". A 7th argument "stable" (or DEALREC_STABLE=1) selects the seed-stable
# variant (expected negatives + seed-free effort). Extra options: PRUNE_ARGS="--max_users 500 ...".
set -e
if [ $# -lt 6 ]; then
    echo "usage: sh prune.sh <data_name> <surrogate> <lamda> <k> <log_name> <gpu_id> [stable]" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck disable=SC1091
. "$REPO/tools/find_python.sh"
STRATEGY=${STRATEGY:-dealrec}
if [ "${7:-}" = "stable" ] || [ "${DEALREC_STABLE:-0}" = "1" ]; then STRATEGY=dealrec-stable; fi
case "$6" in
    cpu|-1) GPU=cpu ;;
    *) GPU=$6; export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-$6}; GPU=0 ;;
esac
cd "$HERE"
# shellcheck disable=SC2086
exec "$PY" prune.py --data_name "$1" --surrogate "$2" --lamda "$3" --k "$4" --log_name "$5" \
    --gpu_id "$GPU" --strategy "$STRATEGY" ${PRUNE_ARGS:-}
