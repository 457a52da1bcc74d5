"""Coverage-enhanced sample selection (DEALRec, Lin et al. SIGIR 2024, §4.3).

The overall score of a sample is ``minmax(influence) + λ · minmax(effort)`` (paper Eq. 13).
Selection then follows the original ``code/prune/prune.py``:

1. hard pruning: sort the (eligible) scores in descending order and drop the first
   ``floor(hard_prune · N)`` samples (the highest scores);
2. split the remaining score range ``[s_min, s_max]`` into ``k`` equal-width strata with upper
   edges ``min(s_min + i · (s_max − s_min) / k, s_max)``, i = 1..k; a sample belongs to the
   first stratum whose upper edge is ≥ its score;
3. while strata remain: drop the empty ones, take the smallest stratum, give it the budget
   ``min(|stratum|, floor(m / number of strata left))``, draw that many of its members at
   random, remove the stratum and subtract the budget from ``m`` (initially ``n``).

Differences from the original, all deliberate:

- only eligible samples take part (the original had no mask);
- the last upper edge is set to ``s_max`` exactly: in float32 the original's
  ``s_min + k · interval`` can round just below ``s_max`` (about 4% of random cases), and the
  maximum kept sample then fell into no stratum and could never be selected;
- ties are broken deterministically: among equal scores at the hard-pruning boundary the
  lower sample index is pruned first, and among strata of equal size the lower stratum index
  is served first (this is also what the original's stable ``sorted(..., key=len)`` did);
- the draw uses ``numpy.random.default_rng(seed)`` instead of Python's global ``random``.

The per-stratum counts are a deterministic function of the scores, ``n``, ``k`` and
``hard_prune``; only which members of a stratum are drawn depends on the seed.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dealrec.select.scoreset import check_count, to_float_array, to_mask

LOG = logging.getLogger("dealrec")


@dataclass
class SelectionResult:
    """The outcome of a selection strategy.

    ``stratum_of`` has one entry per sample (all samples, not only eligible ones): the stratum
    index of a sample that took part in the stratified draw, -1 otherwise (ineligible,
    hard-pruned, or a strategy without strata). ``scores`` is the per-sample score the strategy
    ranked or stratified on (None for ``random``). Both are left out of :meth:`to_dict` unless
    ``per_sample`` is set.
    """

    method: str
    indices: list[int]
    n_requested: int
    n_total: int
    n_eligible: int
    seed: int
    n_hard_pruned: int = 0
    hard_pruned: list[int] = field(default_factory=list)
    score_min: float | None = None
    strata_edges: list[float] = field(default_factory=list)
    sizes_per_stratum: list[int] = field(default_factory=list)
    counts_per_stratum: list[int] = field(default_factory=list)
    stratum_order: list[int] = field(default_factory=list)
    shortfall: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    stratum_of: np.ndarray | None = field(default=None, repr=False)
    scores: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_selected(self) -> int:
        return len(self.indices)

    def to_dict(self, per_sample: bool = False) -> dict[str, Any]:
        """A JSON-ready summary; ``per_sample`` adds ``stratum_of`` and ``scores`` (length N)."""
        out = {
            "method": self.method,
            "n_requested": self.n_requested,
            "n_selected": self.n_selected,
            "shortfall": self.shortfall,
            "n_total": self.n_total,
            "n_eligible": self.n_eligible,
            "n_hard_pruned": self.n_hard_pruned,
            "seed": self.seed,
            "params": dict(self.params),
            "score_min": self.score_min,
            "strata_edges": list(self.strata_edges),
            "sizes_per_stratum": list(self.sizes_per_stratum),
            "counts_per_stratum": list(self.counts_per_stratum),
            "stratum_order": list(self.stratum_order),
            "hard_pruned": list(self.hard_pruned),
            "indices": list(self.indices),
        }
        if per_sample:
            out["stratum_of"] = None if self.stratum_of is None else self.stratum_of.tolist()
            out["scores"] = None if self.scores is None else self.scores.tolist()
        return out


def check_finite(scores: np.ndarray, mask: np.ndarray, name: str = "scores") -> None:
    """ValueError when an eligible sample has a NaN or infinite score."""
    bad = np.flatnonzero(mask & ~np.isfinite(scores))
    if len(bad):
        raise ValueError(
            f"{name} has {len(bad)} NaN/infinite value(s) among eligible samples "
            f"(first indices: {bad[:5].tolist()}); fix the score computation or mark them ineligible"
        )


def minmax(x: Any, eligible: Any = None) -> np.ndarray:
    """Min-max normalisation over the eligible samples (as in the original ``prune.py``).

    Eligible samples map to [0, 1]; when all eligible values are equal they map to 0.
    Ineligible samples are 0. The input dtype is kept (float32 stays float32).
    """
    arr = to_float_array(x, "x")
    mask = to_mask(eligible, len(arr))
    check_finite(arr, mask, "x")
    out = np.zeros_like(arr)
    if not mask.any():
        return out
    vals = arr[mask]
    lo, hi = vals.min(), vals.max()
    if hi > lo:
        out[mask] = (vals - lo) / (hi - lo)
    return out


def overall_score(influence: Any, effort: Any, lamda: float, eligible: Any = None) -> np.ndarray:
    """The overall score ``minmax(influence) + λ · minmax(effort)`` (paper Eq. 13); λ ≥ 0.

    ``effort`` may be None only when ``lamda == 0``.
    """
    if not (isinstance(lamda, numbers.Real) and math.isfinite(lamda)) or lamda < 0:
        raise ValueError(
            f"lamda (λ, the weight of the effort score) must be a finite number ≥ 0, got {lamda!r}"
        )
    inf_norm = minmax(influence, eligible)
    if lamda == 0 and effort is None:
        return inf_norm
    eff_norm = minmax(effort, eligible)
    if len(eff_norm) != len(inf_norm):
        raise ValueError(f"length mismatch: influence has {len(inf_norm)} scores, effort has {len(eff_norm)}")
    return inf_norm + lamda * eff_norm


def _check_args(n: Any, k: Any, hard_prune: Any) -> tuple[int, int, float]:
    n = check_count(n, "n")
    k = check_count(k, "k")
    if not isinstance(hard_prune, numbers.Real) or not 0 <= hard_prune < 1:
        raise ValueError(f"hard_prune must be a fraction in [0, 1), got {hard_prune!r}")
    return n, k, float(hard_prune)


def hard_prune_split(
    scores: np.ndarray, mask: np.ndarray, hard_prune: float
) -> tuple[np.ndarray, np.ndarray]:
    """(pruned, kept) sample indices: the top ``floor(hard_prune · N_eligible)`` scores are pruned.

    Descending order, ties broken by the lower sample index first (a stable sort).
    """
    elig = np.flatnonzero(mask)
    order = elig[np.argsort(-scores[elig], kind="stable")]
    n_prune = math.floor(hard_prune * len(elig))
    return order[:n_prune], order[n_prune:]


def strata_edges(s_min: Any, s_max: Any, k: int) -> np.ndarray:
    """The ``k`` upper edges ``min(s_min + i · interval, s_max)``, i = 1..k; the last is ``s_max``."""
    dtype = np.result_type(s_min, s_max)
    interval = (s_max - s_min) / dtype.type(k)
    edges = np.minimum(s_min + interval * np.arange(1, k + 1, dtype=dtype), s_max)
    edges[-1] = s_max
    return edges


def assign_strata(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The stratum of each value: the first one whose upper edge is ≥ the value."""
    return np.searchsorted(edges, values, side="left")


