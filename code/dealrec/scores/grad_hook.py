"""Per-sample gradients of a linear layer's weight from one backward pass (effort, GraNd).

:class:`OutputGrad` is a forward hook that keeps the layer's input x and makes its output the
only tensor that requires grad, so no autograd graph is built below the layer; after
``torch.autograd.grad(loss, hook.out)`` gives the output gradient g, the per-sample weight
gradient of a linear layer is Σ_t g_t x_tᵀ (:func:`weight_grads`).
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
