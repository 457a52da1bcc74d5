"""Exact length-split batches of every registered surrogate: buckets, loss and gradient equal the
padded batch's, split training equals padded training, fast negatives equal the reference draws,
trimmed evaluation equals padded."""

from __future__ import annotations

import itertools

import pytest
import torch
from _surrogates import SURROGATE_NAMES

from dealrec.data.dataset import RecData
from dealrec.surrogate import build_surrogate, objective_of, surrogate_spec
from dealrec.surrogate.loss import batch_loss, split_batch_loss
from dealrec.surrogate.samples import (
    build_samples,
    length_buckets,
    sample_negatives,
    sample_negatives_reference,
)
from dealrec.surrogate.trainer import SurrogateConfig, eval_sets, evaluate, train_surrogate

pytestmark = pytest.mark.usefixtures("one_thread")

# Attention key biases have an exact gradient of 0 (softmax is shift-invariant), so both batchings
# compute float noise for them. In BERT4Rec that noise reaches ~2e-12 (1e-12 elsewhere): the
# absolute floor of its gradient comparison; and Adam turns it into steps of ~lr in either run, so
# its trained key biases differ (with no effect on the function, which is compared as well).
ZERO_GRADIENT_FLOOR = {"BERT4Rec": 1e-10}
NOISE_TRAINED = {"BERT4Rec": "attention.key.bias"}


def brute_force_cost(lengths: list[int], overhead: float) -> float:
    """Smallest Σ_b (overhead + n_b·w_b) over every split of the sorted non-zero lengths."""
    ls = sorted(x for x in lengths if x > 0)
    best = float("inf")
    for cuts in itertools.product([0, 1], repeat=max(len(ls) - 1, 0)):
        cost, start = 0.0, 0
        for i, c in enumerate([*cuts, 1]):
            if c:
                cost += overhead + (i + 1 - start) * ls[i]
                start = i + 1
        best = min(best, cost)
    return best


def test_length_buckets_partition_and_optimal():
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        n = int(torch.randint(1, 11, (1,), generator=g))
        lengths = torch.randint(0, 9, (n,), generator=g)
        overhead = float([0, 1, 3, 10, 100][trial % 5])
        groups = length_buckets(lengths, overhead)
        got = sorted(torch.cat(groups).tolist()) if groups else []
        assert got == [i for i in range(n) if lengths[i] > 0]  # every row with a target, once
        widths = [int(lengths[gr].max()) for gr in groups]
        assert widths == sorted(widths)
        if groups:  # consecutive in length: no row of a later group is shorter than an earlier one's max
            for a, b in zip(groups, groups[1:]):
                assert int(lengths[a].max()) <= int(lengths[b].min())
        cost = sum(overhead + len(gr) * w for gr, w in zip(groups, widths))
        assert cost == pytest.approx(brute_force_cost(lengths.tolist(), overhead))
    assert length_buckets(torch.zeros(5, dtype=torch.long)) == []
    one = length_buckets(torch.tensor([3, 50, 1, 7]), overhead=1e9)
    assert len(one) == 1
    per_length = length_buckets(torch.tensor([3, 50, 1, 7, 3]), overhead=0)
    assert [sorted(gr.tolist()) for gr in per_length] == [[2], [0, 4], [3], [1]]


@pytest.fixture(scope="module")
def games_rows(games):
    """500 real Games rows of mixed lengths (1 to 50 next-item inputs, and users without targets):
    the Games data, its next-item samples and the rows' indices."""
    samples = build_samples(games.train, games.n_items)
    lengths = (samples.input_ids > 0).sum(1)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(samples), generator=g)[:450]
    longest = (lengths == 50).nonzero(as_tuple=True)[0][:25]
    empty = (lengths == 0).nonzero(as_tuple=True)[0][:25]
    idx = torch.cat([idx, longest, empty])[torch.randperm(500, generator=g)]
    return games, samples, idx


@pytest.mark.parametrize("name", SURROGATE_NAMES)
def test_split_batch_gradient_equals_padded_batch(games_rows, name):
    """The objective's split loss (length buckets, each trimmed) and its gradient equal the padded
    batch's, whatever the bucket overhead."""
    games, _, idx = games_rows
    model = build_surrogate(name, games.n_items, surrogate_spec(name).config(seed=5)).eval()  # dropout off
    obj = objective_of(model)
    samples, neg = obj.draw(obj.build_samples(games.train, games.n_items), torch.Generator().manual_seed(3))
    batch = (samples.input_ids[idx], samples.target_pos[idx], neg[idx] if neg is not None else None)
    lengths = (batch[0] > 0).sum(1)
    assert lengths.max() == 50 and lengths.min() == 0 and len(set(lengths.tolist())) > 20
    names, params = zip(*model.named_parameters())
    padded = obj.batch_loss(model, *batch, split=False)
    if obj.uses_negatives:  # the next-item objective's padded loss is loss.batch_loss
        assert torch.equal(padded, batch_loss(model, *batch))
    g_pad = torch.autograd.grad(padded, params)
    floor = ZERO_GRADIENT_FLOOR.get(name, 1e-12)
    for overhead in (0.0, 64.0, 1024.0, 1e9):
        split = obj.batch_loss(model, *batch, split=True, overhead=overhead)
        if obj.uses_negatives:  # ... and its split loss loss.split_batch_loss
            assert torch.equal(split, split_batch_loss(model, *batch, overhead=overhead))
        torch.testing.assert_close(split, padded, rtol=1e-6, atol=0)
        g_split = torch.autograd.grad(split, params)
        for n, a, b in zip(names, g_pad, g_split):
            # rtol 1e-5, with an absolute floor of 1e-5 of the tensor's largest entry: entries that
            # are sums with cancellation (and key biases, whose exact gradient is 0 because softmax
            # is shift-invariant) differ by float summation order only.
            msg = f"{name} {n} (overhead {overhead})"
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * float(a.abs().max()) + floor, msg=msg)
            assert float((b - a).norm()) <= 1e-5 * float(a.norm()) + floor, msg


