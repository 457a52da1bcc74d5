"""A histogram of the selection scores with the strata, the hard-pruned region and the selection."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dealrec.core.files import atomic_path
from dealrec.select.coverage import SelectionResult
from dealrec.select.scoreset import to_float_array, to_mask


def plot_selection(
    overall_scores: Any,
    eligible: Any,
    result: SelectionResult,
    path: str | os.PathLike,
    title: str = "",
    bins: int = 60,
) -> None:
    """Write a PNG: eligible samples' score histogram, strata edges, hard-pruned region, selection.

    ``overall_scores`` are the scores the strategy used (Eq. 13 for DEALRec; ``result.scores``
    holds them). Matplotlib's Agg canvas is used directly (no pyplot, no global backend
    switch); the file is written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = to_float_array(overall_scores, "overall_scores")
    mask = to_mask(eligible, len(values))
    elig = values[mask & np.isfinite(values)]
    selected = values[np.asarray(result.indices, dtype=np.int64)]
    lo, hi = (float(elig.min()), float(elig.max())) if len(elig) else (0.0, 1.0)
    edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.linspace(lo - 0.5, hi + 0.5, bins + 1)

    fig = Figure(figsize=(8, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(elig, bins=edges, color="0.7", label=f"eligible ({len(elig)})")
    ax.hist(selected, bins=edges, color="tab:blue", alpha=0.8, label=f"selected ({len(selected)})")
    if result.hard_pruned:
        cut = float(values[np.asarray(result.hard_pruned, dtype=np.int64)].min())
        ax.axvspan(cut, hi, color="tab:red", alpha=0.15, label=f"hard-pruned ({result.n_hard_pruned})")
    if result.strata_edges:
        for x in [result.score_min, *result.strata_edges]:
            ax.axvline(x, color="tab:green", lw=0.6, alpha=0.7)
        ax.plot([], [], color="tab:green", lw=0.6, label=f"strata edges (k={len(result.strata_edges)})")
    ax.set_xlabel("score")
    ax.set_ylabel("samples")
    ax.set_yscale("log")
    ax.set_title(title or f"{result.method}: {result.n_selected} of {result.n_eligible} eligible")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
