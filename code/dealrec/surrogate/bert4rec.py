"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional Transformer over the item sequence, trained
with the cloze objective (:class:`~dealrec.surrogate.objective.Cloze`).

The blocks reuse SASRec's self-attention (same parameter names, ``item_encoder.layer.i.attention.*``)
without the causal mask; the feed-forward part is BERT's (``intermediate.dense_1`` d → 4d, GELU,
``intermediate.dense_2`` 4d → d, residual, layer norm); the output head is BERT's masked-LM
transform (``output.dense``, GELU, ``output.LayerNorm``) whose result is scored against the
shared item embeddings, as in the paper, without its per-item output bias (so that every
surrogate scores item i by ``h · item_embeddings[i]``). The ``[mask]`` token is its own vector
``mask_embedding`` with id ``n_items + 1`` (``mask_id``): ``item_embeddings`` keeps one row per
item plus the padding row 0, so it ranks items only.

``state_dict`` keys: ``item_embeddings.weight [n_items+1, d]``, ``mask_embedding [d]``,
``position_embeddings.weight [max_len, d]``, ``LayerNorm.{weight,bias}``, per layer i
``item_encoder.layer.i.attention.{query,key,value,dense}.{weight,bias}``,
``item_encoder.layer.i.attention.LayerNorm.*``, ``item_encoder.layer.i.intermediate.dense_{1,2}.*``,
``item_encoder.layer.i.intermediate.LayerNorm.*``, and ``output.dense.*``, ``output.LayerNorm.*``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dealrec.surrogate.sasrec import Encoder, LayerNorm, normal_init


@dataclass
class BERT4RecConfig:
    item_size: int  # number of items + 1 (index 0 = padding); the [mask] token is item_size
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_seq_length: int = 50
    inner_size: int | None = None  # feed-forward width (None: 4 × hidden_size, as BERT)
    initializer_range: float = 0.02


class FeedForward(nn.Module):
    def __init__(self, cfg: BERT4RecConfig) -> None:
        super().__init__()
        inner = cfg.inner_size or 4 * cfg.hidden_size
        self.dense_1 = nn.Linear(cfg.hidden_size, inner)
        self.dense_2 = nn.Linear(inner, cfg.hidden_size)
        self.LayerNorm = LayerNorm(cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense_2(F.gelu(self.dense_1(x)))) + x)


class OutputHead(nn.Module):
    """BERT's masked-LM transform: dense, GELU, layer norm."""

    def __init__(self, cfg: BERT4RecConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = LayerNorm(cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class BERT4Rec(nn.Module):
    """``forward(input_ids [B, L]) -> [B, L, d]`` (left-padded with 0, ``mask_id`` = [mask]);
    every position attends to every real position of its row (bidirectional)."""

    def __init__(self, cfg: BERT4RecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_embeddings = nn.Embedding(cfg.item_size, cfg.hidden_size, padding_idx=0)
        self.mask_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.position_embeddings = nn.Embedding(cfg.max_seq_length, cfg.hidden_size)
        self.LayerNorm = LayerNorm(cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.item_encoder = Encoder(cfg, FeedForward)  # SASRec's attention blocks, BERT's feed-forward
        self.output = OutputHead(cfg)
        self.apply(normal_init(cfg.initializer_range))
        self.mask_embedding.data.normal_(mean=0.0, std=cfg.initializer_range)

    @property
    def mask_id(self) -> int:
        return self.cfg.item_size

    @staticmethod
    def attention_mask(input_ids: torch.Tensor) -> torch.Tensor:
        """Additive mask [B, 1, 1, L]: -10000 on padding keys (no causal mask)."""
        return (input_ids <= 0)[:, None, None, :].float() * -10000.0

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_mask = input_ids == self.mask_id
        e = self.item_embeddings(input_ids.masked_fill(is_mask, 0))
        return torch.where(is_mask[..., None], self.mask_embedding, e)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Positions are right-aligned (as SASRec's), so trimming all-padding left columns is exact."""
        n = input_ids.shape[1]
        pos = torch.arange(self.cfg.max_seq_length - n, self.cfg.max_seq_length, device=input_ids.device)
        x = self.embed(input_ids) + self.position_embeddings(pos)[None]
        x = self.dropout(self.LayerNorm(x))
        return self.output(self.item_encoder(x, self.attention_mask(input_ids)))
