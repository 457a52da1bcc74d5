"""SASRec surrogate: the original checkpoint layout and forward, samples, negatives, loss, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dealrec.data.dataset import RecData
from dealrec.study.paired import metrics_from_ranks
from dealrec.surrogate import SURROGATES, build_surrogate, register_surrogate
from dealrec.surrogate import trainer as trainer_mod
from dealrec.surrogate.loss import batch_loss, per_sample_loss, sample_loss_terms
from dealrec.surrogate.samples import build_eval, build_samples, sample_negatives, trim_left
from dealrec.surrogate.sasrec import SASRec, SASRecConfig
from dealrec.surrogate.trainer import SurrogateConfig, eval_sets, evaluate, evaluate_per_user, train_surrogate

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**kw) -> SASRecConfig:
    base = dict(
        item_size=31, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_seq_length=10,
    )
    return SASRecConfig(**{**base, **kw})


def expected_layout(n_items: int, d: int = 64, max_len: int = 50, layers: int = 2) -> dict[str, tuple]:
    out = {
        "item_embeddings.weight": (n_items + 1, d),
        "position_embeddings.weight": (max_len, d),
        "LayerNorm.weight": (d,),
        "LayerNorm.bias": (d,),
    }
    for i in range(layers):
        p = f"item_encoder.layer.{i}."
        for name in ("query", "key", "value", "dense"):
            out[f"{p}attention.{name}.weight"] = (d, d)
            out[f"{p}attention.{name}.bias"] = (d,)
        out[f"{p}attention.LayerNorm.weight"] = (d,)
        out[f"{p}attention.LayerNorm.bias"] = (d,)
        for name in ("conv1d_1", "conv1d_2"):
            out[f"{p}intermediate.{name}.weight"] = (d, d, 1)
            out[f"{p}intermediate.{name}.bias"] = (d,)
        out[f"{p}intermediate.LayerNorm.weight"] = (d,)
        out[f"{p}intermediate.LayerNorm.bias"] = (d,)
    return out


# -- layout and forward -------------------------------------------------------------------------


def test_state_dict_layout_is_the_original():
    n_items = 30
    model = build_surrogate("SASRec", n_items, SurrogateConfig())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_layout(n_items)
    assert len(got) == 4 + 2 * 16  # embeddings + LN, then 8 linear + 4 conv + 4 LN tensors per layer


def random_state(layout: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in layout.items():
        t = torch.randn(shape, generator=g) * 0.5
        if "LayerNorm.weight" in k:
            t = 1.0 + 0.2 * t
        sd[k] = t
    return sd


def tf_layer_norm(x, w, b, eps=1e-12):
    u = x.mean(-1, keepdim=True)
    s = ((x - u) ** 2).mean(-1, keepdim=True)
    return w * (x - u) / torch.sqrt(s + eps) + b


def reference_forward(sd: dict[str, torch.Tensor], ids: torch.Tensor, n_heads: int, n_layers: int) -> torch.Tensor:
    """The original SASRecModel.finetune written out with plain tensor ops (eval mode)."""
    b, n = ids.shape
    d = sd["item_embeddings.weight"].shape[1]
    hs = d // n_heads
    x = sd["item_embeddings.weight"][ids] + sd["position_embeddings.weight"][torch.arange(n)][None]
    x = tf_layer_norm(x, sd["LayerNorm.weight"], sd["LayerNorm.bias"])
    keep = (ids > 0).float()[:, None, :]  # [B, 1, L] key is a real item
    causal = torch.tril(torch.ones(n, n))[None]  # [1, L, L] key position <= query position
    additive = (1.0 - keep * causal) * -10000.0  # [B, L, L]
    for i in range(n_layers):
        p = f"item_encoder.layer.{i}."

        def lin(t, name, p=p):
            return t @ sd[f"{p}attention.{name}.weight"].T + sd[f"{p}attention.{name}.bias"]

        q, k, v = lin(x, "query"), lin(x, "key"), lin(x, "value")
        heads = []
        for h in range(n_heads):
            sl = slice(h * hs, (h + 1) * hs)
            scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hs) + additive
            heads.append(torch.softmax(scores, dim=-1) @ v[..., sl])
        ctx = torch.cat(heads, dim=-1)
        a = tf_layer_norm(lin(ctx, "dense") + x, sd[f"{p}attention.LayerNorm.weight"], sd[f"{p}attention.LayerNorm.bias"])
        w1 = sd[f"{p}intermediate.conv1d_1.weight"][:, :, 0]
        w2 = sd[f"{p}intermediate.conv1d_2.weight"][:, :, 0]
        f = torch.relu(a @ w1.T + sd[f"{p}intermediate.conv1d_1.bias"])
        f = torch.relu(f @ w2.T + sd[f"{p}intermediate.conv1d_2.bias"])
        x = tf_layer_norm(f + a, sd[f"{p}intermediate.LayerNorm.weight"], sd[f"{p}intermediate.LayerNorm.bias"])
    return x


def padded_batch(n_items: int, max_len: int, lengths: list[int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max_len, dtype=torch.long)
    for r, n in enumerate(lengths):
        if n:
            ids[r, max_len - n:] = torch.randint(1, n_items + 1, (n,), generator=g)
    return ids


def test_original_state_dict_loads_and_forward_matches_reference():
    cfg = tiny_cfg()
    sd = random_state(expected_layout(cfg.item_size - 1, cfg.hidden_size, cfg.max_seq_length))
    model = SASRec(SASRecConfig(**{**cfg.__dict__, "hidden_dropout_prob": 0.5, "attention_probs_dropout_prob": 0.5}))
    model.load_state_dict(sd, strict=True)
    model.eval()
    ids = padded_batch(30, cfg.max_seq_length, [10, 7, 3, 1, 0, 5])
    with torch.no_grad():
        got = model(ids)
    want = reference_forward(sd, ids, cfg.num_attention_heads, cfg.num_hidden_layers)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Dropout is active in train mode only.
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        assert not torch.allclose(model(ids), want, atol=1e-3)


def test_layout_mismatch_refused():
    model = SASRec(tiny_cfg())
    sd = random_state(expected_layout(30, 8, 10))
    sd["item_encoder.layer.0.intermediate.extra.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict(sd)


def test_heads_must_divide_hidden():
    with pytest.raises(ValueError, match="not a multiple"):
        SASRec(tiny_cfg(hidden_size=9))


def test_trim_left_is_exact():
    model = SASRec(tiny_cfg())
    model.load_state_dict(random_state(expected_layout(30, 8, 10), seed=3))
    model.eval()
    ids = padded_batch(30, 10, [6, 4, 1, 0, 2], seed=1)
    pos = padded_batch(30, 10, [6, 4, 1, 0, 2], seed=2) * (ids > 0)
    neg = padded_batch(30, 10, [6, 4, 1, 0, 2], seed=4) * (ids > 0)
    t_ids, t_pos, t_neg = trim_left(ids, pos, neg)
    assert t_ids.shape == (5, 6) and torch.equal(t_ids, ids[:, -6:])
    assert torch.equal(t_pos, pos[:, -6:]) and torch.equal(t_neg, neg[:, -6:])
    assert trim_left(ids, pos)[2] is None
    with torch.no_grad():
        full, trimmed = model(ids), model(t_ids)
    real = t_ids > 0
    torch.testing.assert_close(trimmed[real], full[:, -6:][real], rtol=0, atol=1e-6)
    # The loss (which only reads real positions) is unchanged.
    with torch.no_grad():
        torch.testing.assert_close(
            per_sample_loss(model, ids, pos, neg), per_sample_loss(model, t_ids, t_pos, t_neg), rtol=1e-6, atol=1e-7
        )
    # All padding: one column is kept.
    z = torch.zeros(2, 10, dtype=torch.long)
    assert trim_left(z, z)[0].shape == (2, 1)


# -- samples ------------------------------------------------------------------------------------


def test_build_samples():
    long_seq = list(range(60))
    train = [[0, 1, 2, 3, 4], [5], [], [6, 7], long_seq, [8, 9, 10], [3, 3, 4]]
    s = build_samples(train, n_items=70, max_len=50)
    assert s.input_ids.shape == (7, 50) and s.target_pos.shape == (7, 50)
    # User 0: 1-based [1..5]; inputs [1, 2, 3], targets [2, 3, 4], left padded.
    assert s.input_ids[0, -3:].tolist() == [1, 2, 3] and s.input_ids[0, :-3].eq(0).all()
    assert s.target_pos[0, -3:].tolist() == [2, 3, 4] and s.target_pos[0, :-3].eq(0).all()
    # Lengths 1, 0, 2: nothing.
    for u in (1, 2, 3):
        assert s.input_ids[u].eq(0).all() and s.target_pos[u].eq(0).all()
    # Long user: 60 items -> 58 inputs/targets, the last 50 kept.
    seq = [i + 1 for i in long_seq]
    assert s.input_ids[4].tolist() == seq[:-2][-50:]
    assert s.target_pos[4].tolist() == seq[1:-1][-50:]
    # Length 3: one input, one target.
    assert s.input_ids[5, -1].item() == 9 and s.target_pos[5, -1].item() == 10
    assert s.input_ids[5, :-1].eq(0).all()
    assert s.eligible.tolist() == [True, False, False, False, True, True, True]
    # Distinct items, sorted, 1-based, 0-padded on the right.
    assert s.user_items[0].tolist()[:5] == [1, 2, 3, 4, 5] and s.user_items[0, 5:].eq(0).all()
    assert s.user_items[6].tolist()[:2] == [4, 5] and s.user_items[6, 2:].eq(0).all()
    assert s.user_items[2].eq(0).all()
    assert s.user_items.shape[1] == 60
    assert len(s) == 7 and s.n_items == 70
    sub = s.rows(torch.tensor([0, 5]))
    assert len(sub) == 2 and torch.equal(sub.input_ids[1], s.input_ids[5])


def test_build_eval():
    ev = build_eval([[0, 1], [2], [3, 4, 5]], [[6], [], [7, 8]], max_len=4)
    assert ev.users.tolist() == [0, 2]
    assert ev.input_ids.tolist() == [[0, 0, 1, 2], [0, 4, 5, 6]]
    assert ev.targets == [[7], [8, 9]]
    assert ev.exclude == [[1, 2], [4, 5, 6]]


def test_sample_negatives():
    n_items = 12
    g = torch.Generator().manual_seed(0)
    train = []
    for _ in range(40):
        n = int(torch.randint(0, 11, (1,), generator=g))
        train.append(torch.randint(0, 10, (n,), generator=g).tolist())  # up to 10 of 12 items
    train.append(list(range(10)))  # only items 11, 12 (1-based) allowed
    s = build_samples(train, n_items, max_len=10)
    for seed in range(5):
        neg = sample_negatives(s, torch.Generator().manual_seed(seed), chunk=7)
        mask = s.target_pos > 0
        assert neg[~mask].eq(0).all()
        assert neg[mask].ge(1).all() and neg[mask].le(n_items).all()
        for u, seq in enumerate(train):
            assert not set(neg[u][mask[u]].tolist()) & {i + 1 for i in seq}
        assert set(neg[-1][mask[-1]].tolist()) <= {11, 12}
    a = sample_negatives(s, torch.Generator().manual_seed(7))
    b = sample_negatives(s, torch.Generator().manual_seed(7), chunk=3)  # chunking changes nothing here
    c = sample_negatives(s, torch.Generator().manual_seed(8))
    assert torch.equal(a, sample_negatives(s, torch.Generator().manual_seed(7)))
    assert (a > 0).sum() == (b > 0).sum()
    assert not torch.equal(a, c)


# -- loss ---------------------------------------------------------------------------------------


def random_model(seed: int = 0, **kw) -> SASRec:
    cfg = tiny_cfg(**kw)
    model = SASRec(cfg)
    model.load_state_dict(random_state(expected_layout(cfg.item_size - 1, cfg.hidden_size, cfg.max_seq_length), seed))
    return model.eval()


def test_batch_loss_equals_original_formula():
    model = random_model(1)
    g = torch.Generator().manual_seed(0)
    train = [torch.randint(0, 30, (int(n),), generator=g).tolist() for n in torch.randint(0, 14, (16,), generator=g)]
    s = build_samples(train, 30, 10)
    neg = sample_negatives(s, torch.Generator().manual_seed(1))
    ids, pos = s.input_ids, s.target_pos
    with torch.no_grad():
        got = batch_loss(model, ids, pos, neg)
        # The original FineTrainer.cross_entropy:
        seq_out = model(ids)
        emb = model.item_embeddings.weight
        pos_logits = (emb[pos] * seq_out).sum(-1)
        neg_logits = (emb[neg] * seq_out).sum(-1)
        istarget = (pos > 0).float()
        want = torch.sum(
            -torch.log(torch.sigmoid(pos_logits) + 1e-24) * istarget
            - torch.log(1 - torch.sigmoid(neg_logits) + 1e-24) * istarget
        ) / torch.sum(istarget)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
        # Per-sample loss: the same formula averaged over one user's target positions.
        per = per_sample_loss(model, ids, pos, neg)
        terms = (-torch.log(torch.sigmoid(pos_logits) + 1e-24) - torch.log(1 - torch.sigmoid(neg_logits) + 1e-24))
        for u in range(len(s)):
            m = pos[u] > 0
            if m.any():
                torch.testing.assert_close(per[u], terms[u][m].mean(), rtol=1e-5, atol=0)
            else:
                assert per[u] == 0


def test_expected_negatives_loss_is_the_mean_over_allowed_items():
    model = random_model(2, item_size=9)
    train = [[0, 1, 2, 3], [4, 4, 5], [6], [7, 0, 1, 2, 3, 4]]
    s = build_samples(train, 8, 10)
    with torch.no_grad():
        got = per_sample_loss(model, s.input_ids, s.target_pos, user_items=s.user_items, negatives="expected")
        seq_out = model(s.input_ids)
        emb = model.item_embeddings.weight
        for u, seq in enumerate(train):
            pos_t = [t for t in range(10) if s.target_pos[u, t] > 0]
            if not pos_t:
                assert got[u] == 0
                continue
            allowed = [j for j in range(1, 9) if j - 1 not in seq]
            vals = []
            for t in pos_t:
                h = seq_out[u, t]
                p = -math.log(torch.sigmoid(h @ emb[s.target_pos[u, t]]).item())
                n = np.mean([-math.log(1 - torch.sigmoid(h @ emb[j]).item()) for j in allowed])
                vals.append(p + n)
            assert got[u].item() == pytest.approx(np.mean(vals), rel=1e-5)


def test_loss_argument_errors():
    model = random_model(0)
    ids = padded_batch(30, 10, [4])
    with pytest.raises(ValueError, match="needs target_neg"):
        sample_loss_terms(model, ids, ids)
    with pytest.raises(ValueError, match="needs user_items"):
        sample_loss_terms(model, ids, ids, negatives="expected")
    with pytest.raises(ValueError, match="negatives must be one of"):
        sample_loss_terms(model, ids, ids, ids, negatives="bogus")


def test_surrogate_registry():
    with pytest.raises(ValueError, match="unknown surrogate 'Caser'; registered: BERT4Rec, DCRec, GRU4Rec, SASRec"):
        build_surrogate("Caser", 10, SurrogateConfig())
    try:
        @register_surrogate("Tiny")
        def _tiny(n_items, cfg):
            return SASRec(tiny_cfg(item_size=n_items + 1))

        assert build_surrogate("Tiny", 5, SurrogateConfig()).item_embeddings.weight.shape == (6, 8)
    finally:
        SURROGATES.pop("Tiny", None)


# -- training -----------------------------------------------------------------------------------


def synthetic_data(n_users: int = 60, n_items: int = 20, seed: int = 0) -> RecData:
    g = torch.Generator().manual_seed(seed)
    train, valid, test = [], [], []
    for _ in range(n_users):
        n = int(torch.randint(1, 9, (1,), generator=g))
        start = int(torch.randint(0, n_items, (1,), generator=g))
        seq = [(start + k) % n_items for k in range(n + 2)]  # a learnable "next item" pattern
        train.append(seq[:n])
        valid.append([seq[n]])
        test.append([seq[n + 1]])
    return RecData("synthetic", None, train, valid, test, [f"t{i}" for i in range(n_items)])


def test_best_validation_checkpoint_is_kept(monkeypatch):
    """Scripted validation scores: the model must end with the weights of the best evaluation."""
    data = synthetic_data()
    cfg = SurrogateConfig(epochs=8, eval_every=2, patience=0, batch_size=16, lr=1e-2, hidden_size=8,
                          max_seq_length=10, ks=(5, 10))
    model = build_surrogate("SASRec", data.n_items, cfg)
    script = iter([0.1, 0.4, 0.2, 0.3])  # best at the 2nd evaluation = epoch 3
    snapshots = []
    real_evaluate = trainer_mod.evaluate

    def fake_evaluate(m, ev, ks, batch_size=2048, device="cpu"):
        metrics = real_evaluate(m, ev, ks, batch_size, device)
        if ev is valid_inputs[0]:
            try:
                metrics["Recall"][0] = next(script)
                snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
            except StopIteration:
                pass
        return metrics

    valid_inputs = []
    real_eval_sets = trainer_mod.eval_sets

    def spy_eval_sets(d, max_len=50):
        v, t = real_eval_sets(d, max_len)
        valid_inputs.append(v)
        return v, t

    monkeypatch.setattr(trainer_mod, "evaluate", fake_evaluate)
    monkeypatch.setattr(trainer_mod, "eval_sets", spy_eval_sets)
    res = train_surrogate(model, data, cfg)
    assert len(snapshots) == 4
    assert res.best_epoch == 3
    assert res.best_valid["Recall"][0] == 0.4
    final = model.state_dict()
    for k, v in snapshots[1].items():
        assert torch.equal(final[k], v), k
    assert not all(torch.equal(snapshots[3][k], snapshots[1][k]) for k in final)
    assert [r["epoch"] for r in res.history] == list(range(8))


def test_train_users_trains_on_those_sequences_only():
    """``train_users`` = training on a data set holding only those users (no evaluation in
    between, so the weights depend on the training samples alone); the full user list = None."""
    data = synthetic_data()
    cfg = SurrogateConfig(epochs=3, eval_every=0, batch_size=4, lr=1e-2, hidden_size=8, max_seq_length=10, ks=(5,))
    users = [7, 2, 11, 5, 30]
    sub = RecData("synthetic", None, [data.train[u] for u in users], [data.valid[u] for u in users],
                  [data.test[u] for u in users], data.titles)

    def weights(d, **kw):
        model = build_surrogate("SASRec", d.n_items, cfg)
        res = train_surrogate(model, d, cfg, **kw)
        return model.state_dict(), res

    a, res_a = weights(data, train_users=users)
    b, _ = weights(sub)
    c, _ = weights(data, train_users=None)
    d, _ = weights(data, train_users=list(range(data.n_users)))
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert torch.equal(c[k], d[k]), k
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # evaluation still covers every user of the data set
    assert res_a.test["n_users"] == sum(1 for t in data.test if t)


def test_per_user_ranks_give_the_aggregate_metrics():
    """evaluate_per_user: the same metrics as evaluate, and per user the targets' ranks from which
    every Recall/NDCG@K up to max(ks) averages to exactly those metrics; train_surrogate keeps
    them for its test evaluation."""
    data = synthetic_data()
    cfg = SurrogateConfig(epochs=3, eval_every=0, batch_size=16, lr=1e-2, hidden_size=8, max_seq_length=10,
                          ks=(1, 5, 10))
    model = build_surrogate("SASRec", data.n_items, cfg)
    res = train_surrogate(model, data, cfg)
    valid, test = eval_sets(data, cfg.max_seq_length)
    metrics, ranks = evaluate_per_user(model, test, cfg.ks)
    assert metrics == evaluate(model, test, cfg.ks) == res.test
    assert res.test_hit_ranks == ranks and res.test_users == test.users.tolist()
    assert len(ranks) == len(test.users) and [len(r) for r in ranks] == [len(set(t)) for t in test.targets]
    assert any(r >= 0 for u in ranks for r in u)  # some hits, so the check below is not 0 == 0
    for i, k in enumerate(cfg.ks):
        per_user = metrics_from_ranks(ranks, k)
        assert np.mean(per_user["Recall"]) == pytest.approx(metrics["Recall"][i], abs=1e-12)
        assert np.mean(per_user["NDCG"]) == pytest.approx(metrics["NDCG"][i], abs=1e-12)
    empty = build_eval(data.train, [[] for _ in data.train])
    assert evaluate_per_user(model, empty, cfg.ks)[1] == []


def test_early_stopping(monkeypatch):
    data = synthetic_data()
    cfg = SurrogateConfig(epochs=20, eval_every=1, patience=2, batch_size=16, hidden_size=8, max_seq_length=10,
                          ks=(5,))
    model = build_surrogate("SASRec", data.n_items, cfg)
    script = iter([0.5, 0.1, 0.1, 0.9, 0.9])

    def fake_evaluate(m, ev, ks, batch_size=2048, device="cpu"):
        return {"Recall": [next(script, 0.0)], "NDCG": [0.0], "Precision": [0.0], "MRR": [0.0]}

    monkeypatch.setattr(trainer_mod, "evaluate", fake_evaluate)
    res = train_surrogate(model, data, cfg)
    assert len(res.history) == 3 and res.best_epoch == 0  # stopped after 2 evaluations without improvement

