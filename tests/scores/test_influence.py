"""Influence scores (Eq. 9-11) on tiny random surrogates: batched vs literal computations. The
scores, v, the Hessian-vector products and the solvers are checked for every registered
surrogate; the remaining properties on SASRec."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _surrogates import MAX_LEN, N_ITEMS, SURROGATE_NAMES, make_train, tiny
from torch import nn

from dealrec.scores.influence import (
    DEFAULT_PARAMS,
    InfluenceConfig,
    InfluenceProblem,
    influence_scores,
)
from dealrec.surrogate import objective_of, surrogate_spec
from dealrec.surrogate.loss import batch_loss
from dealrec.surrogate.samples import SampleTensors, build_samples
from dealrec.surrogate.sasrec import SASRec, SASRecConfig

pytestmark = pytest.mark.usefixtures("one_thread")

# Parameters in which every per-sample loss is convex (per-sample Hessians are PSD), so LiSSA
# converges without a large damping. SASRec: the last layer's output LayerNorm (the sequence output
# is affine in it); GRU4Rec: its default ``dense.weight`` (logits are linear in it, BCE is convex in
# the logits); BERT4Rec: its output layer norm (the output is affine in it, softmax CE is convex in
# the logits).
CONVEX = {
    "SASRec": ("item_encoder.layer.1.intermediate.LayerNorm.weight", "item_encoder.layer.1.intermediate.LayerNorm.bias"),
    "GRU4Rec": ("dense.weight",),
    "BERT4Rec": ("output.LayerNorm.weight", "output.LayerNorm.bias"),
}
# Parameters other than the registered ones, e.g. through GRU4Rec's recurrence (forward-mode AD of
# the GRU) or BERT4Rec's [mask] vector.
CUSTOM = {
    "SASRec": ("item_embeddings.weight", "item_encoder.layer.0.attention.query.weight"),
    "GRU4Rec": ("gru.weight_hh_l0", "item_embeddings.weight"),
    "BERT4Rec": ("mask_embedding", "item_encoder.layer.0.attention.query.weight", "output.dense.weight"),
}
# The undamped CG solve (scale 1, damp 0) needs a well-conditioned H: float32 Hessian-vector
# products lose about cond(H) x 1e-7 of relative accuracy. cond(H) on the CONVEX parameters:
# SASRec ~50, BERT4Rec ~1.6e3, GRU4Rec ~1.1e4 (its solves are checked with damping only).
WELL_CONDITIONED = ("SASRec", "BERT4Rec")
# LiSSA's solution lies at least this far (relative) from the identity guess v/damp, i.e. the
# Hessian matters: measured 0.75 (SASRec), 1.13 (BERT4Rec), 0.46 (GRU4Rec, whose Hessian on
# dense.weight is small: largest eigenvalue 0.01).
HESSIAN_SHARE = {"SASRec": 0.5, "BERT4Rec": 0.5, "GRU4Rec": 0.3}
# (surrogate, negatives): "expected" negatives only where the objective has negatives (not
# BERT4Rec's cloze loss, which ignores the setting).
NEGATIVES = [pytest.param(name, neg, id=f"{name}-{neg}") for name in SURROGATE_NAMES for neg in ("sampled", "expected")
             if neg == "sampled" or surrogate_spec(name).objective.uses_negatives]


def make_model(seed: int = 0, n_items: int = N_ITEMS) -> SASRec:
    torch.manual_seed(seed)
    cfg = SASRecConfig(
        item_size=n_items + 1, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_seq_length=MAX_LEN,
        initializer_range=0.3,
    )
    model = SASRec(cfg)
    with torch.no_grad():  # non-trivial layer norms and biases too
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def surrogate_model(name: str, seed: int = 0) -> nn.Module:
    """The tiny random model of a registered surrogate: SASRec's is :func:`make_model` (every weight
    drawn with std 0.3), the others' :func:`_surrogates.tiny`."""
    return make_model(seed) if name == "SASRec" else tiny(name, seed)


def samples_of(name: str) -> SampleTensors:
    """The surrogate's samples of :func:`make_train`'s histories (before any random draw)."""
    return objective_of(surrogate_model(name)).build_samples(make_train(), N_ITEMS, MAX_LEN)


@pytest.fixture(scope="module")
def samples():
    return build_samples(make_train(), N_ITEMS, MAX_LEN)


def problem(samples, model_seed: int = 0, **cfg) -> InfluenceProblem:
    return InfluenceProblem(make_model(model_seed), samples, InfluenceConfig(**cfg))


