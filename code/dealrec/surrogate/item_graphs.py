"""DCRec's two item graphs (Yang et al., WWW 2023, §3.2) and the graph operations its loss needs,
in plain torch (sparse COO products; no graph library).

Both graphs are built from the training samples only: each next-item sample reads the items
``items[:-1]`` of its user's training sequence (its inputs and its last target,
:func:`sample_items`), and nothing else enters a graph, so a validation or test item that no
training sequence holds touches no edge.

- Transition graph (the authors' ``build_adj_graph``): every adjacent pair (a, b) of a sequence
  adds 2 to both (a, b) and (b, a) (the authors count each pair once from each end), every item
  (padding row 0 included) gets a self-loop of weight 1, which also replaces a repeated item's
  self-transition (their ``setdiag``), and the matrix is normalised symmetrically:
  ``Â = D^{-1/2} A D^{-1/2}`` with D the weighted row sums.
- Co-interaction graph (``build_sim_graph``): cosine similarity of the items' user-count vectors
  (a user who holds an item twice counts 2, as their matrix sums duplicates); each item keeps its
  ``k + 1`` most similar items (itself included; ties by lower id, where the authors' argpartition
  picks arbitrarily; only positive similarities, the zero ones they may keep carry no weight),
  weights divided by their row sum. Their graph library passes messages from the row item to the
  column item, so the propagation operator stored here is the transpose of that row-normalised
  matrix.

Both are stored as the propagation operator P (``[2, E]`` indices, ``[E]`` values, coalesced) and
applied as ``P @ x`` by :func:`propagate`, an autograd function that also has a forward-mode rule
(``torch.sparse.mm`` has none, and the influence scores are directional derivatives).

The per-sample part of the subgraph agreement is also here: :func:`sample_subgraph` finds the
sample's own transitions, and :func:`without_own_edges` gives the two-layer propagation of the
graph with those edges removed, exactly, from the full graph's propagation and the
sample-sized block of Â (no per-sample pass over the whole graph).
"""

from __future__ import annotations

import warnings

import torch

# DCRec's GCN has two propagation layers (the authors' loop is fixed at 2); removing a sample's
# edges stays a sample-local correction for exactly two layers (a third would reach the
# neighbours of the sample's items).
GCN_LAYERS = 2


def sample_items(input_ids: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
    """[B, L + 1]: the items a next-item sample reads, in order — its inputs, then its last
    target (left-padded; 0 = padding)."""
    return torch.cat([input_ids, target_pos[:, -1:]], 1)


def _coalesced(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n), check_invariants=False).coalesce()
    return g.indices(), g.values()


