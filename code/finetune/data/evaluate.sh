#!/usr/bin/env bash
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # `sh script.sh` works too
# Usage: bash evaluate.sh <result_file|run_name> <gpu_id|cpu> [data_name] [extra evaluate.py flags]
# A run name (e.g. 0_1024) means ../results/<data_name>/<run_name>.json. Without data_name the
# data set is read from the result file's manifest (the original's evaluate.sh assumed games).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
# shellcheck disable=SC1091
. "$REPO/tools/find_python.sh"
RES=${1:?usage: evaluate.sh <result_file> <gpu_id> [data_name]}
GPU=${2:-cpu}
DATASET=${3:-}
shift $(( $# < 3 ? $# : 3 ))
if [[ ! -f "$RES" && "$RES" != */* && "$RES" != *.json ]]; then
    RES="$HERE/../results/${DATASET:-games}/$RES.json"  # a run name such as 0_1024
fi
ARGS=(--result_file "$RES" --gpu "$GPU")
if [[ -n "$DATASET" ]]; then
    ARGS+=(--data_name "$DATASET")
fi
"$PY" -u "$HERE/evaluate.py" "${ARGS[@]}" "$@"