def problem_of(name: str, model_seed: int = 0, **cfg) -> InfluenceProblem:
    """The influence problem of a surrogate's tiny model (default: its registered parameters)."""
    cfg.setdefault("params", surrogate_spec(name).influence_params)
    return InfluenceProblem(surrogate_model(name, model_seed), samples_of(name), InfluenceConfig(**cfg))


def random_h(prob: InfluenceProblem, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in prob.params.items()}


def flat(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in p.values()])


def unflat(x: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = x[i: i + v.numel()].view_as(v)
        i += v.numel()
    return out


def dense_hessian(prob: InfluenceProblem, idx: torch.Tensor) -> torch.Tensor:
    """∇² of the mean per-sample loss over ``idx`` w.r.t. the flattened declared parameters
    (float32 like the model, returned as float64 for the dense linear algebra)."""

    def f(x):
        return prob.mean_loss(unflat(x, prob.params), idx)

    return torch.autograd.functional.hessian(f, flat(prob.params)).double()


# -- (a) batched directional derivatives vs single-sample backward passes -----------------------


@pytest.mark.parametrize("which", ["default", "custom"])
@pytest.mark.parametrize("name,negatives", NEGATIVES)
def test_scores_equal_per_sample_gradient_products(name, negatives, which):
    params = surrogate_spec(name).influence_params if which == "default" else CUSTOM[name]
    prob = problem_of(name, negatives=negatives, params=params, chunk_positions=64)
    h = random_h(prob)
    got = prob.scores(h)
    n = len(prob.samples)
    grads = prob.per_sample_grads(range(n), trim=False)  # one untrimmed backward pass per sample
    want = sum((grads[k] * h[k][None]).reshape(n, -1).sum(1) for k in h)
    lengths = torch.tensor([len(s) for s in make_train()])
    assert torch.equal(prob.eligible, lengths >= 3)
    assert torch.count_nonzero(want) == int((lengths >= 3).sum()) and got[lengths < 3].eq(0).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    # The trimmed reference agrees too.
    grads_t = prob.per_sample_grads(range(n))
    trimmed = sum((grads_t[k] * h[k][None]).reshape(n, -1).sum(1) for k in h)
    torch.testing.assert_close(trimmed, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trimmed, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))


# -- (b) v, the mean gradient -------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [16, 7, 500])
@pytest.mark.parametrize("name,negatives", NEGATIVES)
def test_mean_gradient_is_the_mean_of_batch_loss_gradients(name, negatives, batch_size):
    """v with the problem's own draw (negatives, or cloze masks) = the mean of the training batches'
    loss gradients, untrimmed, in user order."""
    model = surrogate_model(name)
    reference = copy.deepcopy(model)  # keeps requires_grad; the problem turns it off on its model
    params = (*surrogate_spec(name).influence_params, "item_embeddings.weight")
    obj = objective_of(model)
    prob = InfluenceProblem(model, samples_of(name), InfluenceConfig(params=params, negatives=negatives,
                                                                     batch_size=batch_size, chunk_positions=50))
    got = prob.mean_gradient()
    named = dict(reference.named_parameters())
    s, grads = prob.samples, []
    for start in range(0, len(s), batch_size):  # user order, as training
        b = slice(start, start + batch_size)
        if not s.eligible[b].any():
            continue
        if negatives == "expected":  # the next-item loss with the expectation of the negative term
            loss = batch_loss(reference, s.input_ids[b], s.target_pos[b], user_items=s.user_items[b],
                              negatives="expected")
        else:
            neg = prob.neg[b] if prob.neg is not None else None
            loss = obj.batch_loss(reference, s.input_ids[b], s.target_pos[b], neg, split=False)  # untrimmed
        grads.append(torch.autograd.grad(loss, [named[k] for k in params]))
    want = {k: torch.stack([g[i] for g in grads]).mean(0) for i, k in enumerate(params)}
    for k in params:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)


# -- (c) Hessian-vector products ----------------------------------------------------------------


@pytest.mark.parametrize("name,negatives", NEGATIVES)
def test_hvp_equals_dense_hessian(name, negatives):
    prob = problem_of(name, negatives=negatives)  # the registered parameter: 64 values at d = 8
    h = random_h(prob)
    n = len(prob.samples)
    elig = torch.arange(n)[prob.eligible]
    for idx in (torch.tensor([5]), elig[:1], elig[:9], torch.arange(n)):
        H = dense_hessian(prob, idx)
        want = H @ flat(h).double()
        got = flat(prob.hvp(idx, h)).double()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    # full_hvp: the mean per-sample Hessian over eligible samples, in chunks.
    want = dense_hessian(prob, elig) @ flat(h).double()
    torch.testing.assert_close(flat(prob.full_hvp(h, chunk=8)).double(), want, rtol=1e-4, atol=1e-6)


