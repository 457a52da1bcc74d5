#!/usr/bin/env bash
# Carry the resumable effort stage of a long run between sessions (and machines) through git.
#
#   bash tools/effort_chunks.sh save    [data_name] [target]  # code/prune/scores/<data>/ -> records/effort/<data>/
#   bash tools/effort_chunks.sh restore [data_name] [target]  # records/effort/<data>/ -> code/prune/scores/<data>/
#
# target: the effort target (lora_B, the default: effort.*; base, for `prune.sh ... stable`: effort_base.*).
# What travels: while the stage runs, <name>.chunks/ (key.json + one chunk_*.pt of 512 scores per
# finished chunk, a few KB each); once it has finished, <name>.pt with its manifest instead.
# `restore` never overwrites local files. Then rerun the same prune command: it skips the chunks already there. The
# chunks are reused only under the same key (data file, model, cutoff, LoRA settings, precision):
# a run made with bf16 on a CPU with native bf16 resumes on a CPU without it only with
# DEALREC_NATIVE_BF16=1 (bf16 then runs emulated, slower).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
what="${1:-}"
data="${2:-games}"
target="${3:-lora_B}"
case "$target" in lora_B) name=effort ;; *) name="effort_$target" ;; esac
live="$ROOT/code/prune/scores/$data"
kept="$ROOT/records/effort/$data"
case "$what" in
    save)
        [[ -d "$live/$name.chunks" || -f "$live/$name.pt" ]] || { echo "effort_chunks: no $name under $live" >&2; exit 2; }
        mkdir -p "$kept"
        if [[ -f "$live/$name.pt" ]]; then  # finished: the scores replace the chunks
            cp -p "$live/$name.pt" "$live/$name.pt.json" "$kept/"
            rm -rf "$kept/$name.chunks"
            echo "effort_chunks: saved $name.pt to $kept"
        else
            mkdir -p "$kept/$name.chunks"
            cp -p "$live/$name.chunks"/* "$kept/$name.chunks/"
            echo "effort_chunks: saved $(ls "$kept/$name.chunks" | grep -c '^chunk_' || true) chunk(s) of $name to $kept"
        fi
        ;;
    restore)
        [[ -d "$kept/$name.chunks" || -f "$kept/$name.pt" ]] || { echo "effort_chunks: no $name under $kept" >&2; exit 2; }
        mkdir -p "$live"
        if [[ -f "$kept/$name.pt" ]]; then
            for f in "$name.pt" "$name.pt.json"; do cp -p -n "$kept/$f" "$live/$f"; done
            echo "effort_chunks: restored $name.pt to $live"
        else
            mkdir -p "$live/$name.chunks"
            cp -p -n "$kept/$name.chunks"/* "$live/$name.chunks/"
            echo "effort_chunks: restored $(ls "$live/$name.chunks" | grep -c '^chunk_' || true) chunk(s) of $name to $live"
        fi
        ;;
    *) echo "usage: bash tools/effort_chunks.sh save|restore [data_name] [effort_target]" >&2; exit 2 ;;
esac