def test_split_batch_without_targets_is_zero_like_padded():
    model = build_surrogate("SASRec", 20, SurrogateConfig(hidden_size=8, max_seq_length=10)).eval()
    z = torch.zeros(3, 10, dtype=torch.long)
    assert split_batch_loss(model, z, z, z).item() == batch_loss(model, z, z, z).item() == 0.0


def test_fast_negatives_equal_reference(games_rows):
    _, samples, _ = games_rows
    sub = samples.rows(torch.arange(5000))
    for seed, chunk in [(0, 2048), (1, 777), (2, 5000)]:
        fast = sample_negatives(sub, torch.Generator().manual_seed(seed), chunk=chunk)
        ref = sample_negatives_reference(sub, torch.Generator().manual_seed(seed), chunk=chunk)
        assert torch.equal(fast, ref)
    # A crowded catalogue: many collisions, several redraw rounds.
    train = [[i for i in range(12) if i != u % 12] for u in range(30)] + [[], [3]]
    s = build_samples(train, 12, max_len=8)
    for seed in range(3):
        a = sample_negatives(s, torch.Generator().manual_seed(seed), chunk=4)
        assert torch.equal(a, sample_negatives_reference(s, torch.Generator().manual_seed(seed), chunk=4))
        for u, seq in enumerate(train):
            assert not set(a[u][a[u] > 0].tolist()) & {i + 1 for i in seq}


@pytest.mark.parametrize("name", SURROGATE_NAMES)
def test_trimmed_evaluation_equals_padded(games, name):
    data = games.subset_users(3000)
    model = build_surrogate(name, data.n_items, surrogate_spec(name).config(seed=1)).eval()
    valid, test = eval_sets(data)
    for ev in (valid, test):
        a = evaluate(model, ev, (5, 10, 20), batch_size=300)
        b = evaluate(model, ev, (5, 10, 20), batch_size=300, trim=False)
        for m in ("Recall", "NDCG"):
            assert a[m] == pytest.approx(b[m], rel=1e-6, abs=1e-9), (name, m)


def test_trimmed_evaluation_keeps_empty_histories_padded():
    """A user with no history is scored on the full padded width, as the original did."""
    n_items = 12
    train = [[], [0, 1, 2], [4], [5, 6, 7, 8, 9]]
    data = RecData("t", None, train, [[3], [3], [3], [3]], [[], [], [], []], [f"t{i}" for i in range(n_items)])
    model = build_surrogate("SASRec", n_items, SurrogateConfig(hidden_size=8, max_seq_length=10, seed=2)).eval()
    valid, _ = eval_sets(data, 10)
    for bs in (1, 2, 4):
        a = evaluate(model, valid, (5,), batch_size=bs)
        b = evaluate(model, valid, (5,), batch_size=bs, trim=False)
        assert a == b


@pytest.mark.parametrize("name", SURROGATE_NAMES)
def test_training_split_equals_padded_without_dropout(name):
    """Whole epochs: with dropout off the two batchings give the same weights (same batches, same
    draws, same steps) and the same function."""
    g = torch.Generator().manual_seed(0)
    n_items = 25
    train = [torch.randint(0, n_items, (int(n),), generator=g).tolist() for n in torch.randint(0, 12, (40,), generator=g)]
    data = RecData("t", None, train, [[1]] * 40, [[2]] * 40, [f"t{i}" for i in range(n_items)])
    states = {}
    for batching in ("split", "padded"):
        cfg = surrogate_spec(name).config(epochs=3, eval_every=0, batch_size=16, lr=1e-2, hidden_size=8,
                                          max_seq_length=10, dropout=0.0, ks=(5,), batching=batching,
                                          bucket_overhead=2.0)
        model = build_surrogate(name, n_items, cfg)
        train_surrogate(model, data, cfg)
        states[batching] = model.state_dict()
    for k, v in states["padded"].items():
        if name in NOISE_TRAINED and k.endswith(NOISE_TRAINED[name]):
            continue
        torch.testing.assert_close(states["split"][k], v, rtol=1e-4, atol=1e-6, msg=f"{name} {k}")
    outputs = []
    for state in states.values():  # and the two functions are the same
        model = build_surrogate(name, n_items, cfg)
        model.load_state_dict(state)
        with torch.no_grad():
            outputs.append(model.eval()(build_samples(train, n_items, 10).input_ids))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


def test_batching_must_be_known():
    with pytest.raises(ValueError, match="batching must be one of"):
        SurrogateConfig(batching="packed")
