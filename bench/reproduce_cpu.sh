#!/usr/bin/env bash
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi  # `sh script.sh` works too
# The `cpu` preset of the reproduction study on a 2-core machine (`make reproduce`): two
# processes with one thread each (two OpenMP threads in one process gain less and thrash when
# anything else runs). Extra options go to every step, e.g.
#   bash bench/reproduce_cpu.sh --seeds 0,1,2
# Steps (all cached: rerunning resumes):
#   1. scores (surrogate, influence, effort) || item-title embeddings for grounding
#   2. the strategies' runs, split between two workers
#   3. REPORT.md + report.png in results/games_128/
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup.sh
PY="$ROOT/.venv/bin/python"
export OMP_NUM_THREADS=1
STRATEGIES=${STRATEGIES:-dealrec,random,influence,greedy}
IFS=, read -r -a S <<<"$STRATEGIES"
HALF=$(( (${#S[@]} + 1) / 2 ))
A=$(IFS=,; echo "${S[*]:0:$HALF}")
B=$(IFS=,; echo "${S[*]:$HALF}")
start=$(date +%s)
echo "== 1/3 scores || item embeddings"
"$PY" bench/reproduce.py --preset cpu --strategies "$STRATEGIES" --only prune "$@" &
P1=$!
"$PY" bench/reproduce.py --preset cpu --strategies "$STRATEGIES" --only embed "$@" &
P2=$!
wait $P1; wait $P2
echo "== 2/3 runs: [$A] || [$B]"
"$PY" bench/reproduce.py --preset cpu --strategies "$A" --only runs "$@" &
P1=$!
if [ -n "$B" ]; then "$PY" bench/reproduce.py --preset cpu --strategies "$B" --only runs "$@" & P2=$!; else P2=""; fi
wait $P1; [ -n "$P2" ] && wait $P2
echo "== 3/3 report"
"$PY" bench/reproduce.py --preset cpu --strategies "$STRATEGIES" --only report "$@"
echo "== study finished in $(( $(date +%s) - start )) s"