# -- (d) LiSSA and CG vs the dense solve --------------------------------------------------------


@pytest.fixture(scope="module", params=SURROGATE_NAMES)
def convex_problem(request):
    """(surrogate name, its problem on the CONVEX parameters, H over the eligible samples, H's
    eigenvalues, the largest per-sample eigenvalue, the per-sample Hessians)."""
    name = request.param
    prob = problem_of(name, params=CONVEX[name])
    elig = torch.arange(len(prob.samples))[prob.eligible]
    H = dense_hessian(prob, elig)
    per_sample = {int(i): dense_hessian(prob, i[None]) for i in elig}
    per_sample_max = max(float(torch.linalg.eigvalsh(h).max()) for h in per_sample.values())
    eig = torch.linalg.eigvalsh(H)
    return name, prob, H, eig, per_sample_max, per_sample


def dense_solve(H: torch.Tensor, v: dict, scale: float, damp: float) -> np.ndarray:
    A = H.numpy() / scale + damp * np.eye(H.shape[0])
    return np.linalg.solve(A, flat(v).double().numpy())


def test_convex_parameters_have_psd_hessians(convex_problem):
    name, _, H, eig, _, per_sample = convex_problem
    assert float(eig.min()) > 0
    assert (float(eig.max() / eig.min()) < 1e4) == (name in WELL_CONDITIONED)
    assert all(float(torch.linalg.eigvalsh(h).min()) > -1e-6 for h in per_sample.values())
    # H is the mean of the per-sample Hessians over eligible samples.
    torch.testing.assert_close(torch.stack(list(per_sample.values())).mean(0), H, rtol=1e-5, atol=1e-7)


def test_cg_matches_dense_solve(convex_problem):
    name, prob, H, _, _, _ = convex_problem
    v = prob.mean_gradient()
    undamped = ((1.0, 0.0),) if name in WELL_CONDITIONED else ()
    for scale, damp in ((25.0, 0.01), *undamped, (3.0, 0.3), (2.0, 0.05)):
        prob.cfg = InfluenceConfig(params=CONVEX[name], solver="cg", scale=scale, damp=damp, cg_tol=1e-10,
                                   cg_max_iter=200)
        got = flat(prob.inverse_hvp(v)).double().numpy()
        np.testing.assert_allclose(got, dense_solve(H, v, scale, damp), rtol=1e-4, atol=1e-5 * np.abs(got).max())


def test_lissa_matches_dense_solve(convex_problem):
    """LiSSA is stochastic: its average over 4 repeats is within 5% of the dense solve.

    Parameters from a numpy simulation with SASRec's dense per-sample Hessians (10 seeds): relative
    error mean 1.8%, max 2.3%; the slowest mode keeps (1 - damp - λmin/scale)^500 ≈ 0.6% of its
    start. Measured at seed 3: SASRec 2.7%, BERT4Rec 1.8%, GRU4Rec 1.6%."""
    name, prob, H, eig, per_sample_max, _ = convex_problem
    v = prob.mean_gradient()
    scale = 20 * per_sample_max
    damp = 0.01
    prob.cfg = InfluenceConfig(params=CONVEX[name], solver="lissa", scale=scale, damp=damp,
                               recursion_depth=500, iteration=4, seed=3)
    got = flat(prob.inverse_hvp(v)).double().numpy()
    want = dense_solve(H, v, scale, damp)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 0.05, rel
    # Far from the undamped identity guess v/damp: the Hessian part matters.
    assert np.linalg.norm(flat(v).double().numpy() / damp - want) / np.linalg.norm(want) > HESSIAN_SHARE[name]


def test_lissa_replays_exactly(convex_problem):
    """The same picks replayed with dense per-sample Hessians give the same h (tight)."""
    name, prob, _, _, per_sample_max, per_sample = convex_problem
    v = prob.mean_gradient()
    scale, damp, depth, iteration, seed = 3 * per_sample_max, 0.05, 120, 2, 7
    prob.cfg = InfluenceConfig(params=CONVEX[name], scale=scale, damp=damp, recursion_depth=depth,
                               iteration=iteration, seed=seed)
    got = flat(prob.lissa(v)).double()
    gen = torch.Generator().manual_seed(seed + 1)
    pool = prob.eligible.nonzero(as_tuple=True)[0]
    v0 = flat(v).double()
    acc = torch.zeros_like(v0)
    for _ in range(iteration):
        picks = pool[torch.randint(len(pool), (depth,), generator=gen)]
        h = v0.clone()
        for i in picks.tolist():
            h = v0 + (1 - damp) * h - per_sample[i] @ h / scale
        acc += h
    torch.testing.assert_close(got, acc / iteration, rtol=1e-4, atol=1e-6 * float(acc.abs().max()))


