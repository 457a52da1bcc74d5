#!/bin/sh
# Usage: sh prepare.sh <interactions> <items> <name> [prepare.py options ...]
#   e.g. sh prepare.sh ratings.csv movies.csv ml-latest-small --item_noun movies
# Writes data/<name>/ (or --out_dir <dir>/<name>/) in the DEALRec authors' format; every further
# argument goes to prepare.py unchanged (--kcore, --split, --ratios, --min_rating, --item_noun, ...).
set -e
if [ $# -lt 3 ]; then
    echo "usage: sh prepare.sh <interactions> <items> <name> [prepare.py options]" >&2
    exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
REPO="$(cd "$HERE/../.." && pwd)"
# shellcheck disable=SC1091
. "$REPO/tools/find_python.sh"
INTERACTIONS=$1; ITEMS=$2; NAME=$3
shift 3
exec "$PY" "$HERE/prepare.py" --interactions "$INTERACTIONS" --items "$ITEMS" --name "$NAME" "$@"
