"""Ranking the test users' next items with constrained beam search, and scoring the ranking.

Each test user's history (train + validation items, as BIGRec's test prompts) is decoded with a
beam of ``num_beams`` over the valid semantic IDs; the finished beams, best score first, are the
user's ranked list (ties: lower item id first). Items outside the beam come after it and are not
listed: a list holds at most ``num_beams`` items, padded with -1 (never a target) when fewer valid
IDs finished, so a target outside the beam is a miss at every K ≤ ``num_beams``. Metrics are
:func:`dealrec.metrics.topk_metrics` over the full catalogue, as grounding computes them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dealrec.core.files import write_compact_json, write_json
from dealrec.core.logs import LOG
from dealrec.metrics import format_table, hit_ranks, topk_metrics
from dealrec.tiger.model import beam_search, history_inputs
from dealrec.tiger.trie import PrefixTrie


def metrics_path(result_file: str | os.PathLike) -> Path:
    """``<result>.metrics.json`` (the name grounding gives it)."""
    p = Path(result_file)
    return p.with_name(p.stem + ".metrics.json")


def hits_path(result_file: str | os.PathLike) -> Path:
    """``<result>.hits.json``: per test user the 0-based rank of each target in its list, or -1."""
    p = Path(result_file)
    return p.with_name(p.stem + ".hits.json")


def rank_users(model: Any, histories: Sequence[Sequence[int]], item_tokens: torch.Tensor, trie: PrefixTrie,
               num_beams: int, max_history: int, batch_size: int = 32,
               progress: bool = True) -> tuple[np.ndarray, list[list[float]]]:
    """([users, num_beams] ranked item ids padded with -1, per user the scores of its items)."""
    ranked = np.full((len(histories), num_beams), -1, dtype=np.int64)
    scores: list[list[float]] = []
    order = sorted(range(len(histories)), key=lambda i: min(len(histories[i]), max_history))  # similar widths
    by_user: dict[int, list[tuple[int, float]]] = {}
    bar = tqdm(total=len(histories), desc="TIGER decode", unit="user", disable=not progress)
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        ids, mask = history_inputs([histories[i] for i in idx], item_tokens, max_history)
        for i, found in zip(idx, beam_search(model, ids, mask, trie, num_beams)):
            by_user[i] = found
        bar.update(len(idx))
    bar.close()
    for i in range(len(histories)):
        found = by_user[i]
        ranked[i, : len(found)] = [item for item, _ in found]
        scores.append([round(score, 4) for _, score in found])
    return ranked, scores


def score_ranking(result_file: str | os.PathLike, users: Sequence[int], targets: Sequence[Sequence[int]],
                  ranked: np.ndarray, scores: Sequence[Sequence[float]], ks: Sequence[int],
                  info: dict[str, Any], write: bool = True) -> dict[str, Any]:
    """Write the result file (per user: ``user``, ``target_ids``, ``ranked``, ``scores``), the
    per-user hit ranks and ``<result>.metrics.json``; returns the metrics report."""
    ks = sorted(int(k) for k in ks)
    m = topk_metrics(ranked, targets, ks)
    short = int((ranked[:, ks[-1] - 1] < 0).sum()) if ranked.shape[1] >= ks[-1] else len(users)
    report: dict[str, Any] = {
        "result_file": str(result_file), **info, "ks": ks,
        "Recall": m["Recall"], "NDCG": m["NDCG"], "Precision": m["Precision"], "MRR": m["MRR"],
        "n_users": m["n_users"], "n_predictions": len(users), "short_lists": short,
        "ranking": f"constrained beam search over the valid semantic IDs, {ranked.shape[1]} beams; "
                   "items outside the beam are misses; ties by lower item id",
    }
    per_user = {"users": [int(u) for u in users], "ks": ks, "hit_ranks": hit_ranks(ranked, targets)}
    if write:
        records = [{"user": int(u), "target_ids": [int(t) for t in tg], "ranked": [int(i) for i in row if i >= 0],
                    "scores": list(sc)} for u, tg, row, sc in zip(users, targets, ranked.tolist(), scores)]
        write_compact_json(result_file, records)
        write_json(metrics_path(result_file), report)
        write_compact_json(hits_path(result_file), per_user)
    LOG.info("%s\n%s", result_file, format_table(m, ks))
    if short:
        LOG.warning("%d of %d users have fewer than %d items in their beam", short, len(users), ks[-1])
    report["per_user"] = per_user
    return report


def decode_and_score(model: Any, histories: Sequence[Sequence[int]], users: Sequence[int],
                     targets: Sequence[Sequence[int]], item_tokens: torch.Tensor, trie: PrefixTrie,
                     result_file: str | os.PathLike, ks: Sequence[int], num_beams: int, max_history: int,
                     batch_size: int = 32, progress: bool = True, info: dict[str, Any] | None = None,
                     write: bool = True) -> dict[str, Any]:
    """:func:`rank_users` then :func:`score_ranking`; the report carries the decoding time."""
    if num_beams < max(ks):
        raise ValueError(f"--num_beams {num_beams} is below the largest cutoff {max(ks)}; the ranking must be "
                         "at least as long as the largest K")
    t0 = time.perf_counter()
    ranked, scores = rank_users(model, histories, item_tokens, trie, num_beams, max_history, batch_size, progress)
    seconds = round(time.perf_counter() - t0, 1)
    LOG.info("decoded %d test users in %.1f s (%d beams)", len(histories), seconds, num_beams)
    return score_ranking(result_file, users, targets, ranked, scores, ks,
                         {**(info or {}), "decode_seconds": seconds}, write)