def test_lissa_recursion_is_the_original(samples):
    """Two LiSSA steps by hand: h1 = v + (1-damp) v - H_s1 v / scale, h2 = v + (1-damp) h1 - H_s2 h1 / scale."""
    prob = problem(samples, recursion_depth=2, iteration=1, seed=11, damp=0.1, scale=5.0)
    v = random_h(prob, seed=2)
    got = prob.lissa(v)
    gen = torch.Generator().manual_seed(11 + 1)
    pool = prob.eligible.nonzero(as_tuple=True)[0]
    picks = pool[torch.randint(len(pool), (2,), generator=gen)]
    h = v
    for t in range(2):
        H = dense_hessian(prob, picks[t: t + 1]).float()
        h = unflat(flat(v) + 0.9 * flat(h) - H @ flat(h) / 5.0, v)
    torch.testing.assert_close(flat(got), flat(h), rtol=1e-4, atol=1e-6)


# -- (e) expected negatives = average over sampled negatives ------------------------------------


def test_expected_score_is_the_mean_of_sampled_scores():
    n_items = 8
    train = make_train(16, n_items, seed=5, longest=7)  # every user leaves some item to sample
    s = build_samples(train, n_items, MAX_LEN)
    model = make_model(2, n_items)
    params = ("item_encoder.layer.1.attention.dense.weight", "item_embeddings.weight")
    expected = InfluenceProblem(model, s, InfluenceConfig(params=params, negatives="expected"))
    h = random_h(expected, seed=4)
    want = expected.scores(h)
    # 2000 independent negative draws per sample, all scored with the same h in one pass: the samples
    # are replicated 2000 times and every replica gets its own negatives (as 2000 seeds would).
    n_draws = 2000
    big = s.rows(torch.arange(len(s)).repeat(n_draws))
    sampled = InfluenceProblem(model, big, InfluenceConfig(params=params, negatives="sampled", seed=0))
    per_draw = sampled.scores(h).view(n_draws, len(s))
    assert not torch.equal(sampled.neg[: len(s)], sampled.neg[len(s): 2 * len(s)])
    # Replica 0 is exactly a single-seed problem on the original samples with those negatives.
    single = InfluenceProblem(model, s, InfluenceConfig(params=params, negatives="sampled"))
    single.neg = sampled.neg[: len(s)]
    torch.testing.assert_close(single.scores(h), per_draw[0], rtol=1e-5, atol=1e-7)
    avg = per_draw.mean(0)
    rel = float((avg - want).norm() / want.norm())
    rel_single = float((per_draw - want).norm(dim=1).mean() / want.norm())
    assert rel < 0.05, (rel, rel_single)
    # Averaging is what makes them agree, at the Monte Carlo rate 1/sqrt(draws) (measured: one draw
    # 0.65; the mean of 1000 draws 0.013-0.024 over 4 seeds, of 8000 draws 0.007).
    assert rel < 2 * rel_single / n_draws**0.5, (rel, rel_single)
    assert torch.equal(avg[~s.eligible], want[~s.eligible])  # both 0


# -- (f) ineligible samples ---------------------------------------------------------------------


@pytest.mark.parametrize("negatives", ["sampled", "expected"])
def test_ineligible_samples_score_zero(samples, negatives):
    prob = problem(samples, negatives=negatives)
    lengths = torch.tensor([len(x) for x in make_train()])
    assert torch.equal(prob.eligible, lengths >= 3)
    sc = prob.scores(random_h(prob))
    assert sc[lengths < 3].eq(0).all()
    assert sc[lengths >= 3].ne(0).all()
    assert prob.per_sample_loss(prob.params, torch.nonzero(lengths < 3)[:, 0]).eq(0).all()


# -- (g) determinism and argument checks --------------------------------------------------------


