"""SASRec (Kang & McAuley, 2018), the paper's surrogate model (§4.1), with the original's
parameter names so that checkpoints interchange with the DEALRec code.

``state_dict`` keys: ``item_embeddings.weight [n_items+1, d]`` (row 0 = padding),
``position_embeddings.weight [max_len, d]``, ``LayerNorm.{weight,bias}`` and per layer i
``item_encoder.layer.i.attention.{query,key,value,dense}.{weight,bias}``,
``item_encoder.layer.i.attention.LayerNorm.*``, ``item_encoder.layer.i.intermediate.conv1d_{1,2}.*``
(kernel size 1) and ``item_encoder.layer.i.intermediate.LayerNorm.*``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SASRecConfig:
    item_size: int  # number of items + 1 (index 0 = padding)
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    hidden_dropout_prob: float = 0.5
    attention_probs_dropout_prob: float = 0.5
    max_seq_length: int = 50
    initializer_range: float = 0.02


class LayerNorm(nn.Module):
    """TF-style layer norm (epsilon inside the square root), eps 1e-12."""

    def __init__(self, hidden_size: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        return self.weight * ((x - u) / torch.sqrt(s + self.variance_epsilon)) + self.bias


class SelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"hidden size {cfg.hidden_size} is not a multiple of {cfg.num_attention_heads} heads")
        self.n_heads = cfg.num_attention_heads
        self.head_size = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.attn_dropout = nn.Dropout(cfg.attention_probs_dropout_prob)
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = LayerNorm(cfg.hidden_size)
        self.out_dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.n_heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size) + attention_mask
        probs = self.attn_dropout(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(x.shape)
        return self.LayerNorm(self.out_dropout(self.dense(ctx)) + x)


class PointWiseFeedForward(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.conv1d_1 = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, kernel_size=1)
        self.activation = nn.ReLU()
        self.conv1d_2 = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, kernel_size=1)
        self.LayerNorm = LayerNorm(cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A kernel-size-1 Conv1d is a position-wise linear map: computed as one (the same
        # function, several times faster on a CPU than the convolution kernels), weights kept in
        # the original's Conv1d layout [d, d, 1].
        h = self.activation(F.linear(x, self.conv1d_1.weight.squeeze(-1), self.conv1d_1.bias))
        h = self.activation(F.linear(h, self.conv1d_2.weight.squeeze(-1), self.conv1d_2.bias))
        return self.LayerNorm(self.dropout(h) + x)


class Layer(nn.Module):
    def __init__(self, cfg: SASRecConfig, feed_forward: type[nn.Module] = PointWiseFeedForward) -> None:
        super().__init__()
        self.attention = SelfAttention(cfg)
        self.intermediate = feed_forward(cfg)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.intermediate(self.attention(x, attention_mask))


class Encoder(nn.Module):
    """The stack of blocks; ``feed_forward`` is the block's feed-forward class (BERT4Rec's differs)."""

    def __init__(self, cfg: SASRecConfig, feed_forward: type[nn.Module] = PointWiseFeedForward) -> None:
        super().__init__()
        self.layer = nn.ModuleList([Layer(cfg, feed_forward) for _ in range(cfg.num_hidden_layers)])

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, attention_mask)
        return x


def normal_init(std: float) -> Callable[[nn.Module], None]:
    """The original's initialisation, for ``module.apply``: linear and embedding weights drawn from
    N(0, std²), linear biases 0 (shared by the surrogates built from SASRec's blocks)."""

    def init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    return init


class SASRec(nn.Module):
    """``forward(input_ids [B, L]) -> sequence output [B, L, d]`` (left-padded with 0)."""

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_embeddings = nn.Embedding(cfg.item_size, cfg.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_seq_length, cfg.hidden_size)
        self.item_encoder = Encoder(cfg)
        self.LayerNorm = LayerNorm(cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.apply(normal_init(cfg.initializer_range))

    @staticmethod
    def attention_mask(input_ids: torch.Tensor) -> torch.Tensor:
        """Additive mask [B, 1, L, L]: -10000 on padding keys and future positions."""
        n = input_ids.shape[1]
        keep = (input_ids > 0)[:, None, None, :]
        causal = torch.ones(n, n, dtype=torch.bool, device=input_ids.device).tril()
        return (~(keep & causal)).float() * -10000.0

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Positions are right-aligned: a batch whose all-padding left columns were trimmed to
        length L < max_len uses positions max_len-L .. max_len-1, so trimming is exact."""
        n = input_ids.shape[1]
        pos = torch.arange(self.cfg.max_seq_length - n, self.cfg.max_seq_length, device=input_ids.device)
        x = self.item_embeddings(input_ids) + self.position_embeddings(pos)[None]
        x = self.dropout(self.LayerNorm(x))
        return self.item_encoder(x, self.attention_mask(input_ids))

    def item_weight(self) -> torch.Tensor:
        return self.item_embeddings.weight
