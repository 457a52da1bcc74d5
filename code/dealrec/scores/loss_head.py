"""The gradient of the next-token cross-entropy w.r.t. the final hidden states, without autograd
through the LM head (used by the effort score, paper Eq. 12).

For one position with final hidden state h, head weight W [V, d] (and bias b), target y and
weight w (the position's share in the loss, e.g. 1/T for a mean over T tokens):

    z = W h + b,   p = softmax(z),   ce = logsumexp(z) − z_y,   ∂(w·ce)/∂h = w · Wᵀ (p − e_y)

Autograd through ``F.cross_entropy(lm_head(h))`` keeps the logits and their log-softmax, fills a
zero gradient of the same size, runs the log-softmax backward and (under autocast) casts the
[tokens, V] tensors back and forth: on a CPU those passes over tokens × 49,152 floats cost more
than the head's two matrix products (profile in docs/performance.md). :func:`head_grad` computes
the same gradient in chunks of positions, reusing one logits buffer in place: z, then exp(z − max)
(the softmax numerator), then w·p − w·e_y, then its product with W. The caller feeds the result
into the rest of the graph with ``torch.autograd.grad(h, wrt, grad_outputs=dh)``.

``bf16`` runs both products on a bf16 copy of W (the softmax stays fp32), as the loss head under
bf16 autocast would: logits rounded to bf16, the logits' gradient cast to bf16 before the second
product.
"""

from __future__ import annotations

import torch

CHUNK = 512  # positions per chunk: bounds the [chunk, V] buffer (100 MB in fp32 for V = 49,152)


def head_grad(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    weight_bf16: torch.Tensor | None = None,
    chunk: int = CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy ``ce`` [N] and ``∂(Σ_t w_t ce_t)/∂h`` [N, d] for ``hidden`` [N, d].

    ``weight_bf16`` (a bf16 copy of ``weight``): both products in bf16, softmax in fp32. The
    computation runs in ``hidden``'s dtype, at least fp32; ``hidden`` is not part of any graph here.
    """
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    h = hidden.detach()
    w_mat = weight.detach().to(dtype) if weight_bf16 is None else weight_bf16
    tw = token_weight.detach().to(dtype)
    n = len(h)
    ce = torch.empty(n, dtype=dtype, device=h.device)
    dh = torch.empty(n, h.shape[1], dtype=dtype, device=h.device)
    for s in range(0, n, max(1, chunk)):
        e = min(n, s + max(1, chunk))
        z = (h[s:e].to(w_mat.dtype) @ w_mat.T).to(dtype)  # [c, V] logits
        if bias is not None:
            z += bias.detach().to(dtype)
        y = targets[s:e, None]
        z_y = z.gather(1, y)
        m = z.amax(1, keepdim=True)
        z.sub_(m).exp_()  # softmax numerator
        total = z.sum(1, keepdim=True)
        ce[s:e] = (m + total.log() - z_y)[:, 0]
        w = tw[s:e, None]
        z.mul_(w / total)  # w · p
        z.scatter_add_(1, y, -w)  # w · (p − e_y)
        dh[s:e] = (z.to(w_mat.dtype) @ w_mat).to(dtype)
    return ce, dh


def head_grad_autograd(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    token_weight: torch.Tensor,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same two results by plain autograd through ``head`` and ``F.cross_entropy`` (the
    reference, and the path for heads that are not a linear layer); ``bf16``: the head under bf16
    autocast, logits fp32."""
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    h = hidden.detach().to(dtype).requires_grad_(True)
    with torch.enable_grad():
        with torch.autocast(h.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = head(h)
        ce = torch.nn.functional.cross_entropy(logits.to(dtype), targets, reduction="none")
        (dh,) = torch.autograd.grad((ce * token_weight.to(dtype)).sum(), h)
    return ce.detach(), dh
