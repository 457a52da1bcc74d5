"""DCRec's per-sample loss (Yang et al., WWW 2023, §3.3-3.4; the authors'
``calculate_loss_graphcl``), as a function of one sample and the fixed item graphs.

At each target position t of a sample (state h_t over the prefix, current item i_t, next item
y_t; r = the transition-graph view, c = the co-interaction view, both over all items)::

    term_t = CE(fuse(h_t, r_{i_t}, c_{i_t}) · E, y_t)                       cross-entropy, all items
           + λ_cl · ( w_t · NCE(h'_t, r; i_t) + (max_s w − w_t) · NCE(r_{i_t}, c; i_t) )
           + λ_kl · KL(s)

NCE(z, V; i) = −log softmax_j(cos(z, V_j)/τ) at j = i over all items; h'_t is a second encoder
pass (another dropout draw in training, h_t itself in eval mode). The conformity weight w_t comes
from the subgraph agreement of item i_t: the cosine agreement of its transition view with the
view on the graph without the sample's own edges, and with the mean views of its neighbours
through the sample's edges (civil) and through the others' (foreign); σ of the mean of the three
cosines, min-max normalised over the sample's positions and scaled to mean ``weight_mean``, a
one-item prefix set to ``first_item_weight``. KL(s) compares the sample's sorted weights with the
quantiles of N(weight_mean, weight_std) as the authors' ``cal_kl_1`` does. The sample's loss is
the mean of its terms (so KL(s) counts once per sample), returned as (sum, count) like the
other objectives' losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dealrec.surrogate.dcrec import DCRec, DCRecConfig, GraphViews
from dealrec.surrogate.item_graphs import (
    neighbour_readouts,
    pair_values,
    propagate,
    sample_items,
    sample_subgraph,
    without_own_edges,
)


def softmax_ce(z: torch.Tensor, table: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[P]: −log softmax_j(z_p · table_j) at j = target_p, over all items j ≥ 1 (row 0 = padding):
    ``logsumexp − target logit``, the target logit as a row dot product (cheaper than gathering
    it from the [P, n_items] logits, and no [P, n_items] one-hot in the backward pass)."""
    return torch.logsumexp(z @ table[1:].T, 1) - (z * table[target]).sum(-1)


