"""EL2N and GraNd of the surrogate (Paul et al., 2021) against literal per-sample computations."""

from __future__ import annotations

import math

import pytest
import torch

from dealrec.scores.baselines import el2n_scores, grand_scores
from dealrec.surrogate.loss import per_sample_loss
from dealrec.surrogate.samples import build_samples, sample_negatives
from dealrec.surrogate.sasrec import SASRec, SASRecConfig

N_ITEMS = 29
MAX_LEN = 10
PARAM = "item_encoder.layer.1.attention.dense.weight"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(0)
    lengths = [0, 1, 2, 3, 4, 7, 12, 15, 5, 9, 3, 20, 6]  # < 3 items: no target, not eligible
    train = [torch.randperm(N_ITEMS, generator=gen)[:n].tolist() for n in lengths]
    samples = build_samples(train, N_ITEMS, MAX_LEN)
    neg = sample_negatives(samples, torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(item_size=N_ITEMS + 1, hidden_size=8, max_seq_length=MAX_LEN, initializer_range=0.5))
    model.eval()
    eligible = torch.tensor([n >= 3 for n in lengths])
    assert torch.equal(samples.eligible, eligible)
    return model, samples, neg, eligible


def test_el2n_equals_literal(setup):
    model, samples, neg, eligible = setup
    got = el2n_scores(model, samples, neg)
    emb = model.item_embeddings.weight.detach()
    for u in range(len(samples)):
        if not eligible[u]:
            assert got[u] == 0
            continue
        with torch.no_grad():
            h = model(samples.input_ids[u:u + 1])[0]  # untrimmed, one sample
        errs = []
        for t in range(MAX_LEN):
            p, n = int(samples.target_pos[u, t]), int(neg[u, t])
            if p == 0:
                continue
            e_pos = 1 / (1 + math.exp(-float(h[t] @ emb[p]))) - 1
            e_neg = 1 / (1 + math.exp(-float(h[t] @ emb[n])))
            errs.append(math.sqrt(e_pos**2 + e_neg**2))
        assert got[u].item() == pytest.approx(sum(errs) / len(errs), rel=1e-5)


def test_grand_equals_per_sample_autograd(setup):
    model, samples, neg, eligible = setup
    weight = model.get_parameter(PARAM)
    ref = torch.zeros(len(samples))
    for u in range(len(samples)):
        if not eligible[u]:
            continue
        weight.requires_grad_(True)
        sl = slice(u, u + 1)
        loss = per_sample_loss(model, samples.input_ids[sl], samples.target_pos[sl], neg[sl])[0]
        (grad,) = torch.autograd.grad(loss, weight)
        ref[u] = grad.norm()
    assert (ref[eligible] > 0).all()
    got = grand_scores(model, samples, neg, PARAM)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
    assert got[~eligible].eq(0).all()


def test_grand_batches_are_independent(setup):
    """A sample's score does not depend on which other samples share its batch."""
    model, samples, neg, eligible = setup
    full = grand_scores(model, samples, neg, PARAM)
    keep = torch.tensor([0, 4, 11])
    part = grand_scores(model, samples.rows(keep), neg[keep], PARAM)
    torch.testing.assert_close(part, full[keep], rtol=1e-5, atol=0)


def test_grand_needs_a_linear_weight(setup):
    model, samples, neg, _ = setup
    for bad in ("item_encoder.layer.1.intermediate.conv1d_1.weight", "item_encoder.layer.1.attention.dense.bias"):
        with pytest.raises(ValueError, match="GraNd needs the weight of an nn.Linear"):
            grand_scores(model, samples, neg, bad)
