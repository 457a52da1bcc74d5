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


def left_pad(rows: list[list[int]], width: int) -> torch.Tensor:
    """[len(rows), width] item ids, each row's last ``width`` items at the right, 0 = padding."""
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
        left_pad(inputs, max_len),
        left_pad(targets, max_len),
        _pad_right([sorted(set(s)) for s in seqs]),
        n_items,
    )


def member_keys(samples: SampleTensors) -> torch.Tensor:
    """Sorted 1-D keys ``user · (n_items + 1) + item`` of every (user, training item) pair."""
    items = samples.user_items
    rows = torch.arange(len(samples)).unsqueeze(1).expand_as(items)
    seen = items > 0
    return rows[seen] * (samples.n_items + 1) + items[seen]  # row-major, items ascending: sorted


def sample_negatives(
    samples: SampleTensors, generator: torch.Generator | None = None, chunk: int = 2048
) -> torch.Tensor:
    """One uniform negative per target position, not in the user's training items (0 at padding).

    Vectorised rejection sampling: draw all positions at once, then per chunk of users find the
    target positions whose draw collides with the user's items (binary search of
    ``user·(n_items+1)+item`` in :func:`member_keys`) and redraw only those, in row-major order.
    Only target positions are checked, but the random stream (and so the result) is the same as
    checking every position of the chunk.
    """
    mask = samples.target_pos > 0
    neg = torch.randint(1, samples.n_items + 1, mask.shape, generator=generator)
    keys = member_keys(samples)
    if keys.numel():
        stride = samples.n_items + 1
        for start in range(0, len(samples), chunk):
            rows, cols = mask[start:start + chunk].nonzero(as_tuple=True)
            if not rows.numel():
                continue
            rows = rows + start
            base = rows * stride
            part = neg[rows, cols]
            for _ in range(1000):
                key = base + part
                at = torch.searchsorted(keys, key).clamp(max=keys.numel() - 1)
                bad = keys[at] == key
                n_bad = int(bad.sum())
                if not n_bad:
                    break
                part[bad] = torch.randint(1, samples.n_items + 1, (n_bad,), generator=generator)
            else:  # pragma: no cover - only when a user has interacted with (almost) every item
                raise RuntimeError("cannot draw negatives: some user has interacted with every item")
            neg[rows, cols] = part
    return neg * mask


def sample_negatives_reference(
    samples: SampleTensors, generator: torch.Generator | None = None, chunk: int = 2048
) -> torch.Tensor:
    """The slow, obvious version of :func:`sample_negatives` (per chunk, every position of the
    padded ``[users, max_len]`` grid is checked against the user's sorted items); kept as the
    reference that tests and benchmarks compare the fast one with. Same random stream, same result."""
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
        else:  # pragma: no cover
            raise RuntimeError("cannot draw negatives: some user has interacted with every item")
    return neg * mask


def build_cloze_samples(train: list[list[int]], n_items: int, max_len: int = 50) -> SampleTensors:
    """Cloze (BERT4Rec) samples from 0-based training sequences, before masking.

    A user's sample is ``items[:-1]`` (1-based, the last ``max_len`` kept, left-padded): the same
    items that the next-item sample reads (its inputs ``items[:-2]`` plus its last target), so
    both objectives see the same data and a user is eligible under both exactly when it has
    ≥ 3 training items (shorter sequences give an empty sample). ``target_pos`` holds the
    unmasked sequence (every real position is a candidate target) until
    :func:`draw_cloze_masks` picks the masked positions."""
    seqs = [[i + 1 for i in s][:-1] if len(s) >= 3 else [] for s in train]
    ids = left_pad(seqs, max_len)
    return SampleTensors(ids, ids.clone(), _pad_right([sorted({i + 1 for i in s}) for s in train]), n_items)


def draw_cloze_masks(
    samples: SampleTensors, mask_prob: float, mask_id: int, generator: torch.Generator | None = None
) -> SampleTensors:
    """Mask each real position of the (unmasked) cloze samples with probability ``mask_prob``
    (BERT4Rec: the item is replaced by the ``[mask]`` token ``mask_id``); a sample that drew no
    mask gets one at a uniformly drawn real position, so every non-empty sample has a target.
    Returns samples whose ``input_ids`` hold the masked sequence and ``target_pos`` the original
    item at masked positions (0 elsewhere). Deterministic given the generator's state."""
    seq = samples.target_pos
    real = seq > 0
    masked = (torch.rand(seq.shape, generator=generator) < mask_prob) & real
    none = real.any(1) & ~masked.any(1)
    if bool(none.any()):
        pick = (torch.rand(seq.shape, generator=generator) * real).argmax(1)
        rows = none.nonzero(as_tuple=True)[0]
        masked[rows, pick[rows]] = True
    return SampleTensors(
        torch.where(masked, torch.full_like(seq, mask_id), seq), seq * masked, samples.user_items, samples.n_items
    )


# Fixed cost of one more bucket's forward/backward pass, in padded positions: measured on Games
# with bench/bench_surrogate.py (2 CPU threads; 256-4096 are within 15 % of each other).
DEFAULT_BUCKET_OVERHEAD = 1024.0


def length_buckets(lengths: torch.Tensor, overhead: float = DEFAULT_BUCKET_OVERHEAD) -> list[torch.Tensor]:
    """Split a batch's rows into length buckets for exact trimmed computation (issue: padding).

    Rows of length 0 (no target position) are left out. The rows are sorted by length and cut
    into consecutive groups so that ``Σ_b (overhead + n_b · w_b)`` is smallest, ``w_b`` being
    the group's longest row and ``overhead`` the fixed cost of one more forward pass, in
    token units (dynamic programming over the distinct lengths, ≤ ``max_len`` of them).
    Returns the groups' row indices, shortest group first.
    """
    keep = (lengths > 0).nonzero(as_tuple=True)[0]
    if not keep.numel():
        return []
    srt = torch.sort(lengths[keep], stable=True)
    rows = keep[srt.indices]
    vals, counts = torch.unique_consecutive(srt.values, return_counts=True)
    vals, cum = vals.tolist(), [0] + torch.cumsum(counts, 0).tolist()
    m = len(vals)
    best, cut = [0.0] + [float("inf")] * m, [0] * (m + 1)
    for j in range(1, m + 1):
        w = vals[j - 1]
        for i in range(j):
            c = best[i] + overhead + (cum[j] - cum[i]) * w
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], m
    while j > 0:
        groups.append(rows[cum[cut[j]]:cum[j]])
        j = cut[j]
    return groups[::-1]


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
        left_pad(hist, max_len),
        [[i + 1 for i in targets[u]] for u in users],
        hist,
    )
