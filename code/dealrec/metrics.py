"""Top-K ranking metrics, one definition for the surrogate and the grounded LLM evaluation.

Definitions follow the original ``computeTopNAccuracy`` (users without targets are skipped):

- Precision@K = hits / K
- Recall@K    = hits / #targets
- NDCG@K      = sum_{hit at rank r < K} 1/log2(r+2)  /  sum_{i < min(#targets, K)} 1/log2(i+2)
- MRR@K       = 1/(r+1) for the first hit at rank r < K, else 0

A ranked list shorter than K (fewer items than K) simply has no entries past its end.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_KS = (5, 10, 20, 50)
METRIC_NAMES = ("Precision", "Recall", "NDCG", "MRR")


def hit_matrix(ranked: np.ndarray, targets: Sequence[Sequence[int]]) -> np.ndarray:
    """Boolean [U, L]: whether ``ranked[u, r]`` is one of user u's targets."""
    ranked = np.asarray(ranked)
    hits = np.zeros(ranked.shape, dtype=bool)
    for u, t in enumerate(targets):
        if len(t):
            hits[u] = np.isin(ranked[u], np.asarray(list(t)))
    return hits


def hit_ranks(ranked: np.ndarray | torch.Tensor, targets: Sequence[Sequence[int]]) -> list[list[int]]:
    """Per user, the 0-based rank of each of its targets (distinct, ascending ids) in its ranked
    list, or -1 when the target is not in it: the compact per-user record from which
    :func:`dealrec.study.paired.metrics_from_ranks` recomputes Recall/NDCG@K for every K up to the
    list's length (``ranked`` holds distinct items per row, as every ranking here does)."""
    if isinstance(ranked, torch.Tensor):
        ranked = ranked.cpu().numpy()
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or len(ranked) != len(targets):
        raise ValueError(f"ranked must be [users, L] aligned with targets; got {ranked.shape} vs {len(targets)}")
    out = []
    for row, t in zip(ranked.tolist(), targets):
        pos = {item: r for r, item in enumerate(row)}
        out.append([pos.get(i, -1) for i in sorted({int(i) for i in t})])
    return out


def topk_metrics(
    ranked: np.ndarray | torch.Tensor,
    targets: Sequence[Sequence[int]],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, list[float]]:
    """Mean Precision/Recall/NDCG/MRR at each K over users that have targets.

    ``ranked[u]`` is user u's ranked item list (best first, at least max(ks) long unless the
    catalogue is smaller); ``targets[u]`` the set of relevant items (duplicates ignored).
    """
    if isinstance(ranked, torch.Tensor):
        ranked = ranked.cpu().numpy()
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or len(ranked) != len(targets):
        raise ValueError(f"ranked must be [users, L] aligned with targets; got {ranked.shape} vs {len(targets)}")
    targets = [sorted(set(int(i) for i in t)) for t in targets]
    keep = np.array([len(t) > 0 for t in targets], dtype=bool)
    out: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    if not keep.any():
        for name in METRIC_NAMES:
            out[name] = [0.0 for _ in ks]
        out["n_users"] = 0  # type: ignore[assignment]
        return out
    ranked = ranked[keep]
    tg = [t for t, k in zip(targets, keep) if k]
    n_t = np.array([len(t) for t in tg], dtype=np.float64)
    hits_full = hit_matrix(ranked, tg)
    length = hits_full.shape[1]
    discount = 1.0 / np.log2(np.arange(max(max(ks), length)) + 2.0)
    for k in ks:
        hits = hits_full[:, : min(k, length)]
        n_hit = hits.sum(1)
        dcg = (hits * discount[: hits.shape[1]]).sum(1)
        ideal_n = np.minimum(n_t, k).astype(int)
        idcg = np.cumsum(discount[:k])[ideal_n - 1]
        first = np.where(hits.any(1), hits.argmax(1), -1)
        mrr = np.where(first >= 0, 1.0 / (np.abs(first) + 1.0), 0.0)
        out["Precision"].append(float(np.mean(n_hit / k)))
        out["Recall"].append(float(np.mean(n_hit / n_t)))
        out["NDCG"].append(float(np.mean(dcg / idcg)))
        out["MRR"].append(float(np.mean(mrr)))
    out["n_users"] = int(keep.sum())  # type: ignore[assignment]
    return out


def topk_from_scores(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the ``k`` highest scores per row; ``exclude`` (bool, same shape) gets -inf.

    Masking uses -inf, not 0 as the original did (0 let masked items outrank items with
    negative scores).
    """
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    k = min(k, scores.shape[1])
    return torch.topk(scores, k, dim=1).indices


def format_table(metrics: dict[str, list[float]], ks: Sequence[int] = DEFAULT_KS, names: Sequence[str] = ("Recall", "NDCG")) -> str:
    """A small text table: one row per metric, one column per K, the columns aligned for any
    metric name."""
    width = max(len("metric"), *(len(n) for n in names)) + 2
    head = f"{'metric':<{width}s}" + "".join(f"{'@' + str(k):<9s}" for k in ks)
    rows = [head.rstrip()]
    for name in names:
        rows.append((f"{name:<{width}s}" + "".join(f"{v:<9.4f}" for v in metrics[name])).rstrip())
    return "\n".join(rows)