def info_nce(z: torch.Tensor, table: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """[P]: −log softmax over all items j ≥ 1 of cos(z_p, table_j)/τ at j = target_p."""
    z, table = F.normalize(z, dim=-1, eps=1e-12) / tau, F.normalize(table, dim=-1, eps=1e-12)
    if 1 / tau > 30:
        return softmax_ce(z, table, target)
    # |logit| ≤ 1/τ ≤ 30: exp cannot overflow in float32, so the log-sum-exp needs no max shift
    # (half the passes over the [P, n_items] logits of torch.logsumexp).
    return torch.log(torch.exp(z @ table[1:].T).sum(1)) - (z * table[target]).sum(-1)


def subgraph_agreement(model: DCRec, views: GraphViews, input_ids: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
    """[B, L]: σ of the mean of the three agreement cosines at every input position (the
    authors' ``_subgraph_agreement`` before its batch normalisation), for each sample with its own
    edges removed."""
    seq = sample_items(input_ids, target_pos)
    keys, pattern, degree = model.adjacency()
    first, own = sample_subgraph(seq)
    a_pos = pair_values(keys, model.adj_values, model.n_nodes, seq[:, :, None], seq[:, None, :]) * first[:, None, :]
    own = own & (a_pos > 0)  # only edges of the graph (always so when it was built from these samples)
    x, y, z = without_own_edges(views.layers, seq, a_pos, a_pos * own)
    aug = model.gcn_norm(torch.stack([x, y, z]).mean(0) + x)
    r = views.adj
    civil, foreign = neighbour_readouts(r, propagate(pattern, pattern, r), degree, seq, own)
    rs = r[seq]
    cos = [F.cosine_similarity(a, b, dim=-1, eps=1e-12) for a, b in ((rs, aug), (rs, foreign), (civil, foreign))]
    return torch.sigmoid(sum(cos) / 3)[:, : input_ids.shape[1]]


def conformity_weights(
    agree: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, cfg: DCRecConfig
) -> torch.Tensor:
    """[B, L] (0 off the sample's positions): min-max over the sample's positions, scaled to mean
    ``weight_mean``; a sample whose agreements are all equal (one position, say) gets
    ``weight_mean`` everywhere (the authors' formula is 0/0 there); the position of a one-item
    prefix gets ``first_item_weight``."""
    has = mask.any(1, keepdim=True)
    inf = torch.tensor(float("inf"), device=agree.device)
    lo = torch.where(has, torch.where(mask, agree, inf).amin(1, keepdim=True), 0.0)
    hi = torch.where(has, torch.where(mask, agree, -inf).amax(1, keepdim=True), 0.0)
    spread = hi - lo
    varied = spread > 1e-6
    norm = torch.where(mask & varied, (agree - lo) / spread.clamp(min=1e-6), 0.0)
    mean = norm.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
    w = torch.where(varied, cfg.weight_mean * norm / mean.clamp(min=1e-12), cfg.weight_mean)
    first_item = mask & ((input_ids > 0).cumsum(1) == 1)
    return torch.where(first_item, cfg.first_item_weight, w) * mask


def weight_kl(w: torch.Tensor, mask: torch.Tensor, cfg: DCRecConfig) -> torch.Tensor:
    """[B]: the authors' ``cal_kl_1`` per sample — with q the ascending quantiles of
    N(weight_mean, weight_std) at (k + ½)/n (the expectation of their sorted normal draw, without
    drawing) and p = softmax of the sample's ascending weights: Σ_k q_k (log q_k − log p_k) / n
    (q is not normalised, as theirs)."""
    out = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    rows = mask.any(1).nonzero(as_tuple=True)[0]
    if not rows.numel():
        return out
    w, mask = w[rows], mask[rows]
    n = mask.sum(1, keepdim=True)
    k = torch.arange(w.shape[1], device=w.device)[None]
    valid = k < n
    srt = torch.where(mask, w, float("inf")).sort(1).values
    srt = torch.where(valid, srt, 0.0)
    log_p = srt - torch.logsumexp(torch.where(valid, srt, float("-inf")), 1, keepdim=True)
    q = cfg.weight_mean + cfg.weight_std * torch.special.ndtri((torch.minimum(k, n - 1) + 0.5) / n)
    log_q = torch.log(q.clamp(min=1e-8) + 1e-8)
    kl = (torch.where(valid, log_q.exp() * (log_q - log_p), 0.0)).sum(1) / n[:, 0]
    return out.index_put((rows,), kl)


def dcrec_loss_terms(
    model: DCRec,
    input_ids: torch.Tensor,
    target_pos: torch.Tensor,
    target_neg: torch.Tensor | None = None,
    user_items: torch.Tensor | None = None,
    negatives: str = "sampled",
    views: GraphViews | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (sum of its position terms [B], number of target positions [B]) of the next-item
    samples ``input_ids`` / ``target_pos``. ``target_neg``, ``user_items`` and ``negatives`` are
    accepted for the common signature and ignored (a full softmax needs no negatives). ``views``:
    the item graph views to read (default: computed here, :meth:`DCRec.graph_views`)."""
    del target_neg, user_items, negatives
    cfg = model.cfg
    mask = target_pos > 0
    rows = mask.nonzero(as_tuple=True)[0]
    h = model.encode(input_ids)
    if not rows.numel():  # nothing to predict: a zero that still belongs to the graph
        return h.sum((1, 2)) * 0, mask.sum(1)
    views = model.graph_views() if views is None else views
    h_cl = model.encode(input_ids) if model.training else h  # the authors' second pass
    items, targets = input_ids[mask], target_pos[mask]
    emb = model.item_embeddings.weight
    fused = model.fuse([h[mask], views.adj[items], views.sim[items]])
    ce = softmax_ce(fused, emb, targets)
    w = conformity_weights(subgraph_agreement(model, views, input_ids, target_pos), input_ids, mask, cfg)
    personal = (w.amax(1, keepdim=True) - w)[mask]
    kl = weight_kl(w, mask, cfg)
    cl_seq = info_nce(h_cl[mask], views.adj, items, cfg.cl_temperature)
    uniq, inv = items.unique(return_inverse=True)  # the graph-graph term depends on the item only
    cl_graph = info_nce(views.adj[uniq], views.sim, uniq, cfg.cl_temperature)[inv]
    terms = ce + cfg.cl_weight * (w[mask] * cl_seq + personal * cl_graph) + cfg.kl_weight * kl[rows]
    sums = torch.zeros(input_ids.shape[0], dtype=terms.dtype, device=terms.device).index_add(0, rows, terms)
    return sums, mask.sum(1)
