#!/usr/bin/env bash
# Carry the resumable effort stage of a long run between sittings (and machines) through git.
#
#   bash tools/effort_chunks.sh save    [data_name]   # code/prune/scores/<data>/ -> docs/effort/<data>/
#   bash tools/effort_chunks.sh restore [data_name]   # docs/effort/<data>/ -> code/prune/scores/<data>/
#
# What travels: effort.chunks/ (key.json + one chunk_*.pt of 512 scores per finished chunk, a few KB
# each) and, once the stage has finished, effort.pt with its manifest. `restore` never overwrites
# newer local chunks. Then rerun the same prune command: it skips the chunks already there. The
# chunks are reused only under the same key (data file, model, cutoff, LoRA settings, precision):
# a run made with bf16 on a CPU with native bf16 resumes on a CPU without it only with
# DEALREC_NATIVE_BF16=1 (bf16 then runs emulated, slower).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
what="${1:-}"
data="${2:-games}"
live="$ROOT/code/prune/scores/$data"
kept="$ROOT/docs/effort/$data"
case "$what" in
    save)
        [[ -d "$live/effort.chunks" || -f "$live/effort.pt" ]] || { echo "effort_chunks: nothing under $live" >&2; exit 2; }
        mkdir -p "$kept/effort.chunks"
        if [[ -d "$live/effort.chunks" ]]; then cp -p "$live"/effort.chunks/* "$kept/effort.chunks/"; fi
        for f in effort.pt effort.pt.json; do [[ -f "$live/$f" ]] && cp -p "$live/$f" "$kept/$f"; done
        echo "effort_chunks: saved $(ls "$kept/effort.chunks" | grep -c '^chunk_' || true) chunk(s) to $kept"
        ;;
    restore)
        [[ -d "$kept" ]] || { echo "effort_chunks: nothing under $kept" >&2; exit 2; }
        mkdir -p "$live/effort.chunks"
        if [[ -d "$kept/effort.chunks" ]]; then cp -p -n "$kept"/effort.chunks/* "$live/effort.chunks/"; fi
        for f in effort.pt effort.pt.json; do [[ -f "$kept/$f" ]] && cp -p -n "$kept/$f" "$live/$f"; done
        echo "effort_chunks: restored $(ls "$live/effort.chunks" | grep -c '^chunk_' || true) chunk(s) to $live"
        ;;
    *) echo "usage: bash tools/effort_chunks.sh save|restore [data_name]" >&2; exit 2 ;;
esac
