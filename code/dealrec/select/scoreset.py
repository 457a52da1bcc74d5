"""The per-sample scores a selection strategy may use, and array conversions shared by the stage."""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

#: Where each score comes from: named in the error raised when a strategy needs a missing score.
SCORE_SOURCES: dict[str, str] = {
    "influence": "the influence score of the surrogate model (paper §4.1, Eq. 8): "
    "computed by the scores stage (influence)",
    "effort": "the effort score of the LLM (paper §4.2, Eq. 12): computed by the scores stage (effort)",
    "el2n": "the EL2N score (Paul et al. 2021) of the surrogate model: "
    "computed by the scores stage (el2n baseline)",
    "grand": "the GraNd score (Paul et al. 2021) of the surrogate model: "
    "computed by the scores stage (grand baseline)",
}
SCORE_NAMES: tuple[str, ...] = tuple(SCORE_SOURCES)


class MissingScoreError(ValueError):
    """A strategy needs a score that the :class:`ScoreSet` does not hold."""


def to_float_array(x: Any, name: str = "scores") -> np.ndarray:
    """A 1-D float numpy array; a float32 input stays float32 (as the original's tensors did)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per sample), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    return arr


def to_mask(eligible: Any, n_samples: int, name: str = "eligible") -> np.ndarray:
    """A 1-D bool numpy array of length ``n_samples``; None means every sample is eligible."""
    if eligible is None:
        return np.ones(n_samples, dtype=bool)
    if isinstance(eligible, torch.Tensor):
        eligible = eligible.detach().cpu().numpy()
    mask = np.asarray(eligible)
    if mask.ndim != 1:
        raise ValueError(f"{name} must be a 1-D bool mask, got shape {mask.shape}")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{name} must be a bool mask (or 0/1 values), got dtype {mask.dtype}")
        mask = mask.astype(bool)
    if len(mask) != n_samples:
        raise ValueError(
            f"length mismatch: {name} has {len(mask)} entries but the scores have {n_samples}; "
            "pass one mask entry per sample"
        )
    return mask


def check_count(n: Any, name: str = "n") -> int:
    """``n`` as a positive int, else a ValueError naming the argument."""
    try:
        value = operator.index(n)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {n!r}") from None
    if isinstance(n, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return value


@dataclass
class ScoreSet:
    """Per-sample scores (one entry per training sample, user order) and the eligibility mask.

    Any score may be None (not computed); ``eligible`` None means every sample is eligible.
    Arrays may be numpy arrays, torch tensors or lists; they are stored as 1-D numpy arrays.
    """

    influence: Any = None
    effort: Any = None
    el2n: Any = None
    grand: Any = None
    eligible: Any = None

    def __post_init__(self) -> None:
        lengths = {}
        for name in SCORE_NAMES:
            value = getattr(self, name)
            if value is not None:
                value = to_float_array(value, name)
                setattr(self, name, value)
                lengths[name] = len(value)
        if len(set(lengths.values())) > 1:
            raise ValueError(f"the scores have different lengths: {lengths}; pass one score per sample")
        if self.eligible is None and not lengths:
            raise ValueError("a ScoreSet needs at least one score or an eligible mask")
        if self.eligible is not None and not lengths:
            self.eligible = to_mask(self.eligible, len(np.asarray(self.eligible)))
        else:
            self.eligible = to_mask(self.eligible, next(iter(lengths.values())))

    def __len__(self) -> int:
        return len(self.eligible)

    def available(self) -> list[str]:
        return [f.name for f in fields(self) if f.name in SCORE_SOURCES and getattr(self, f.name) is not None]

    def require(self, name: str) -> np.ndarray:
        """The score ``name``; a :class:`MissingScoreError` saying what computes it when absent."""
        if name not in SCORE_SOURCES:
            raise ValueError(f"unknown score {name!r}; known scores: {', '.join(SCORE_NAMES)}")
        value = getattr(self, name)
        if value is None:
            have = ", ".join(self.available()) or "none"
            raise MissingScoreError(
                f"this strategy needs the {name!r} score, which is missing (scores present: {have}); "
                f"it is {SCORE_SOURCES[name]}"
            )
        return value