def test_deterministic(samples):
    a, b, c = problem(samples, seed=0), problem(samples, seed=0), problem(samples, seed=9)
    assert torch.equal(a.neg, b.neg)
    assert not torch.equal(a.neg, c.neg)
    h = random_h(a)
    assert torch.equal(a.scores(h), b.scores(h))
    ra = influence_scores(make_model(0), samples, InfluenceConfig(recursion_depth=20, scale=50.0))
    rb = influence_scores(make_model(0), samples, InfluenceConfig(recursion_depth=20, scale=50.0))
    assert torch.equal(ra.scores, rb.scores)
    assert ra.v_norm == rb.v_norm and ra.h_norm == rb.h_norm
    assert torch.equal(ra.eligible, samples.eligible)
    assert ra.scores[~samples.eligible].eq(0).all()
    assert set(ra.timing) == {"setup_s", "v_s", "lissa_s", "scores_s"}


def test_cloze_influence_is_deterministic_per_seed():
    """The masks are drawn once from the seed: the same seed gives the same scores, another seed
    other masks and other scores; ``negatives`` does not apply to the cloze loss."""
    s = samples_of("BERT4Rec")
    kw = dict(recursion_depth=20, scale=50.0)
    a = influence_scores(tiny("BERT4Rec"), s, InfluenceConfig(seed=0, **kw))
    b = influence_scores(tiny("BERT4Rec"), s, InfluenceConfig(seed=0, **kw))
    c = influence_scores(tiny("BERT4Rec"), s, InfluenceConfig(seed=1, **kw))
    e = influence_scores(tiny("BERT4Rec"), s, InfluenceConfig(seed=0, negatives="expected", **kw))
    assert torch.equal(a.scores, b.scores) and torch.equal(a.scores, e.scores)
    assert not torch.equal(a.scores, c.scores)
    assert a.scores[~s.eligible].eq(0).all() and a.scores[s.eligible].ne(0).all()


def test_influence_scores_end_to_end_with_cg(convex_problem):
    """score = <(H/scale + damp I)^-1 v, ∇L(s)> with dense linear algebra."""
    name, prob, H, _, _, _ = convex_problem
    cfg = InfluenceConfig(params=CONVEX[name], solver="cg", scale=2.0, damp=0.05, cg_tol=1e-10)
    res = influence_scores(surrogate_model(name), samples_of(name), cfg)
    v = prob.mean_gradient()
    h = dense_solve(H, v, 2.0, 0.05)
    n = len(prob.samples)
    grads = prob.per_sample_grads(range(n))
    g = torch.cat([grads[k].reshape(n, -1) for k in CONVEX[name]], 1).double().numpy()
    np.testing.assert_allclose(res.scores.double().numpy(), g @ h, rtol=1e-4, atol=1e-6 * np.abs(g @ h).max())


def test_unknown_parameter_lists_available(samples):
    with pytest.raises(ValueError) as err:
        problem(samples, params=("item_encoder.layer.9.attention.dense.weight",))
    msg = str(err.value)
    assert "item_encoder.layer.9.attention.dense.weight" in msg
    assert "available" in msg and "item_embeddings.weight" in msg and DEFAULT_PARAMS[0] in msg


@pytest.mark.parametrize(
    "bad",
    [
        {"solver": "newton"},
        {"negatives": "hard"},
        {"recursion_depth": 0},
        {"iteration": 0},
        {"scale": 0.0},
        {"scale": -1.0},
        {"damp": 1.0},
        {"damp": -0.1},
    ],
)
def test_bad_config_values(samples, bad):
    cfg = InfluenceConfig(**bad)
    with pytest.raises(ValueError):
        cfg.validate()
    with pytest.raises(ValueError):
        InfluenceProblem(make_model(0), samples, cfg)


def test_expected_negatives_with_a_user_who_has_every_item(samples):
    """No item is left to average over: a clear error, not NaN scores for every sample (the NaN of
    that one user's loss would flow into v and from there into every score)."""
    train = [[0, 1, 2, 3], [0, 1, 2], [3, 2]]  # user 0 has all 4 items
    s = build_samples(train, 4, MAX_LEN)
    with pytest.raises(ValueError, match=r"user\(s\) \[0\] .*every item"):
        InfluenceProblem(make_model(0, 4), s, InfluenceConfig(negatives="expected"))
    # Sampled negatives cannot be drawn either.
    with pytest.raises(RuntimeError, match="every item"):
        InfluenceProblem(make_model(0, 4), s, InfluenceConfig(negatives="sampled"))
    # Without that user both modes work and give finite scores.
    s2 = build_samples(train[1:], 4, MAX_LEN)
    prob = InfluenceProblem(make_model(0, 4), s2, InfluenceConfig(negatives="expected"))
    assert torch.isfinite(prob.scores(prob.mean_gradient())).all()
