"""Per-sample gradients of a linear layer's weight from one backward pass (effort, GraNd).

:class:`OutputGrad` is a forward hook that keeps the layer's input x and makes its output the
only tensor that requires grad, so no autograd graph is built below the layer; after
``torch.autograd.grad(loss, hook.out)`` gives the output gradient g, the per-sample weight
gradient of a linear layer is Σ_t g_t x_tᵀ (:func:`weight_grads`), and its squared Frobenius
norm, without materialising it when that is cheaper, :func:`frobenius_sq`.
"""

from __future__ import annotations

from typing import Any

import torch


class OutputGrad:
    """``with OutputGrad(linear) as h: loss = f(model(x)); g, = autograd.grad(loss, h.out)``;
    ``h.x``: the layer's input (detached)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.x: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        self._handle: Any = None

    def __call__(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        self.x = inputs[0].detach()
        self.out = output.detach().requires_grad_(True)
        return self.out

    def __enter__(self) -> OutputGrad:
        self._handle = self.module.register_forward_hook(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()
        self._handle = None

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, out) of the last forward pass, released from the hook."""
        x, out = self.x, self.out
        self.x = self.out = None
        return x, out


def weight_grads(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients Σ_t g_t x_tᵀ [B, out, in] of a linear layer from its output
    gradient g [B, T, out] and input x [B, T, in]."""
    return torch.einsum("bto,bti->boi", g, x)


def frobenius_sq(g: torch.Tensor, x: torch.Tensor, const: torch.Tensor | None = None,
                 materialise: bool | None = None) -> torch.Tensor:
    """‖C + Σ_t g_t x_tᵀ‖²_F per sample (g [B, T, out], x [B, T, in], C [out, in] or None), in
    whichever form costs fewer multiplications: the Gram form C·C + 2 Σ_t g_tᵀ C x_t +
    Σ_{t,t'} (g_t·g_t')(x_t·x_t') (≈ B·T²·(out+in)) for short sequences, the materialised
    per-sample matrices (≈ B·T·out·in) for long ones; ``materialise`` forces one. Equal up to the
    order of the float sums (tests/test_grad_hook.py)."""
    t, o, i = g.shape[1], g.shape[2], x.shape[2]
    if materialise is None:
        materialise = t * (o + i) > o * i
    if materialise:
        w = weight_grads(g, x)
        if const is not None:
            w = w + const
        return w.flatten(1).pow(2).sum(1)
    sq = (torch.einsum("bto,bso->bts", g, g) * torch.einsum("bti,bsi->bts", x, x)).sum((1, 2))
    if const is None:
        return sq
    return (const * const).sum() + 2 * torch.einsum("bto,oi,bti->b", g, const, x) + sq
