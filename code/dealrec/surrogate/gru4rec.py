"""GRU4Rec (Hidasi et al., ICLR 2016; the session-based GRU recommender in its common modern form,
as RecBole's): item embeddings → dropout → GRU → a linear projection ``dense`` back to the item
embedding space; item i is scored by ``h_t · item_embeddings[i]``, trained with the same
next-item loss as SASRec.

Left padding. A GRU that reads the padding before a short sequence ends in a state that depends
on how much padding there was (biases move the state even on zero inputs), so a plain GRU over
left-padded rows is not invariant to trimming or to length-split batches. Here every row is
moved to the left before the GRU (real items first, padding after them, which cannot affect the
states at the real positions) and the states are moved back to their columns afterwards; padding
columns get the state of an empty history (zero, i.e. ``dense.bias`` after the projection). The
output at a real position therefore depends on that row's real items only: trimming and the
exact length-split batches are exact, as for SASRec (tests/test_surrogate_models.py checks it
against one unpadded sequence at a time).

``state_dict`` keys: ``item_embeddings.weight [n_items+1, d]``, ``gru.{weight_ih,weight_hh,bias_ih,bias_hh}_l{k}``
(PyTorch's GRU layout), ``dense.{weight [d, h], bias [d]}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class GRU4RecConfig:
    item_size: int  # number of items + 1 (index 0 = padding)
    hidden_size: int = 64  # item embedding size (= the output projection's size)
    gru_size: int | None = None  # GRU state size (None: hidden_size)
    num_layers: int = 1
    dropout: float = 0.3  # on the item embeddings
    max_seq_length: int = 50
    initializer_range: float = 0.02


class GRU4Rec(nn.Module):
    """``forward(input_ids [B, L]) -> [B, L, d]`` (left-padded with 0: each row's real items are
    contiguous at its right end)."""

    def __init__(self, cfg: GRU4RecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.gru_size or cfg.hidden_size
        self.item_embeddings = nn.Embedding(cfg.item_size, cfg.hidden_size, padding_idx=0)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.hidden_size, h, num_layers=cfg.num_layers, batch_first=True)
        self.dense = nn.Linear(h, cfg.hidden_size)
        self.item_embeddings.weight.data.normal_(mean=0.0, std=cfg.initializer_range)
        for name, p in self.gru.named_parameters():  # as RecBole: Xavier weights, zero biases
            if name.startswith("weight"):
                nn.init.xavier_uniform_(p)
            else:
                nn.init.zeros_(p)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        real = input_ids > 0
        lengths = real.sum(1, keepdim=True)
        shift = n - lengths  # left padding of each row
        cols = torch.arange(n, device=input_ids.device)[None]
        # Left-align: column j reads column j + shift; columns past the row's length are padding.
        aligned = torch.where(cols < lengths, input_ids.gather(1, (cols + shift).clamp(max=n - 1)), 0)
        out, _ = self.gru(self.emb_dropout(self.item_embeddings(aligned)))
        # Back to the row's own columns: column j reads aligned column j - shift; padding -> 0.
        back = (cols - shift).clamp(min=0)[..., None].expand(-1, -1, out.shape[-1])
        out = out.gather(1, back) * real[..., None]
        return self.dense(out)
