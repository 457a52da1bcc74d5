"""Surrogate recommenders (paper §4.1) and their registry.

A surrogate is an ``nn.Module`` with ``forward(input_ids [B, L]) -> [B, L, d]`` (left-padded
item ids, 0 = padding) and an ``item_embeddings`` embedding whose row i scores item i. Register a
new one with :func:`register_surrogate`; ``prune.sh``'s second argument picks it by name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .sasrec import SASRec, SASRecConfig
from .trainer import SurrogateConfig

SURROGATES: dict[str, Callable[[int, SurrogateConfig], nn.Module]] = {}


def register_surrogate(name: str) -> Callable:
    def deco(factory: Callable[[int, SurrogateConfig], nn.Module]) -> Callable:
        SURROGATES[name] = factory
        return factory

    return deco


@register_surrogate("SASRec")
def _sasrec(n_items: int, cfg: SurrogateConfig) -> nn.Module:
    return SASRec(
        SASRecConfig(
            item_size=n_items + 1,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            max_seq_length=cfg.max_seq_length,
        )
    )


def build_surrogate(name: str, n_items: int, cfg: SurrogateConfig) -> nn.Module:
    """A freshly initialised surrogate: the initial weights depend on ``cfg.seed`` only (the
    global random state is left as it was)."""
    try:
        factory = SURROGATES[name]
    except KeyError:
        raise ValueError(f"unknown surrogate {name!r}; registered: {', '.join(sorted(SURROGATES))}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return factory(n_items, cfg)
