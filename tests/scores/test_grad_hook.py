"""The squared Frobenius norm of per-sample weight gradients: both forms against the explicit sum."""

from __future__ import annotations

import pytest
import torch

from dealrec.scores.grad_hook import frobenius_sq, weight_grads


def explicit(g, x, const=None):
    """‖C + Σ_t g_t x_tᵀ‖²_F, one sample and one outer product at a time."""
    out = []
    for b in range(g.shape[0]):
        w = torch.zeros(g.shape[2], x.shape[2], dtype=g.dtype) if const is None else const.clone()
        for t in range(g.shape[1]):
            w += torch.outer(g[b, t], x[b, t])
        out.append((w * w).sum())
    return torch.stack(out)


@pytest.mark.parametrize("with_const", [False, True])
@pytest.mark.parametrize("t", [1, 3, 40])
def test_both_forms_equal_the_explicit_sum(with_const, t):
    gen = torch.Generator().manual_seed(t)
    g = torch.randn(3, t, 6, generator=gen, dtype=torch.float64)
    x = torch.randn(3, t, 5, generator=gen, dtype=torch.float64)
    g[1, t // 2:] = 0  # padding rows contribute nothing
    const = torch.randn(6, 5, generator=gen, dtype=torch.float64) if with_const else None
    want = explicit(g, x, const)
    for materialise in (True, False, None):
        torch.testing.assert_close(frobenius_sq(g, x, const, materialise), want, rtol=1e-10, atol=0)
    torch.testing.assert_close(weight_grads(g, x).flatten(1).pow(2).sum(1), explicit(g, x), rtol=1e-10, atol=0)


def test_the_cheaper_form_is_chosen(monkeypatch):
    """Materialised when T · (out + in) > out · in (here T > 6·5/11 ≈ 2.7), else the Gram form."""
    calls = []
    real = torch.einsum
    monkeypatch.setattr(torch, "einsum", lambda eq, *a: calls.append(eq) or real(eq, *a))
    g, x = torch.ones(1, 40, 6), torch.ones(1, 40, 5)
    frobenius_sq(g, x)
    assert calls == ["bto,bti->boi"]
    calls.clear()
    frobenius_sq(g[:, :2], x[:, :2])
    assert "bto,bso->bts" in calls
