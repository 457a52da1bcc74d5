"""Token-id rows: padding them into one batch (the one helper for left padding in generation and
grounding, right padding in effort and fine-tuning) and their longest common prefix (computed
once by the effort score and by beam search)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

SIDES = ("left", "right")


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, side: str = "left",
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` [len(rows), longest row], padded on ``side``."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if not len(r):
            continue
        cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, cols] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, cols] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def common_prefix_len(rows: list[list[int]]) -> int:
    """Length of the longest common prefix of token-id lists."""
    if not rows:
        return 0
    first, n = rows[0], min(len(r) for r in rows)
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
        if not n:
            break
    return n
