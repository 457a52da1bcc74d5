"""The surrogate's next-item BCE loss, per sample (paper §4.1; original ``cross_entropy``).

Per target position t with hidden state h_t, positive item p_t and negative n_t:
``-log σ(h_t·e_p) - log(1 - σ(h_t·e_n))`` (written as softplus for stability; the original adds
1e-24 inside the logs). A sample's loss L(s) is the mean over its target positions; a batch
loss is the mean over all target positions of the batch (as the original).

``negatives="expected"`` replaces the sampled negative term by its exact expectation under
the sampling distribution (uniform over the items the user has not interacted with):
``mean_{j ∉ S_u} -log(1 - σ(h_t·e_j))`` — the quantity that one sampled negative estimates.

:func:`cloze_loss_terms` is BERT4Rec's objective: full-softmax cross-entropy over all items at
the masked positions (no negatives). Every loss returns the same per-sample (sum, count) pair,
so batching, v, the Hessian-vector products and the scores treat them alike.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dealrec.surrogate.samples import DEFAULT_BUCKET_OVERHEAD, length_buckets, trim_left

NEGATIVE_MODES = ("sampled", "expected")


def sample_loss_terms(
    model: nn.Module,
    input_ids: torch.Tensor,
    target_pos: torch.Tensor,
    target_neg: torch.Tensor | None = None,
    user_items: torch.Tensor | None = None,
    negatives: str = "sampled",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (sum of position losses [B], number of target positions [B])."""
    seq_out = model(input_ids)
    emb = model.item_embeddings.weight
    mask = target_pos > 0
    pos_logit = (seq_out * emb[target_pos]).sum(-1)
    terms = F.softplus(-pos_logit)
    if negatives == "sampled":
        if target_neg is None:
            raise ValueError("negatives='sampled' needs target_neg")
        neg_logit = (seq_out * emb[target_neg]).sum(-1)
        terms = terms + F.softplus(neg_logit)
        sums = (terms * mask).sum(1)
    elif negatives == "expected":
        if user_items is None:
            raise ValueError("negatives='expected' needs user_items")
        sums = (terms * mask).sum(1)
        rows = mask.nonzero(as_tuple=True)[0]
        h = seq_out[mask]  # [P, d] target positions only
        sp = F.softplus(h @ emb[1:].T)  # [P, n_items] every real item
        seen = user_items[rows]  # [P, M] 1-based, 0 = padding
        seen_sp = sp.gather(1, (seen - 1).clamp(min=0)) * (seen > 0)
        n_allowed = (emb.shape[0] - 1) - (user_items > 0).sum(1)  # [B]
        neg_term = (sp.sum(1) - seen_sp.sum(1)) / n_allowed[rows]
        sums = sums.index_add(0, rows, neg_term)
    else:
        raise ValueError(f"negatives must be one of {NEGATIVE_MODES}, got {negatives!r}")
    return sums, mask.sum(1)


LossTerms = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def cloze_loss_terms(
    model: nn.Module,
    input_ids: torch.Tensor,
    target_pos: torch.Tensor,
    target_neg: torch.Tensor | None = None,
    user_items: torch.Tensor | None = None,
    negatives: str = "sampled",
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT4Rec's cloze loss: per sample (sum over masked positions of the full-softmax
    cross-entropy ``logsumexp_j(h_t·e_j) - h_t·e_{y_t}`` over all real items j = 1..n_items,
    number of masked positions). ``target_pos`` holds the masked items (0 elsewhere);
    ``target_neg``, ``user_items`` and ``negatives`` are accepted for a common signature and
    ignored: the full softmax needs no negatives, so there is nothing to sample or average."""
    del target_neg, user_items, negatives
    seq_out = model(input_ids)
    emb = model.item_embeddings.weight
    mask = target_pos > 0
    rows = mask.nonzero(as_tuple=True)[0]
    logits = seq_out[mask] @ emb[1:].T  # [P, n_items], masked positions only
    ce = F.cross_entropy(logits, target_pos[mask] - 1, reduction="none")
    sums = torch.zeros(input_ids.shape[0], dtype=ce.dtype, device=ce.device).index_add(0, rows, ce)
    return sums, mask.sum(1)


def per_sample_loss(*args, **kwargs) -> torch.Tensor:
    """L(s) for each sample of the batch (0 for samples without a target position)."""
    sums, counts = sample_loss_terms(*args, **kwargs)
    return sums / counts.clamp(min=1)


def batch_loss(*args, **kwargs) -> torch.Tensor:
    """The batch's mean over all target positions (the original training loss)."""
    sums, counts = sample_loss_terms(*args, **kwargs)
    return sums.sum() / counts.sum().clamp(min=1)


def split_batch_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    target_pos: torch.Tensor,
    target_neg: torch.Tensor | None,
    overhead: float = DEFAULT_BUCKET_OVERHEAD,
    terms: LossTerms = sample_loss_terms,
) -> torch.Tensor:
    """:func:`batch_loss` of the same batch, computed as a few length buckets, each trimmed to its
    own longest row (:func:`~dealrec.surrogate.samples.length_buckets`): the buckets' loss
    numerators are summed and divided once by the whole batch's number of target positions, so
    the value and its gradient equal the padded batch's (exact for right-aligned positions and
    masked padding keys; rows without a target contribute nothing and are skipped). ``terms``:
    the per-sample loss (default the next-item BCE; :func:`cloze_loss_terms` for BERT4Rec)."""
    lengths = (input_ids > 0).sum(1)
    groups = length_buckets(lengths, overhead)
    if not groups:  # no target position in the whole batch: the padded path's zero loss
        sums, counts = terms(model, *trim_left(input_ids, target_pos, target_neg))
        return sums.sum() / counts.sum().clamp(min=1)
    total, count = 0.0, 0
    for rows in groups:
        neg = target_neg[rows] if target_neg is not None else None
        ids, pos, neg = trim_left(input_ids[rows], target_pos[rows], neg)
        sums, counts = terms(model, ids, pos, neg)
        total = total + sums.sum()
        count = count + int(counts.sum())
    return total / max(count, 1)


class LossModule(nn.Module):
    """Wraps a surrogate so that ``torch.func.functional_call`` can swap its parameters
    (names are prefixed with ``model.``) while computing per-sample loss terms (``terms``: the
    surrogate's objective's loss, default the next-item BCE)."""

    def __init__(self, model: nn.Module, negatives: str = "sampled", terms: LossTerms = sample_loss_terms) -> None:
        super().__init__()
        self.model = model
        self.negatives = negatives
        self.terms = terms

    def forward(self, input_ids, target_pos, target_neg=None, user_items=None):  # noqa: ANN001
        return self.terms(self.model, input_ids, target_pos, target_neg, user_items, self.negatives)
