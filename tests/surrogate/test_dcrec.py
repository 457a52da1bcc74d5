"""DCRec as a surrogate: its registry entry, the item graphs (training data only, against dense
references), the sparse GCN and the per-sample edge removal against dense matrix products, the
per-sample loss against a literal computation, and DCRec's own versions of the checks that the
other surrogates share (tests/_surrogates.py leaves DCRec out of those): exact split batches and
trimmed evaluation, influence scores, v and Hessian-vector products against literal and dense
computations, deterministic influence and EL2N/GraNd, training, full-ranking evaluation and
checkpoints.

Not checked for DCRec: LiSSA and CG against a dense solve. Those checks need parameters in which
every per-sample loss is convex (PSD Hessians), and DCRec has none: the attention fusion makes
even the cross-entropy non-convex in every parameter that reaches the logits, and the
contrastive terms are cosines. The solvers themselves do not depend on the surrogate; their
input, the Hessian-vector product, is checked here against the dense Hessian.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from _surrogates import MAX_LEN, N_ITEMS, make_train, tiny

from dealrec.core.files import save_tensor
from dealrec.data.dataset import RecData
from dealrec.scores.baselines import el2n_scores, grand_scores
from dealrec.scores.influence import InfluenceConfig, InfluenceProblem, influence_scores
from dealrec.surrogate import DCREC, DCRec, build_surrogate, objective_of, surrogate_spec
from dealrec.surrogate.dcrec import dcrec_settings
from dealrec.surrogate.dcrec_loss import dcrec_loss_terms
from dealrec.surrogate.item_graphs import (
    gcn_layers,
    pair_values,
    propagate,
    sample_items,
    sample_subgraph,
    similarity_graph,
    transition_graph,
    without_own_edges,
)
from dealrec.surrogate.trainer import eval_sets, evaluate, train_surrogate

pytestmark = pytest.mark.usefixtures("one_thread")

PARAM = "item_encoder.layer.1.attention.dense.weight"


def tiny_dcrec(seed: int = 0, train: list[list[int]] | None = None, n_items: int = N_ITEMS) -> DCRec:
    """:func:`_surrogates.tiny`'s DCRec (eval mode, d = 8, non-trivial norms, biases and fusion)
    with the item graphs of ``train`` (default :func:`make_train`)."""
    model = tiny("DCRec", seed, n_items=n_items)
    with torch.no_grad():
        model.fusion_weights.mul_(15.0)
        model.fusion_query.mul_(15.0)
    samples = DCREC.build_samples(make_train() if train is None else train, n_items, MAX_LEN)
    DCREC.prepare(model, samples)
    return model


def dense(indices: torch.Tensor, values: torch.Tensor, n: int = N_ITEMS + 1) -> torch.Tensor:
    return torch.sparse_coo_tensor(indices, values, (n, n), check_invariants=False).to_dense()


def read_items(train: list[list[int]], max_len: int = MAX_LEN) -> list[list[int]]:
    """The 1-based items each next-item sample reads: items[:-1], its last max_len + 1."""
    return [[i + 1 for i in s[:-1]][-(max_len + 1):] if len(s) >= 3 else [] for s in train]


def dense_transition(seqs: list[list[int]], n: int) -> torch.Tensor:
    """The authors' build_adj_graph, literally: each position adds its previous and next pair in
    both directions, the diagonal set to 1, D^-1/2 A D^-1/2."""
    a = torch.zeros(n, n, dtype=torch.float64)
    for s in seqs:
        for i in range(len(s)):
            if i > 0:
                a[s[i], s[i - 1]] += 1
                a[s[i - 1], s[i]] += 1
            if i + 1 < len(s):
                a[s[i], s[i + 1]] += 1
                a[s[i + 1], s[i]] += 1
    a.fill_diagonal_(1.0)
    d = a.sum(1).pow(-0.5)
    return (d[:, None] * a * d[None]).float()


def dense_similarity(seqs: list[list[int]], n: int, k: int) -> torch.Tensor:
    """build_sim_graph, literally (ties by lower id; positive similarities only), as the operator
    that passes messages from each item to its top-(k+1) items: the transpose."""
    x = torch.zeros(len(seqs), n, dtype=torch.float64)
    for u, s in enumerate(seqs):
        for i in s:
            x[u, i] += 1
    norm = x.norm(dim=0)
    cos = torch.nan_to_num((x.T @ x) / (norm[:, None] * norm[None]))
    w = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        best = sorted((j for j in range(n) if cos[i, j] > 0), key=lambda j: (-float(cos[i, j]), j))[: k + 1]
        for j in best:
            w[i, j] = cos[i, j] / sum(cos[i, b] for b in best)
    return w.T.float()


# -- registry and configuration ---------------------------------------------------------------


def test_registry_entry_and_defaults():
    spec = surrogate_spec("DCRec")
    assert spec.influence_params == (PARAM,) and spec.objective is DCREC and spec.trim_exact
    cfg = spec.config()
    assert (cfg.dropout, cfg.attention_dropout, cfg.lr, cfg.hidden_size, cfg.num_hidden_layers) == (0.5, 0.1, 1e-3, 64, 2)
    # The authors' Beauty settings, and every DCRec-only setting in the cache key.
    assert dcrec_settings() == {"inner_size": 256, "graph_dropout": 0.5, "sim_group": 4, "cl_weight": 0.1,
                                "cl_temperature": 1.0, "kl_weight": 0.01, "weight_mean": 0.5, "weight_std": 0.1,
                                "first_item_weight": 0.5}
    assert spec.cache_key() == {"objective": {"objective": "dcrec", "graph_views": "per batch", **dcrec_settings()}}
    model = build_surrogate("DCRec", N_ITEMS, cfg)
    assert objective_of(model) is DCREC and model.cfg.attention_probs_dropout_prob == 0.1
    assert model.adj_indices.shape == (2, 0)  # no graphs without training data
    with pytest.raises(RuntimeError, match="no item graphs"):
        model(torch.ones(1, 3, dtype=torch.long))
    built = build_surrogate("DCRec", N_ITEMS, cfg, train=make_train())
    assert built.adj_indices.shape[1] > N_ITEMS and built.sim_indices.shape[1] > 0
    assert torch.equal(built.item_embeddings.weight, model.item_embeddings.weight)  # same seed, same weights


# -- graphs: training data only, and the authors' construction ------------------------------------


def test_graphs_are_built_from_training_samples_only():
    """Item 11 is only a validation and test item; the pair (3, 7) is adjacent only across the
    train/validation boundary; item 9 is only each sequence's last training item, which no sample
    reads. None of them has an edge (beyond the self-loop every item gets); the graphs are those
    of the training samples, whichever way the model gets them."""
    train = [[0, 1, 2, 3], [4, 5, 6, 7, 9], [3, 1, 0, 8], [7, 6, 5, 9], [2, 1]]
    valid = [[7], [11], [11], [3], [11]]
    test = [[11], [3], [7], [11], [7]]
    data = RecData("t", None, train, valid, test, [f"t{i}" for i in range(N_ITEMS)])
    cfg = surrogate_spec("DCRec").config(epochs=1, eval_every=0, batch_size=4, hidden_size=8, max_seq_length=MAX_LEN,
                                         ks=(5,))
    trained = build_surrogate("DCRec", N_ITEMS, cfg)
    train_surrogate(trained, data, cfg)
    built = build_surrogate("DCRec", N_ITEMS, cfg, train=train)
    for model in (trained, built):
        adj = dense(model.adj_indices, model.adj_values)
        sim = dense(model.sim_indices, model.sim_values)
        for item in (12, 10):  # 1-based ids of items 11 and 9
            assert adj[item].count_nonzero() == adj[:, item].count_nonzero() == 1 and adj[item, item] == 1
            assert sim[item].count_nonzero() == sim[:, item].count_nonzero() == 0
        assert adj[4, 8] == adj[8, 4] == 0  # items 3 and 7: adjacent only in train + valid
        assert adj[2, 3] > 0 and adj[7, 8] > 0  # pairs that the training samples read
        torch.testing.assert_close(adj, dense_transition(read_items(train), N_ITEMS + 1))
    # train_users: the graphs of those users' samples only
    cfg1 = dataclasses.replace(cfg, epochs=1)
    sub = build_surrogate("DCRec", N_ITEMS, cfg1)
    train_surrogate(sub, data, cfg1, train_users=[0, 2])
    torch.testing.assert_close(dense(sub.adj_indices, sub.adj_values),
                               dense_transition(read_items([train[0], train[2]]), N_ITEMS + 1))


@pytest.mark.parametrize("k", [1, 4])
def test_graph_construction_matches_the_authors_recipe(k):
    train = make_train(longest=16)  # some sequences are cut to the last max_len + 1 items
    samples = DCREC.build_samples(train, N_ITEMS, MAX_LEN)
    seqs = sample_items(samples.input_ids, samples.target_pos)
    assert [row[row > 0].tolist() for row in seqs] == read_items(train)
    idx, val = transition_graph(seqs, N_ITEMS)
    torch.testing.assert_close(dense(idx, val), dense_transition(read_items(train), N_ITEMS + 1))
    idx, val = similarity_graph(seqs, N_ITEMS, k)
    torch.testing.assert_close(dense(idx, val), dense_similarity(read_items(train), N_ITEMS + 1, k))


# -- the sparse GCN and the per-sample edge removal against dense products ---------------------------


def test_sparse_gcn_equals_dense_products():
    model = tiny_dcrec(seed=1)
    views = model.graph_views()  # eval mode: no dropout
    x = model.item_embeddings.weight
    for name, got in (("adj", views.adj), ("sim", views.sim)):
        p = dense(getattr(model, f"{name}_indices"), getattr(model, f"{name}_values"))
        want = model.gcn_norm((x + p @ x + p @ p @ x) / 3 + x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # propagate: forward, backward (and double backward) and forward mode agree with the dense product
    p_sparse, p_t = model.graph("sim")
    p = p_sparse.to_dense()
    y = torch.randn(N_ITEMS + 1, 8, dtype=torch.float32, requires_grad=True)
    t = torch.randn_like(y)
    torch.testing.assert_close(propagate(p_sparse, p_t, y), p @ y)
    (g,) = torch.autograd.grad(propagate(p_sparse, p_t, y).pow(3).sum(), y, create_graph=True)
    (gd,) = torch.autograd.grad((p @ y).pow(3).sum(), y, create_graph=True)
    torch.testing.assert_close(g, gd)
    hv = torch.autograd.grad((g * t).sum(), y)[0]
    torch.testing.assert_close(hv, torch.autograd.grad((gd * t).sum(), y)[0])
    _, jv = torch.func.jvp(lambda v: propagate(p_sparse, p_t, v).pow(2).sum(), (y.detach(),), (t,))
    torch.testing.assert_close(jv, (2 * (p @ y) * (p @ t)).sum().detach())


def test_removing_a_samples_own_edges_is_exact():
    """[x, P'x, P'²x] at a sample's items, P' = the transition graph without the sample's own
    transition edges, equals the dense products with those entries zeroed."""
    model = tiny_dcrec(seed=2)
    samples = DCREC.build_samples(make_train(), N_ITEMS, MAX_LEN)
    seq = sample_items(samples.input_ids, samples.target_pos)
    p = dense(model.adj_indices, model.adj_values)
    x = torch.randn(N_ITEMS + 1, 8, dtype=torch.float32)
    keys = model.adjacency()[0]
    first, own = sample_subgraph(seq)
    a_pos = pair_values(keys, model.adj_values, N_ITEMS + 1, seq[:, :, None], seq[:, None, :]) * first[:, None, :]
    got = without_own_edges(gcn_layers(*model.graph("adj"), x), seq, a_pos, a_pos * (own & (a_pos > 0)))
    for u in range(len(seq)):
        items = seq[u][seq[u] > 0].tolist()
        if not items:
            continue
        pu = p.clone()
        for a, b in zip(items, items[1:]):
            if a != b:
                pu[a, b] = pu[b, a] = 0
        want = [x, pu @ x, pu @ pu @ x]
        for g, w in zip(got, want):
            torch.testing.assert_close(g[u][seq[u] > 0], w[items], rtol=1e-5, atol=1e-6)


# -- the per-sample loss --------------------------------------------------------------------------


def literal_loss(model: DCRec, items: list[int]) -> torch.Tensor:
    """One sample's loss, position by position, from the formulas (dense matrices, Python loops):
    ``items`` = the 1-based items the sample reads."""
    cfg, n = model.cfg, N_ITEMS + 1
    ids = torch.tensor([items[:-1]])
    views = model.graph_views()
    h = model.encode(ids)[0]
    emb = model.item_embeddings.weight
    p = dense(model.adj_indices, model.adj_values)
    own = {(a, b) for a, b in zip(items, items[1:]) if a != b}
    own |= {(b, a) for a, b in own}
    pu = p.clone()
    for a, b in own:
        pu[a, b] = 0
    x = emb
    aug = model.gcn_norm((x + pu @ x + pu @ pu @ x) / 3 + x)
    r = views.adj

    def cos(a, b):
        return F.cosine_similarity(a, b, dim=0, eps=1e-12)

    agree, terms = [], []
    for i in items[:-1]:
        civil = [b for b in range(n) if (i, b) in own]
        foreign = [b for b in range(n) if p[i, b] != 0 and b not in civil]
        c = r[civil].mean(0) if civil else torch.zeros(8)
        f = r[foreign].mean(0)
        agree.append(torch.sigmoid((cos(r[i], aug[i]) + cos(r[i], f) + cos(c, f)) / 3))
    agree = torch.stack(agree)
    if float(agree.max() - agree.min()) > 1e-6:
        norm = (agree - agree.min()) / (agree.max() - agree.min())
        w = cfg.weight_mean * norm / norm.mean()
    else:
        w = torch.full_like(agree, cfg.weight_mean)
    w = torch.cat([torch.tensor([cfg.first_item_weight]), w[1:]])  # the row's first position: a one-item prefix
    m = len(w)
    q = cfg.weight_mean + cfg.weight_std * torch.special.ndtri((torch.arange(m) + 0.5) / m)
    log_q = torch.log(q.clamp(min=1e-8) + 1e-8)
    kl = (log_q.exp() * (log_q - torch.log_softmax(w.sort().values, 0))).sum() / m
    for t, (i, y) in enumerate(zip(items[:-1], items[1:])):
        fused = model.fuse([h[t], r[i], views.sim[i]])
        ce = -torch.log_softmax(emb[1:] @ fused, 0)[y - 1]
        nce_seq = -torch.log_softmax(torch.stack([cos(h[t], r[j]) for j in range(1, n)]), 0)[i - 1]
        nce_graph = -torch.log_softmax(torch.stack([cos(r[i], views.sim[j]) for j in range(1, n)]), 0)[i - 1]
        terms.append(ce + cfg.cl_weight * (w[t] * nce_seq + (w.max() - w[t]) * nce_graph) + cfg.kl_weight * kl)
    return torch.stack(terms).sum()


def test_per_sample_loss_equals_literal_computation_and_depends_on_the_sample_only():
    model = tiny_dcrec(seed=3)
    train = make_train()
    s = DCREC.build_samples(train, N_ITEMS, MAX_LEN)
    with torch.no_grad():
        sums, counts = dcrec_loss_terms(model, s.input_ids, s.target_pos)
        for u, items in enumerate(read_items(train)):
            assert int(counts[u]) == max(len(items) - 1, 0)
            if not items:
                assert sums[u] == 0
                continue
            torch.testing.assert_close(sums[u], literal_loss(model, items), rtol=1e-4, atol=1e-5)
            width = len(items) - 1  # the sample alone, without padding: the same loss
            alone, _ = dcrec_loss_terms(model, s.input_ids[u:u + 1, -width:], s.target_pos[u:u + 1, -width:])
            torch.testing.assert_close(alone[0], sums[u], rtol=1e-5, atol=1e-6)


# -- DCRec's versions of the shared batching checks ------------------------------------------------


def test_split_batch_loss_and_gradient_equal_padded_batch():
    model = tiny_dcrec(seed=4)
    s = DCREC.build_samples(make_train(), N_ITEMS, MAX_LEN)
    names, params = zip(*model.named_parameters())
    padded = DCREC.batch_loss(model, s.input_ids, s.target_pos, None, split=False)
    g_pad = torch.autograd.grad(padded, params)
    for overhead in (0.0, 8.0, 1e9):
        split = DCREC.batch_loss(model, s.input_ids, s.target_pos, None, split=True, overhead=overhead)
        torch.testing.assert_close(split, padded, rtol=1e-6, atol=0)
        for n, a, b in zip(names, g_pad, torch.autograd.grad(split, params)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * float(a.abs().max()) + 1e-10, msg=n)


def test_a_split_training_batch_reads_one_draw_of_the_graph_views(monkeypatch):
    model = tiny_dcrec(seed=4).train()
    s = DCREC.build_samples(make_train(), N_ITEMS, MAX_LEN)
    calls = []
    views = model.graph_views
    monkeypatch.setattr(model, "graph_views", lambda: calls.append(1) or views())
    buckets = []
    terms = dcrec_loss_terms
    monkeypatch.setattr("dealrec.surrogate.objective.dcrec_loss_terms",
                        lambda *a, **k: buckets.append(k["views"]) or terms(*a, **k))
    DCREC.batch_loss(model, s.input_ids, s.target_pos, None, split=True, overhead=0.0).backward()
    assert len(buckets) > 1 and len(calls) == 1
    assert all(v is buckets[0] for v in buckets)


def chain_data(n_users: int = 80, n_items: int = 30, seed: int = 0) -> RecData:
    """Users walk the item chain i, i+1, ... (mod n_items) from a random start: learnable transitions."""
    g = torch.Generator().manual_seed(seed)
    train, valid, test = [], [], []
    for _ in range(n_users):
        start, n = int(torch.randint(0, n_items, (1,), generator=g)), int(torch.randint(2, 12, (1,), generator=g))
        seq = [(start + k) % n_items for k in range(n + 2)]
        train.append(seq[:n])
        valid.append([seq[n]])
        test.append([seq[n + 1]])
    return RecData("chain", None, train, valid, test, [f"t{i}" for i in range(n_items)])


def test_training_split_equals_padded_without_dropout():
    data = chain_data(40, 20)
    states = {}
    for batching in ("split", "padded"):
        cfg = surrogate_spec("DCRec").config(epochs=2, eval_every=0, batch_size=16, lr=1e-2, hidden_size=8,
                                             max_seq_length=MAX_LEN, dropout=0.0, attention_dropout=0.0, ks=(5,),
                                             batching=batching, bucket_overhead=2.0)
        model = build_surrogate("DCRec", 20, cfg)
        model.cfg.graph_dropout = 0.0
        train_surrogate(model, data, cfg)
        states[batching] = model.state_dict()
    for k, v in states["padded"].items():
        if k.endswith("attention.key.bias"):  # exact gradient 0 (softmax is shift-invariant): noise only
            continue
        torch.testing.assert_close(states["split"][k], v, rtol=1e-4, atol=1e-6, msg=k)


def test_trimmed_evaluation_equals_padded():
    data = chain_data(60, 25)
    model = build_surrogate("DCRec", 25, surrogate_spec("DCRec").config(hidden_size=8, max_seq_length=MAX_LEN),
                            train=data.train).eval()
    for ev in eval_sets(data, MAX_LEN):
        a = evaluate(model, ev, (1, 5, 10), batch_size=7)
        b = evaluate(model, ev, (1, 5, 10), batch_size=7, trim=False)
        for m in ("Recall", "NDCG", "MRR"):
            assert a[m] == pytest.approx(b[m], rel=1e-6, abs=1e-9), m


# -- influence scores and baselines -----------------------------------------------------------------


@pytest.mark.parametrize("params", [(PARAM,), ("item_embeddings.weight", "fusion_weights", "gcn_norm.bias")])
def test_influence_scores_equal_per_sample_gradient_products(params):
    """The batched directional derivatives (forward mode, through the sparse GCN too) equal one
    backward pass per sample."""
    prob = InfluenceProblem(tiny_dcrec(seed=5), DCREC.build_samples(make_train(), N_ITEMS, MAX_LEN),
                            InfluenceConfig(params=params, chunk_positions=64))
    g = torch.Generator().manual_seed(1)
    h = {k: torch.randn(v.shape, generator=g) for k, v in prob.params.items()}
    got = prob.scores(h)
    n = len(prob.samples)
    grads = prob.per_sample_grads(range(n), trim=False)
    want = sum((grads[k] * h[k][None]).reshape(n, -1).sum(1) for k in h)
    lengths = torch.tensor([len(x) for x in make_train()])
    assert got[lengths < 3].eq(0).all() and torch.count_nonzero(want) == int((lengths >= 3).sum())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))


@pytest.mark.parametrize("batch_size", [7, 500])
def test_mean_gradient_is_the_mean_of_batch_loss_gradients(batch_size):
    model = tiny_dcrec(seed=6)
    reference = tiny_dcrec(seed=6)
    params = (PARAM, "item_embeddings.weight")
    s = DCREC.build_samples(make_train(), N_ITEMS, MAX_LEN)
    got = InfluenceProblem(model, s, InfluenceConfig(params=params, batch_size=batch_size, chunk_positions=50)
                           ).mean_gradient()
    named = dict(reference.named_parameters())
    grads = []
    for start in range(0, len(s), batch_size):
        b = slice(start, start + batch_size)
        loss = DCREC.batch_loss(reference, s.input_ids[b], s.target_pos[b], None, split=False)
        grads.append(torch.autograd.grad(loss, [named[k] for k in params]))
    for i, k in enumerate(params):
        torch.testing.assert_close(got[k], torch.stack([g[i] for g in grads]).mean(0), rtol=1e-5, atol=1e-7)


def test_hvp_equals_dense_hessian():
    prob = InfluenceProblem(tiny_dcrec(seed=7), DCREC.build_samples(make_train(), N_ITEMS, MAX_LEN),
                            InfluenceConfig(params=None))
    assert tuple(prob.params) == (PARAM,)
    g = torch.Generator().manual_seed(2)
    h = {k: torch.randn(v.shape, generator=g) for k, v in prob.params.items()}
    flat_h = h[PARAM].reshape(-1).double()
    elig = prob.eligible.nonzero(as_tuple=True)[0]
    for idx in (elig[:1], elig[:6], torch.arange(len(prob.samples))):
        hess = torch.autograd.functional.hessian(
            lambda x, idx=idx: prob.mean_loss({PARAM: x.view(8, 8)}, idx), prob.params[PARAM].reshape(-1)).double()
        got = prob.hvp(idx, h)[PARAM].reshape(-1).double()
        torch.testing.assert_close(got, hess @ flat_h, rtol=1e-4, atol=1e-6 * float((hess @ flat_h).abs().max()))


def test_influence_and_baselines_are_deterministic():
    """Two runs from scratch (model, graphs, samples) with the same seed: identical tensors."""
    runs = []
    for _ in range(2):
        model = tiny_dcrec(seed=8)
        s = DCREC.build_samples(make_train(), N_ITEMS, MAX_LEN)
        res = influence_scores(model, s, InfluenceConfig(params=None, recursion_depth=20, scale=50.0, seed=0))
        drawn, neg = DCREC.draw(s, torch.Generator().manual_seed(0))
        assert drawn is s and neg is None  # nothing is drawn per sample
        runs.append((res.scores, el2n_scores(model, s, None), grand_scores(model, s, None, PARAM)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    scores, el2n, grand = runs[0]
    elig = s.eligible
    assert scores[~elig].eq(0).all() and scores[elig].ne(0).all()
    assert el2n[~elig].eq(0).all() and (el2n[elig] > 0).all()
    # GraNd = the norm of each sample's loss gradient
    prob = InfluenceProblem(tiny_dcrec(seed=8), s, InfluenceConfig(params=(PARAM,)))
    want = prob.per_sample_grads(range(len(s)))[PARAM].flatten(1).norm(dim=1)
    torch.testing.assert_close(grand, want, rtol=1e-4, atol=1e-7)


# -- training, evaluation, checkpoints ----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(one_thread):
    data = chain_data()
    cfg = surrogate_spec("DCRec").config(epochs=8, eval_every=4, patience=0, batch_size=32, hidden_size=16,
                                         max_seq_length=MAX_LEN, lr=1e-2, ks=(1, 5, 10))
    model = build_surrogate("DCRec", 30, cfg)
    return data, cfg, model, train_surrogate(model, data, cfg)


def test_training_learns_and_evaluation_ranks_all_items(trained):
    data, cfg, model, res = trained
    losses = [r["loss"] for r in res.history]
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0], losses
    assert set(res.test) >= {"Recall", "NDCG", "Precision", "MRR", "n_users"} and res.test["n_users"] == 80
    assert all(len(res.test[m]) == 3 for m in ("Recall", "NDCG", "Precision", "MRR"))
    assert res.test["Recall"][1] > 0.5  # chance: 5 / 30
    _, test = eval_sets(data, MAX_LEN)
    assert evaluate(model, test, cfg.ks) == res.test


def test_checkpoint_round_trip(trained, tmp_path):
    """The state_dict carries the graphs: loaded into a fresh build without graphs, or with another
    data set's, it predicts the same; the pipeline loads a checkpoint of this data set and refuses
    one of another."""
    from dealrec.prune.pipeline import PruneConfig, load_or_train_surrogate

    data, cfg, model, res = trained
    save_tensor(tmp_path / "ckpt.pt", model.state_dict())
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    _, test = eval_sets(data, MAX_LEN)
    ids = test.input_ids[:20]
    for fresh in (build_surrogate("DCRec", 30, dataclasses.replace(cfg, seed=1)),
                  build_surrogate("DCRec", 30, dataclasses.replace(cfg, seed=1), train=chain_data(20, 30, 5).train)):
        fresh.load_state_dict(state)
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
        with torch.no_grad():
            assert torch.equal(fresh.eval()(ids), model.eval()(ids))
        assert evaluate(fresh, test, cfg.ks) == res.test
    pcfg = PruneConfig.flat(surrogate="DCRec", surrogate_checkpoint=str(tmp_path / "p.pt"), score_dir=str(tmp_path))
    made = build_surrogate("DCRec", 30, dataclasses.replace(pcfg.surrogate.config(), seed=3), train=data.train)
    save_tensor(tmp_path / "p.pt", made.state_dict())
    loaded = load_or_train_surrogate(pcfg, data)
    assert objective_of(loaded) is DCREC
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), made.state_dict().values()))
    other = build_surrogate("DCRec", 30, pcfg.surrogate.config(), train=chain_data(20, 30, 5).train)
    save_tensor(tmp_path / "p.pt", other.state_dict())
    with pytest.raises(ValueError, match="does not match DCRec"):
        load_or_train_surrogate(pcfg, data)
