"""Training samples of the surrogate, as in the original ``SeqDataset`` (train mode), and the
full-ranking evaluation inputs.

For a user's training sequence ``items`` (1-based ids here, 0 = padding): inputs
``items[:-2]``, positive targets ``items[1:-1]``, left-padded / cut to the last ``max_len``
positions; one negative per target position drawn uniformly from the items that are not in
the user's training sequence. A sequence shorter than 3 items has no target position: it is
not eligible (loss 0, score 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _left_pad(rows: list[list[int]], width: int) -> torch.Tensor:
    out = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        row = row[-width:]
        if row:
            out[r, width - len(row):] = row
    return torch.from_numpy(out)


def _pad_right(rows: list[list[int]]) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0) or 1
    out = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        out[r, : len(row)] = row
    return torch.from_numpy(out)


@dataclass
class SampleTensors:
    """All users' training samples; row u = user u (user order)."""

    input_ids: torch.Tensor  # [U, L] 1-based item ids, 0 = padding
    target_pos: torch.Tensor  # [U, L]
    user_items: torch.Tensor  # [U, M] the user's distinct training items (1-based), 0-padded
    n_items: int  # number of real items (ids 1..n_items)

    @property
    def eligible(self) -> torch.Tensor:
        return (self.target_pos > 0).any(1)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, idx: torch.Tensor | slice) -> SampleTensors:
        return SampleTensors(self.input_ids[idx], self.target_pos[idx], self.user_items[idx], self.n_items)


def trim_left(
    input_ids: torch.Tensor, target_pos: torch.Tensor, target_neg: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Drop the left columns that are padding in every row (exact for SASRec: padding keys are
    masked and positions are right-aligned)."""
    width = max(int((input_ids > 0).sum(1).max()) if input_ids.numel() else 0, 1)
    neg = target_neg[:, -width:] if target_neg is not None else None
    return input_ids[:, -width:], target_pos[:, -width:], neg


def build_samples(train: list[list[int]], n_items: int, max_len: int = 50) -> SampleTensors:
    """Samples from 0-based training sequences (ids are shifted by +1 here)."""
    seqs = [[i + 1 for i in s] for s in train]
    inputs = [s[:-2] for s in seqs]
    targets = [s[1:-1] for s in seqs]
    return SampleTensors(
        _left_pad(inputs, max_len),
        _left_pad(targets, max_len),
        _pad_right([sorted(set(s)) for s in seqs]),
        n_items,
    )


def sample_negatives(
    samples: SampleTensors, generator: torch.Generator | None = None, chunk: int = 2048
) -> torch.Tensor:
    """One uniform negative per target position, not in the user's training items (0 at padding).

    Vectorised rejection sampling: draw all positions of a chunk of users at once, find
    collisions by binary search in the user's sorted items, redraw only those.
    """
    mask = samples.target_pos > 0
    neg = torch.randint(1, samples.n_items + 1, mask.shape, generator=generator)
    for start in range(0, len(samples), chunk):
        sl = slice(start, start + chunk)
        items = samples.user_items[sl]
        srt = items.masked_fill(items == 0, samples.n_items + 1)  # ascending, sentinel padding
        part, m = neg[sl], mask[sl]
        for _ in range(1000):
            at = torch.searchsorted(srt, part).clamp(max=srt.shape[1] - 1)
            bad = (srt.gather(1, at) == part) & m
            n_bad = int(bad.sum())
            if not n_bad:
                break
            part[bad] = torch.randint(1, samples.n_items + 1, (n_bad,), generator=generator)
        else:  # pragma: no cover - only when a user has interacted with (almost) every item
            raise RuntimeError("cannot draw negatives: some user has interacted with every item")
    return neg * mask


@dataclass
class EvalInputs:
    """Full-ranking evaluation: last-position prediction for users with targets."""

    users: torch.Tensor  # [E] 0-based user indices
    input_ids: torch.Tensor  # [E, L]
    targets: list[list[int]]  # 1-based target ids per evaluated user
    exclude: list[list[int]]  # 1-based items to mask out (already seen)


def build_eval(history: list[list[int]], targets: list[list[int]], max_len: int = 50) -> EvalInputs:
    """Input = the user's history (0-based ids), targets = items to rank; only users with targets."""
    users = [u for u, t in enumerate(targets) if t]
    hist = [[i + 1 for i in history[u]] for u in users]
    return EvalInputs(
        torch.tensor(users, dtype=torch.long),
        _left_pad(hist, max_len),
        [[i + 1 for i in targets[u]] for u in users],
        hist,
    )
