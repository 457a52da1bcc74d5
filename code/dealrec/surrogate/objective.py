"""Training objectives of the surrogates: how a user's sequence becomes a sample, what is drawn at
random for it, its per-sample loss, and how the model is asked for the next item.

Every stage that touches a surrogate goes through its objective — training (a fresh draw every
epoch), the influence score (one draw from the seed, kept for v, the Hessian-vector products and
the per-sample scores), the EL2N/GraNd baselines and the full-ranking evaluation — so a
surrogate with another loss plugs in without any stage knowing its name.

- :data:`NEXT_ITEM` (SASRec, GRU4Rec; the original's loss): inputs ``items[:-2]``, targets
  ``items[1:-1]``, one sampled negative per target position (or their expectation,
  ``negatives="expected"``), BCE; the next item is scored from the last position's state.
- :class:`Cloze` (BERT4Rec, Sun et al. 2019): the sequence ``items[:-1]`` with each position
  replaced by a ``[mask]`` token with probability ``mask_prob`` (at least one per sample),
  full-softmax cross-entropy at the masked positions; the next item is scored by appending a
  ``[mask]`` to the history and reading its state.
- :data:`DCREC` (DCRec, Yang et al. 2023): the next-item samples, nothing drawn, full-softmax
  cross-entropy at every target position plus DCRec's conformity-weighted contrastive losses
  and KL regulariser (:mod:`dealrec.surrogate.dcrec_loss`); the model needs item graphs built
  from its training samples (:meth:`Objective.prepare`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from dealrec.surrogate.dcrec import dcrec_settings
from dealrec.surrogate.dcrec_loss import dcrec_loss_terms
from dealrec.surrogate.item_graphs import sample_items
from dealrec.surrogate.loss import LossTerms, cloze_loss_terms, sample_loss_terms, split_batch_loss
from dealrec.surrogate.samples import (
    DEFAULT_BUCKET_OVERHEAD,
    SampleTensors,
    build_cloze_samples,
    build_samples,
    draw_cloze_masks,
    sample_negatives,
)


class Objective:
    """The next-item objective (SASRec's); subclasses override what differs."""

    name = "next-item"
    uses_negatives = True  # whether --negatives (sampled / expected) means anything
    chunk_positions: int | None = None  # influence chunk size (users × length) if not the default
    uses_training_data = False  # whether the model needs prepare() with its training samples

    # -- samples ------------------------------------------------------------------------------
    def build_samples(self, train: list[list[int]], n_items: int, max_len: int = 50) -> SampleTensors:
        return build_samples(train, n_items, max_len)

    def prepare(self, model: nn.Module, samples: SampleTensors) -> None:
        """Give the model what it takes from its training samples before training (nothing here;
        DCRec: its item graphs)."""

    def draw(
        self, samples: SampleTensors, generator: torch.Generator, negatives: str = "sampled"
    ) -> tuple[SampleTensors, torch.Tensor | None]:
        """The random part of the samples: (samples to use, negatives or None). Training draws
        anew every epoch; the influence score draws once from its seed."""
        return samples, sample_negatives(samples, generator) if negatives == "sampled" else None

    # -- loss ---------------------------------------------------------------------------------
    @property
    def loss_terms(self) -> LossTerms:
        """``(model, input_ids, target_pos, target_neg, user_items, negatives) -> (sums, counts)``."""
        return sample_loss_terms

    def batch_loss(
        self, model: nn.Module, input_ids: torch.Tensor, target_pos: torch.Tensor, target_neg: torch.Tensor | None,
        split: bool = True, overhead: float = DEFAULT_BUCKET_OVERHEAD,
    ) -> torch.Tensor:
        """The training loss of a batch: mean over all its target positions (``split``: computed as
        exact length buckets, :func:`~dealrec.surrogate.loss.split_batch_loss`), each part by
        :meth:`batch_terms`."""
        terms = self.batch_terms(model)
        if split:
            return split_batch_loss(model, input_ids, target_pos, target_neg, overhead, terms=terms)
        sums, counts = terms(model, input_ids, target_pos, target_neg)
        return sums.sum() / counts.sum().clamp(min=1)

    def batch_terms(self, model: nn.Module) -> LossTerms:
        """The loss terms that every part of one training batch reads (:attr:`loss_terms`; DCRec:
        with the batch's item graph views)."""
        return self.loss_terms

    def error_norms(
        self, model: nn.Module, input_ids: torch.Tensor, target_pos: torch.Tensor, target_neg: torch.Tensor | None
    ) -> torch.Tensor:
        """EL2N per target position [B, L] (0 elsewhere): the L2 norm of the loss's error vector,
        here (σ(pos logit) − 1, σ(neg logit) − 0)."""
        h = model(input_ids)
        emb = model.item_embeddings.weight
        err_pos = torch.sigmoid((h * emb[target_pos]).sum(-1)) - 1
        err_neg = torch.sigmoid((h * emb[target_neg]).sum(-1))
        return torch.sqrt(err_pos**2 + err_neg**2) * (target_pos > 0)

    # -- prediction ---------------------------------------------------------------------------
    def next_state(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, d]: the state whose dot product with ``item_embeddings`` scores the item that
        follows each (left-padded) history."""
        return model(input_ids)[:, -1, :]

    def key(self) -> dict | None:
        """What of the objective enters cache keys (None: nothing, the original's next-item loss)."""
        return None


NEXT_ITEM = Objective()


@dataclass(frozen=True)
class Cloze(Objective):
    """BERT4Rec's cloze objective. The model must have ``mask_id`` (the ``[mask]`` token's id,
    ``n_items + 1``) and ``cfg.max_seq_length``."""

    mask_prob: float = 0.2

    name = "cloze"
    uses_negatives = False
    # A masked position costs a softmax over every item: smaller influence chunks than the
    # next-item loss (4096 users × length ≈ 800 masked positions × 17k Games items).
    chunk_positions = 4096

    def __post_init__(self) -> None:
        if not 0 < self.mask_prob <= 1:
            raise ValueError(f"mask_prob must be in (0, 1], got {self.mask_prob}")

    def build_samples(self, train: list[list[int]], n_items: int, max_len: int = 50) -> SampleTensors:
        return build_cloze_samples(train, n_items, max_len)

    def draw(
        self, samples: SampleTensors, generator: torch.Generator, negatives: str = "sampled"
    ) -> tuple[SampleTensors, torch.Tensor | None]:
        return draw_cloze_masks(samples, self.mask_prob, samples.n_items + 1, generator), None

    @property
    def loss_terms(self) -> LossTerms:
        return cloze_loss_terms

    def error_norms(self, model, input_ids, target_pos, target_neg=None) -> torch.Tensor:  # noqa: ANN001
        return softmax_error_norms(model, input_ids, target_pos)

    def next_state(self, model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """Append ``[mask]`` after the history (dropping the oldest column when the row would
        exceed ``max_seq_length``) and read the mask's state, as BERT4Rec predicts."""
        mask = torch.full((input_ids.shape[0], 1), model.mask_id, dtype=input_ids.dtype, device=input_ids.device)
        ids = torch.cat([input_ids, mask], 1)[:, -model.cfg.max_seq_length:]
        return model(ids)[:, -1, :]

    def key(self) -> dict | None:
        return {"objective": self.name, "mask_prob": self.mask_prob}


def softmax_error_norms(model: nn.Module, input_ids: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
    """EL2N of a softmax classifier (Paul et al.): ‖softmax(logits) − onehot(y)‖₂ per target
    position [B, L] (0 elsewhere), the logits over all real items."""
    h = model(input_ids)
    mask = target_pos > 0
    probs = torch.softmax(h[mask] @ model.item_embeddings.weight[1:].T, dim=-1)
    probs[torch.arange(len(probs)), target_pos[mask] - 1] -= 1
    out = torch.zeros(target_pos.shape, dtype=probs.dtype, device=probs.device)
    out[mask] = probs.norm(dim=1)
    return out


class DCRecObjective(Objective):
    """DCRec's objective on the next-item samples. The model must be a
    :class:`~dealrec.surrogate.dcrec.DCRec`; its loss settings are its ``cfg``'s."""

    name = "dcrec"
    uses_negatives = False
    uses_training_data = True
    # Every target position costs three softmaxes over all items (cross-entropy and two
    # contrastive terms): half the cloze chunks.
    chunk_positions = 2048

    def prepare(self, model: nn.Module, samples: SampleTensors) -> None:
        """The item graphs, from the items the samples read (their inputs and last targets)."""
        model.set_graphs(sample_items(samples.input_ids, samples.target_pos))

    def draw(
        self, samples: SampleTensors, generator: torch.Generator, negatives: str = "sampled"
    ) -> tuple[SampleTensors, torch.Tensor | None]:
        return samples, None  # nothing is drawn per sample

    @property
    def loss_terms(self) -> LossTerms:
        return dcrec_loss_terms

    def batch_terms(self, model: nn.Module) -> LossTerms:
        """The loss terms with the item graph views computed once for the whole batch and read by
        each of its length buckets: as the authors, one GCN pass (in training, one dropout draw of
        the graphs) per batch, and the GCNs over all items, whose cost does not depend on the
        bucket's size, are not repeated per bucket."""
        return functools.partial(dcrec_loss_terms, views=model.graph_views())

    def error_norms(self, model, input_ids, target_pos, target_neg=None) -> torch.Tensor:  # noqa: ANN001
        """EL2N of the cross-entropy part (the fused state's softmax over all items)."""
        return softmax_error_norms(model, input_ids, target_pos)

    def key(self) -> dict | None:
        return {"objective": self.name, "graph_views": "per batch", **dcrec_settings()}


DCREC = DCRecObjective()


def objective_of(model: nn.Module) -> Objective:
    """The objective a surrogate was registered with (:func:`~dealrec.surrogate.build_surrogate`
    attaches it); a plain module trains with the next-item loss."""
    return getattr(model, "objective", None) or NEXT_ITEM


def trim_exact(model: nn.Module) -> bool:
    """Whether the model's outputs at real positions are independent of how much left padding a
    batch has, so that all-padding columns may be trimmed and batches split by length (true for
    the registered surrogates; a registered surrogate that is not declares it, and then every
    stage uses full-width padded batches)."""
    return bool(getattr(model, "trim_exact", True))
