#!/usr/bin/env bash
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # `sh script.sh` works too
# Usage: bash gen_fewshot.sh <data_name> <n_sample> [extra gen_fewshot.py flags]
# e.g.   bash gen_fewshot.sh games 1024 --max_test_users 50 --cutoff_len 256
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
# shellcheck disable=SC1091
. "$REPO/tools/find_python.sh"
DATASET=${1:?usage: gen_fewshot.sh <data_name> <n_sample>}
N_FEWSHOT=${2:?usage: gen_fewshot.sh <data_name> <n_sample>}
shift 2
"$PY" -u "$HERE/gen_fewshot.py" --data_name "$DATASET" --n_sample "$N_FEWSHOT" "$@"