def stratum_budgets(sizes: np.ndarray, n: int) -> tuple[np.ndarray, list[int]]:
    """Per-stratum counts by the smallest-stratum-first rule of §4.3, and the serving order.

    Non-empty strata are served by increasing size (ties: lower stratum index first); each gets
    ``min(size, floor(m / strata left))`` and ``m`` shrinks by that. This loops over strata,
    never over samples.
    """
    order = [int(i) for i in np.argsort(sizes, kind="stable") if sizes[i] > 0]
    counts = np.zeros(len(sizes), dtype=np.int64)
    m = n
    for pos, s in enumerate(order):
        budget = min(int(sizes[s]), m // (len(order) - pos))
        counts[s] = budget
        m -= budget
    return counts, order


def _draw(
    kept: np.ndarray, stratum: np.ndarray, counts: np.ndarray, order: list[int], seed: int
) -> np.ndarray:
    """Draw ``counts[s]`` members of each stratum without replacement, strata in serving order."""
    rng = np.random.default_rng(seed)
    grouped = kept[np.lexsort((kept, stratum))]  # by stratum, then by sample index
    sizes = np.bincount(stratum, minlength=len(counts))
    ends = np.cumsum(sizes)
    starts = ends - sizes
    picked = [
        rng.choice(grouped[starts[s] : ends[s]], size=int(counts[s]), replace=False)
        for s in order
        if counts[s] > 0
    ]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def coverage_select(
    scores: Any,
    eligible: Any,
    n: int,
    k: int,
    hard_prune: float = 0.1,
    seed: int = 0,
    allow_shortfall: bool = False,
) -> SelectionResult:
    """Coverage-enhanced sample selection (paper §4.3; original ``prune.py``), vectorised.

    Args:
        scores: one score per sample (numpy array, tensor or list); float32 stays float32.
        eligible: bool mask of the samples that may be selected (None: all).
        n: the number of samples to select.
        k: the number of equal-width score strata.
        hard_prune: the fraction of eligible samples with the highest scores to drop first.
        seed: seeds ``numpy.random.default_rng`` for the draw inside each stratum.
        allow_shortfall: when ``n`` exceeds the pool left after hard pruning, select the whole
            pool and report the shortfall instead of raising.

    Returns:
        A :class:`SelectionResult`; ``indices`` are sorted 0-based sample indices.
    """
    n, k, hard_prune = _check_args(n, k, hard_prune)
    values = to_float_array(scores, "scores")
    mask = to_mask(eligible, len(values))
    check_finite(values, mask, "scores")
    pruned, kept = hard_prune_split(values, mask, hard_prune)
    if n > len(kept) and not allow_shortfall:
        raise ValueError(
            f"n={n} is larger than the pool of {len(kept)} samples left to select from "
            f"({int(mask.sum())} eligible, {len(pruned)} of them hard-pruned with hard_prune={hard_prune}); "
            "lower n or hard_prune"
        )
    stratum_of = np.full(len(values), -1, dtype=np.int64)
    result = SelectionResult(
        method="coverage",
        indices=[],
        n_requested=n,
        n_total=len(values),
        n_eligible=int(mask.sum()),
        seed=seed,
        n_hard_pruned=len(pruned),
        hard_pruned=sorted(pruned.tolist()),
        params={"k": k, "hard_prune": hard_prune},
        stratum_of=stratum_of,
        scores=values,
    )
    if len(kept):
        kept_scores = values[kept]
        edges = strata_edges(kept_scores.min(), kept_scores.max(), k)
        stratum = assign_strata(kept_scores, edges)
        sizes = np.bincount(stratum, minlength=k)
        counts, order = stratum_budgets(sizes, n)
        stratum_of[kept] = stratum
        result.indices = _draw(kept, stratum, counts, order, seed).tolist()
        result.score_min = float(kept_scores.min())
        result.strata_edges = edges.astype(float).tolist()
        result.sizes_per_stratum = sizes.tolist()
        result.counts_per_stratum = counts.tolist()
        result.stratum_order = order
    result.shortfall = n - len(result.indices)
    if result.shortfall:
        LOG.warning(
            "coverage selection: selected %d of the %d requested samples (shortfall %d)",
            len(result.indices),
            n,
            result.shortfall,
        )
    return result
