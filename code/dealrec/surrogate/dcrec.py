"""DCRec (Yang et al., "Debiased Contrastive Learning for Sequential Recommendation", WWW 2023) as
a surrogate: a Transformer over the sequence, two GCN views of the items (transition graph and
co-interaction graph, :mod:`dealrec.surrogate.item_graphs`), conformity weights from the
agreement of the transition view with and without the user's own edges (subgraph agreement),
two contrastive losses weighted by them, a KL regulariser on the weights, and an attention
fusion of the three views scored by cross-entropy over all items (§3.2-3.4; the authors'
``DCRec.calculate_loss_graphcl``).

One sample is one user, as for the other surrogates: at target position t the state reads the
prefix ``items[:t+1]`` and predicts ``items[t+1]``; the per-sample loss L(s) is the authors'
batch loss computed on the batch made of s's own prefixes (:mod:`dealrec.surrogate.dcrec_loss`),
so it is a function of s and the fixed training graphs alone.

Determinism. Nothing is drawn per sample (:meth:`DCRecObjective.draw` returns the samples
unchanged): the only random draws are dropout — hidden, attention, the embedding dropout before
each GCN and the graphs' edge dropout — all off in eval mode, in which the influence score,
EL2N/GraNd and the evaluation run. Training draws them from torch's global generator, which the
trainer seeds.

Graphs. Built by :meth:`DCRec.set_graphs` from the training samples (the trainer calls the
objective's ``prepare`` before training; :func:`~dealrec.surrogate.build_surrogate` does with
``train=``) and stored as buffers: a checkpoint carries the graphs its weights were trained with,
and loading one takes its graph sizes.

Differences from the authors' code (their configuration is :class:`DCRecConfig`'s defaults):

- attention: causal, positions counted from each row's first item, one pass per user, instead of
  a bidirectional mask over each prefix as its own row: every prefix's state in one pass over the
  user's sequence (the prefix's last state never sees a later item; what differs is that earlier
  positions of a prefix do not attend to its later ones);
- per-sample, not per-batch: the conformity weights are min-max normalised and scaled over the
  sample's positions, the edges removed for the subgraph agreement are the sample's own (theirs:
  every user of the batch), and the KL regulariser compares the sample's weights; a sample whose
  agreements are all equal gets ``weight_mean`` (their formula is 0/0 there);
- contrastive negatives: all items (their CLLayer's ``vanilla_loss_overall``) instead of the
  other rows of the batch, which would make L(s) depend on its batch;
- neighbour readouts: the mean over all civil / foreign neighbours instead of a random draw of at
  most 10 (the draw's expectation, deterministic); the KL target: the quantiles of
  N(weight_mean, weight_std) instead of a sorted normal draw (deterministic);
- graph edge dropout: in training only, rescaled (see :class:`DCRecConfig`), and not on the
  graph without the sample's edges, whose propagation is derived exactly from the whole graph's;
  their GCN also computes a feature dropout whose result it discards: not reproduced;
- GCN normalisation: the normalised graphs they build are applied as built; their GraphConv
  (norm="both") scales every edge once more by unweighted degrees, after an extra unit self-loop
  whose weight depends on the library version — a library default stacked on their own
  normalisation, left out as the paper's GCN applies the normalised adjacency once;
- evaluation reads the training graphs (theirs are rebuilt from the test file's histories, which
  hold the training target — no validation or test item enters a graph here);
- scores rank real items only (their logits include the padding row); the contrastive
  projection head (CLLayer ``fc1``/``fc2``), which their loss never calls, is left out.

``state_dict`` keys: ``item_embeddings.weight [n_items+1, d]``, ``position_embeddings.weight
[max_len, d]``, ``LayerNorm.*``, per layer i ``item_encoder.layer.i.attention.{query,key,value,
dense}.*`` and ``.attention.LayerNorm.*`` (SASRec's names), ``item_encoder.layer.i.intermediate.
dense_{1,2}.*`` and ``.intermediate.LayerNorm.*`` (BERT4Rec's feed-forward), ``gcn_norm.*`` (the
authors' ``layernorm``), ``fusion_weights [d, d]`` and ``fusion_query [1, d]`` (their
``attn_weights`` and ``attn``), and the graph buffers ``{adj,sim}_{indices [2, E], values [E]}``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from dealrec.surrogate.bert4rec import FeedForward
from dealrec.surrogate.item_graphs import gcn_layers, pair_keys, similarity_graph, transition_graph
from dealrec.surrogate.sasrec import Encoder, LayerNorm, SASRec, normal_init


@dataclass
class DCRecConfig:
    """Every DCRec default, from the authors' configuration (DCRec.yaml, overall.yaml and the
    Beauty "best settings" of run_DCRec.py; Beauty is the Amazon data set closest to Games).
    The trainer-side settings that the surrogate registry holds (lr 1e-3, batches, epochs) are
    listed beside the registration."""

    item_size: int  # number of items + 1 (index 0 = padding)
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    inner_size: int = 256  # feed-forward width (GELU), as BERT4Rec's
    hidden_dropout_prob: float = 0.5
    attention_probs_dropout_prob: float = 0.1  # Beauty (0.5 in DCRec.yaml)
    max_seq_length: int = 50
    initializer_range: float = 0.02
    # Graph edge dropout 0.5 (graph_dropout_prob). The authors draw ⌊0.5·E⌋ edge indices with
    # replacement (about 39 % of the edges) in every GCN call, in training and prediction alike,
    # so their predictions are random; here each edge is dropped with that same probability
    # 1 − e^{−0.5}, in training only, rescaled by 1/keep as nn.Dropout so that training sees the
    # evaluation's graph in expectation.
    graph_dropout: float = 0.5
    sim_group: int = 4  # each item keeps its sim_group + 1 most similar items
    cl_weight: float = 0.1  # graphcl_coefficient
    cl_temperature: float = 1.0  # cl_temp
    kl_weight: float = 1e-2
    weight_mean: float = 0.5  # the conformity weights' mean, and the KL target's mean
    weight_std: float = 0.1  # the KL target's standard deviation (fixed in the authors' code)
    first_item_weight: float = 0.5  # the weight of a one-item prefix (the authors' constant 0.5)


# The DCRecConfig fields that the surrogate registry's SurrogateConfig does not set: what of DCRec
# enters the cache keys beyond the training configuration.
SURROGATE_FIELDS = ("item_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "hidden_dropout_prob",
                    "attention_probs_dropout_prob", "max_seq_length", "initializer_range")


def dcrec_settings() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(DCRecConfig) if f.name not in SURROGATE_FIELDS}


GRAPH_BUFFERS = ("adj_indices", "adj_values", "sim_indices", "sim_values")


class GraphViews(NamedTuple):
    adj: torch.Tensor  # [n, d] GCN output on the transition graph (the authors' iadj_graph_output_raw)
    sim: torch.Tensor  # [n, d] GCN output on the co-interaction graph
    layers: list[torch.Tensor]  # [x, Px, P²x] on the transition graph without edge dropout


class DCRec(nn.Module):
    """``forward(input_ids [B, L]) -> [B, L, d]``: the fused state at every position (left-padded
    with 0); item i is scored by ``state · item_embeddings[i]``."""

    def __init__(self, cfg: DCRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.item_embeddings = nn.Embedding(cfg.item_size, d, padding_idx=0)
        self.position_embeddings = nn.Embedding(cfg.max_seq_length, d)
        self.LayerNorm = LayerNorm(d)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.item_encoder = Encoder(cfg, FeedForward)  # SASRec's attention blocks, BERT's feed-forward
        self.gcn_norm = LayerNorm(d)
        self.fusion_weights = nn.Parameter(torch.empty(d, d))
        self.fusion_query = nn.Parameter(torch.empty(1, d))
        self.apply(normal_init(cfg.initializer_range))
        nn.init.normal_(self.fusion_weights, std=cfg.initializer_range)
        nn.init.normal_(self.fusion_query, std=cfg.initializer_range)
        for name in GRAPH_BUFFERS:  # empty until set_graphs (or a checkpoint) fills them
            self.register_buffer(name, torch.zeros((2, 0) if name.endswith("indices") else (0,),
                                                   dtype=torch.long if name.endswith("indices") else torch.float32))
        self._sparse: dict[str, Any] = {}

    # -- the graphs ---------------------------------------------------------------------------
    @property
    def n_nodes(self) -> int:
        return self.cfg.item_size

    def set_graphs(self, seqs: torch.Tensor) -> None:
        """Build both graphs from the training samples' item sequences ``seqs`` [U, W]
        (1-based, left-padded; :func:`~dealrec.surrogate.item_graphs.sample_items`)."""
        n_items = self.n_nodes - 1
        device = self.item_embeddings.weight.device
        graphs = {"adj": transition_graph(seqs.cpu(), n_items), "sim": similarity_graph(seqs.cpu(), n_items,
                                                                                        self.cfg.sim_group)}
        for name, (idx, val) in graphs.items():
            setattr(self, f"{name}_indices", idx.to(device))
            setattr(self, f"{name}_values", val.to(device))
        self._sparse.clear()

    def graph(self, name: str, drop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, Pᵀ) as sparse tensors; ``drop``: with edge dropout (a fresh draw)."""
        idx, val = getattr(self, f"{name}_indices"), getattr(self, f"{name}_values")
        if not idx.shape[1]:
            raise RuntimeError("DCRec has no item graphs yet: build it with build_surrogate(..., train=...), train it "
                               "(the objective's prepare builds them) or load a checkpoint")
        n = self.n_nodes
        if drop and self.cfg.graph_dropout > 0:
            keep = torch.exp(torch.tensor(-self.cfg.graph_dropout)).item()
            val = val * (torch.rand(val.shape, device=val.device) < keep) / keep
            p = torch.sparse_coo_tensor(idx, val, (n, n), is_coalesced=True, check_invariants=False)
            return p, torch.sparse_coo_tensor(idx.flip(0), val, (n, n), check_invariants=False).coalesce()
        if name not in self._sparse:
            p = torch.sparse_coo_tensor(idx, val, (n, n), is_coalesced=True, check_invariants=False)
            self._sparse[name] = (p, p.t().coalesce())
        return self._sparse[name]

    def adjacency(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys of Â's entries for lookups, the binary adjacency (self-loops included), its row counts)."""
        if "pattern" not in self._sparse:
            idx, n = self.adj_indices, self.n_nodes
            ones = torch.ones(idx.shape[1], device=idx.device)
            pattern = torch.sparse_coo_tensor(idx, ones, (n, n), is_coalesced=True, check_invariants=False)
            degree = torch.zeros(n, device=idx.device).index_add_(0, idx[0], ones)
            self._sparse["pattern"] = (pair_keys(idx, n), pattern, degree)
        return self._sparse["pattern"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        for name in GRAPH_BUFFERS:  # a checkpoint carries its own graphs: take their sizes
            if prefix + name in state_dict:
                old = getattr(self, name)
                setattr(self, name, torch.empty(state_dict[prefix + name].shape, dtype=old.dtype, device=old.device))
        self._sparse.clear()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202 - .to(device) etc.: cached views are stale
        self._sparse.clear()
        return super()._apply(fn, *args, **kwargs)

    # -- the three views ----------------------------------------------------------------------
    def _gcn(self, graph: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The authors' gcn_forward: the mean of [x, Px, P²x], plus x, layer-normalised."""
        layers = gcn_layers(*graph, x)
        return layers, self.gcn_norm(torch.stack(layers).mean(0) + x)

    def graph_views(self) -> GraphViews:
        """Both GCN views of every item. In training each GCN reads its own dropout draw of the
        item embeddings (the authors call gcn_forward three times) and the graphs drop edges;
        the un-dropped transition graph is the base of the per-sample edge removal."""
        emb = self.item_embeddings.weight
        layers, adj = self._gcn(self.graph("adj", drop=self.training), self.dropout(emb))
        sim = self._gcn(self.graph("sim", drop=self.training), self.dropout(emb))[1]
        if self.training:
            layers = gcn_layers(*self.graph("adj"), self.dropout(emb))
        return GraphViews(adj, sim, layers)

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The Transformer view [B, L, d]: causal, positions counted from each row's first item
        (so a row's outputs do not depend on its left padding)."""
        pos = ((input_ids > 0).cumsum(1) - 1).clamp(min=0)
        x = self.item_embeddings(input_ids) + self.position_embeddings(pos)
        x = self.dropout(self.LayerNorm(x))
        return self.item_encoder(x, SASRec.attention_mask(input_ids))

    def fuse(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Attention fusion of same-shaped views: softmax over views of ``(v W) · q``."""
        mixed = torch.stack(views)
        alpha = torch.softmax(((mixed @ self.fusion_weights) * self.fusion_query).sum(-1), dim=0)
        return (alpha[..., None] * mixed).sum(0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        views = self.graph_views()
        return self.fuse([self.encode(input_ids), views.adj[input_ids], views.sim[input_ids]])
