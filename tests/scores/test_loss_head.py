"""The loss head's gradient without autograd (:mod:`dealrec.scores.loss_head`) against autograd
through ``F.cross_entropy``."""

from __future__ import annotations

import pytest
import torch

from dealrec.scores.loss_head import head_grad, head_grad_autograd

pytestmark = pytest.mark.usefixtures("one_thread")


def _case(dtype: torch.dtype, bias: bool, n: int = 37, d: int = 16, vocab: int = 50):
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(d, vocab, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, d, generator=g, dtype=dtype) * 3)  # peaked softmaxes too
    hidden = torch.randn(n, d, generator=g, dtype=dtype)
    targets = torch.randint(vocab, (n,), generator=g)
    token_weight = torch.rand(n, generator=g, dtype=dtype)
    return head, hidden, targets, token_weight


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 512])
def test_head_grad_equals_autograd(dtype, rtol, bias, chunk):
    head, hidden, targets, tw = _case(dtype, bias)
    ce_ref, dh_ref = head_grad_autograd(head, hidden, targets, tw)
    ce, dh = head_grad(hidden, head.weight, targets, tw, head.bias, chunk=chunk)
    assert ce.dtype == dh.dtype == dtype
    torch.testing.assert_close(ce, ce_ref, rtol=rtol, atol=rtol)
    torch.testing.assert_close(dh, dh_ref, rtol=rtol, atol=rtol * dh_ref.abs().max().item())


def test_head_grad_bf16_matches_autocast_head():
    """bf16 products (a bf16 copy of W) = the head under bf16 autocast; both differ from fp32."""
    head, hidden, targets, tw = _case(torch.float32, False, n=64, d=64, vocab=300)
    _, dh32 = head_grad_autograd(head, hidden, targets, tw)
    ce_ac, dh_ac = head_grad_autograd(head, hidden, targets, tw, bf16=True)
    ce, dh = head_grad(hidden, head.weight, targets, tw, weight_bf16=head.weight.detach().bfloat16(), chunk=16)
    assert dh.dtype == torch.float32
    torch.testing.assert_close(ce, ce_ac, rtol=1e-5, atol=1e-5)
    scale = dh_ac.abs().max().item()
    assert (dh - dh_ac).abs().max().item() < 1e-2 * scale
    assert (dh - dh32).abs().max().item() > 1e-5 * scale  # bf16 really ran


def test_head_grad_empty():
    head, hidden, targets, tw = _case(torch.float32, False)
    ce, dh = head_grad(hidden[:0], head.weight, targets[:0], tw[:0])
    assert ce.shape == (0,) and dh.shape == (0, hidden.shape[1])
