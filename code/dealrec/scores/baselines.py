"""Baseline difficulty scores of the surrogate (Paul et al., 2021), for the comparisons of §5.

- EL2N(s): mean over s's target positions of the L2 norm of the error vector
  (σ(pos logit) − 1, σ(neg logit) − 0) of the BCE loss, with the same fixed negatives.
- GraNd(s): ‖∇_W L(s)‖₂ for the linear weight W of the influence score (default
  ``item_encoder.layer.1.attention.dense.weight``), from one backward pass per batch:
  per-sample Σ_t g_t x_tᵀ from the layer's input x and output gradient g.

Both use the surrogate's own objective (:mod:`dealrec.surrogate.objective`): for BERT4Rec the
error vector is softmax − one-hot at the masked positions and the loss its cloze loss, with the
masks of ``samples`` (drawn by the caller, as the negatives are).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from dealrec.scores.grad_hook import OutputGrad, weight_grads
from dealrec.surrogate.objective import objective_of, trim_exact
from dealrec.surrogate.samples import SampleTensors, trim_left


def _batches(samples: SampleTensors, size: int = 2048) -> list[torch.Tensor]:
    idx = samples.eligible.nonzero(as_tuple=True)[0]
    lengths = (samples.input_ids[idx] > 0).sum(1)
    idx = idx[torch.argsort(lengths, stable=True)]
    return [idx[i:i + size] for i in range(0, len(idx), size)]


def _rows(model: torch.nn.Module, samples: SampleTensors, neg: torch.Tensor | None, idx: torch.Tensor):
    ids, pos, ng = samples.input_ids[idx], samples.target_pos[idx], neg[idx] if neg is not None else None
    return trim_left(ids, pos, ng) if trim_exact(model) else (ids, pos, ng)


@torch.no_grad()
def el2n_scores(model: torch.nn.Module, samples: SampleTensors, neg: torch.Tensor | None) -> torch.Tensor:
    model.eval()
    objective = objective_of(model)
    out = torch.zeros(len(samples))
    for idx in tqdm(_batches(samples), desc="EL2N", leave=False):
        ids, pos, ng = _rows(model, samples, neg, idx)
        norm = objective.error_norms(model, ids, pos, ng)
        out[idx] = norm.sum(1) / (pos > 0).sum(1).clamp(min=1)
    return out


def grand_scores(
    model: torch.nn.Module, samples: SampleTensors, neg: torch.Tensor | None, param: str
) -> torch.Tensor:
    """GraNd w.r.t. a linear layer's weight (``param`` must end in ``.weight`` of an nn.Linear)."""
    loss_terms = objective_of(model).loss_terms
    module = model.get_submodule(param.rsplit(".", 1)[0])
    if not isinstance(module, torch.nn.Linear) or not param.endswith(".weight"):
        raise ValueError(f"GraNd needs the weight of an nn.Linear, got {param!r}")
    model.eval()
    out = torch.zeros(len(samples))
    for p in model.parameters():
        p.requires_grad_(False)
    with OutputGrad(module) as hook:
        for idx in tqdm(_batches(samples), desc="GraNd", leave=False):
            ids, pos, ng = _rows(model, samples, neg, idx)
            with torch.enable_grad():
                sums, counts = loss_terms(model, ids, pos, ng)
                (g,) = torch.autograd.grad((sums / counts.clamp(min=1)).sum(), hook.out)
            out[idx] = weight_grads(g, hook.take()[0]).flatten(1).norm(dim=1)
    return out