def transition_graph(seqs: torch.Tensor, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The symmetric-normalised transition graph Â of left-padded 1-based sequences ``seqs``
    ([U, W]); ids 0..n_items."""
    n = n_items + 1
    a, b = seqs[:, :-1], seqs[:, 1:]
    pair = (a > 0) & (b > 0) & (a != b)
    src, dst = torch.cat([a[pair], b[pair]]), torch.cat([b[pair], a[pair]])
    loops = torch.arange(n)
    rows, cols = torch.cat([src, loops]), torch.cat([dst, loops])
    vals = torch.cat([torch.full((len(src),), 2.0), torch.ones(n)])
    idx, val = _coalesced(rows, cols, vals, n)
    deg = torch.zeros(n).index_add_(0, idx[0], val)
    d = deg.pow(-0.5)
    return idx, d[idx[0]] * val * d[idx[1]]


def similarity_graph(seqs: torch.Tensor, n_items: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The co-interaction graph's propagation operator: row-normalised top-(k+1) cosine
    similarities of the items' user vectors, transposed (see the module docstring)."""
    n = n_items + 1
    users = torch.arange(len(seqs))[:, None].expand_as(seqs)
    real = seqs > 0
    x = torch.sparse_coo_tensor(torch.stack([users[real], seqs[real]]), torch.ones(int(real.sum())),
                                (len(seqs), n), check_invariants=False).coalesce()  # [users, items], counts
    with warnings.catch_warnings():  # the sparse-sparse product goes through CSR, which warns it is "beta"
        warnings.simplefilter("ignore", UserWarning)
        co = torch.sparse.mm(x.t().coalesce(), x).coalesce()  # [items, items]: Σ_u x_ui x_uj
    (i, j), dot = co.indices(), co.values()
    norm = torch.zeros(n).index_add_(0, x.indices()[1], x.values() ** 2).sqrt()
    cos = dot / (norm[i] * norm[j])
    # per row: similarity descending, then column ascending; keep the first k + 1
    order = torch.argsort(j, stable=True)
    order = order[torch.argsort(-cos[order], stable=True)]
    order = order[torch.argsort(i[order], stable=True)]
    i, j, cos = i[order], j[order], cos[order]
    start = torch.searchsorted(i, i)  # the first entry of each row (i is sorted)
    keep = (torch.arange(len(i)) - start < k + 1) & (cos > 0)
    i, j, cos = i[keep], j[keep], cos[keep]
    row_sum = torch.zeros(n).index_add_(0, i, cos)
    return _coalesced(j, i, cos / row_sum[i], n)  # transposed: item j receives from i


class _Propagate(torch.autograd.Function):
    """``P @ x`` for a sparse P (no gradient for P), differentiable in x in every mode: reverse
    (``Pᵀ @ grad``, itself differentiable, so double backward works) and forward (``P @ tangent``)."""

    @staticmethod
    def forward(p: torch.Tensor, p_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(p, x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.p, ctx.p_t = inputs[0], inputs[1]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        return None, None, _Propagate.apply(ctx.p_t, ctx.p, grad)

    @staticmethod
    def jvp(ctx, p_tangent, p_t_tangent, x_tangent: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return _Propagate.apply(ctx.p, ctx.p_t, x_tangent)


def propagate(p: torch.Tensor, p_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``p @ x`` (``p`` sparse [n, n], ``p_t`` its transpose, ``x`` dense [n, d])."""
    return _Propagate.apply(p, p_t, x)


def gcn_layers(p: torch.Tensor, p_t: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor]:
    """``[x, P x, P² x]``: the inputs of the layer mean (LightGCN-style, no weights, as the
    authors' GraphConv without weight or bias)."""
    out = [x]
    for _ in range(GCN_LAYERS):
        out.append(propagate(p, p_t, out[-1]))
    return out


def pair_keys(indices: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted keys ``row · n + col`` of a coalesced graph's entries, for :func:`pair_values`."""
    return indices[0] * n + indices[1]


def pair_values(keys: torch.Tensor, values: torch.Tensor, n: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The graph's entries at (a, b), elementwise (0 where there is no edge)."""
    if not keys.numel():
        return torch.zeros(torch.broadcast_shapes(a.shape, b.shape), dtype=values.dtype, device=values.device)
    key = a * n + b
    at = torch.searchsorted(keys, key.reshape(-1)).clamp(max=keys.numel() - 1).reshape(key.shape)
    return torch.where(keys[at] == key, values[at], torch.zeros((), dtype=values.dtype, device=values.device))


def sample_subgraph(seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For item sequences ``seq`` [B, W] (0 = padding): ``first`` [B, W], the position holds the
    first occurrence of its item in the row; ``own`` [B, W, W], item s_q (q a first occurrence,
    s_q ≠ s_p) is adjacent to item s_p somewhere in the row — the sample's own transition edges,
    one column per distinct item."""
    real = seq > 0
    same = (seq[:, :, None] == seq[:, None, :]) & real[:, :, None] & real[:, None, :]
    width = seq.shape[1]
    step = torch.zeros(seq.shape[0], width, width, device=seq.device)  # adjacent positions
    pair = (real[:, :-1] & real[:, 1:]).float()
    at = torch.arange(width - 1, device=seq.device)
    step[:, at, at + 1] = pair
    step[:, at + 1, at] = pair
    s = same.float()
    own = (s @ step @ s) > 0
    earlier = torch.ones(width, width, dtype=torch.bool, device=seq.device).tril(-1)
    first = real & ~(same & earlier).any(2)
    return first, own & first[:, None, :] & ~same


def without_own_edges(
    layers: list[torch.Tensor], seq: torch.Tensor, a_pos: torch.Tensor, removed: torch.Tensor
) -> list[torch.Tensor]:
    """``[x, P'x, P'²x]`` at the positions of ``seq``, where P' is the graph P without the sample's
    own edges: ``layers`` = ``[x, Px, P²x]`` over all items, ``a_pos`` [B, W, W] = P's entries
    between the row's items (columns: first occurrences only), ``removed`` = ``a_pos`` on the
    sample's own edges, 0 elsewhere (Δ, so P' = P − Δ). Exact for two layers:
    ``P'x = Px − Δx`` on the sample's items, and ``P'²x = P²x − P_SS Δx − Δ P'x`` there, since Δx
    is zero outside them."""
    x, y, z = (t[seq] for t in layers)
    dx = removed @ x
    y2 = y - dx
    return [x, y2, z - a_pos @ dx - removed @ y2]


def neighbour_readouts(
    r: torch.Tensor, nbr_sum: torch.Tensor, degree: torch.Tensor, seq: torch.Tensor, own: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' dual neighbour readout at each position of ``seq``: the mean of ``r`` (the
    full graph's GCN output) over the item's neighbours through the sample's own edges (``own``;
    "civil", 0 when there is none) and over its other neighbours, its self-loop included
    ("foreign", never empty). ``nbr_sum`` = (binary adjacency) @ r and ``degree`` its row counts,
    over all items. The authors average a random draw of at most 10 of each; the mean over all of
    them is that draw's expectation and is deterministic."""
    own = own.to(r.dtype)
    civil_sum = own @ r[seq]
    civil_n = own.sum(-1, keepdim=True)
    civil = civil_sum / civil_n.clamp(min=1)
    foreign = (nbr_sum[seq] - civil_sum) / (degree[seq][..., None] - civil_n).clamp(min=1)
    return civil, foreign
