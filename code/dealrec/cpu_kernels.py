"""Two exact savings for transformer layers on a CPU (measured in README "Performance").

1. **Grouped-query attention without copied keys/values.** A model with fewer key/value heads
   than query heads (SmolLM2: 3 and 9) has its keys and values repeated per query head by
   transformers' ``sdpa`` attention before every call that has a mask and more than one query
   position (prefill, training, title embeddings). torch's ``scaled_dot_product_attention(...,
   enable_gqa=True)`` reads the shared heads instead; on a CPU its forward gives the same numbers
   (tested: equal) and the backward only sums the shared heads' gradients in another order.
   transformers asks for it when ``TRANSFORMERS_SDPA_FORCE_GQA=1``; :func:`use_sdpa_gqa` sets
   that for a model on the CPU (set it to 0 beforehand to keep the copies).
2. **Frozen weights cast to bf16 once.** Under CPU bf16 autocast every linear layer casts its
   fp32 weight to bf16 at every call, because autocast caches only the casts of weights that
   require a gradient: LoRA fine-tuning re-cast the whole frozen model at every micro-batch.
   :func:`frozen_bf16_weights` holds bf16 copies of the frozen linear layers' weights for a block
   of code that runs under autocast, which is the same cast done once: the same numbers, bit for
   bit. A weight shared with a non-linear module (an LM head tied to the token embeddings) keeps
   fp32, since the embedding must not change.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

GQA_ENV = "TRANSFORMERS_SDPA_FORCE_GQA"
LOG = logging.getLogger("dealrec")


def _torch_has_enable_gqa() -> bool:
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 5)


def use_sdpa_gqa(device: torch.device | str) -> bool:
    """Let transformers' sdpa attention share key/value heads on a CPU (torch >= 2.5).

    Process-wide (transformers reads the variable at every call); a value already set is kept.
    Returns whether it is on."""
    if torch.device(device).type != "cpu" or not _torch_has_enable_gqa():
        return os.environ.get(GQA_ENV) == "1"
    os.environ.setdefault(GQA_ENV, "1")
    return os.environ[GQA_ENV] == "1"


def kernels_ran(n_cast: int = 0) -> dict[str, bool]:
    """For a manifest: which of the two savings ran (neither changes the numbers beyond float order)."""
    return {"sdpa_shared_kv_heads": os.environ.get(GQA_ENV) == "1", "frozen_weights_cast_once": n_cast > 0}


def _castable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """fp32 weights and biases of frozen linear layers that no other kind of module uses."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    shared = {id(p) for m in model.modules() if not isinstance(m, torch.nn.Linear)
              for p in m.parameters(recurse=False)}
    out, seen = [], set()
    for m in linears:
        for p in m.parameters(recurse=False):
            if (p.dtype == torch.float32 and not p.requires_grad and id(p) not in shared
                    and id(p) not in seen):
                seen.add(id(p))
                out.append(p)
    return out


@contextlib.contextmanager
def frozen_bf16_weights(model: Any, enabled: bool = True) -> Iterator[int]:
    """Within the block, the frozen linear layers of ``model`` hold bf16 copies of their weights.

    For code that runs the model under CPU bf16 autocast only (outside autocast a bf16 weight
    meets an fp32 input and the layer raises). The fp32 tensors are put back on exit, also after
    an error. Yields the number of parameters cast."""
    params = _castable(model) if enabled else []
    originals = [p.data for p in params]
    try:
        for p in params:
            p.data = p.data.to(torch.bfloat16)
        if params:
            LOG.debug("%d frozen linear weights held in bf16 for autocast", len(params))
        yield sum(p.numel() for p in params)
    finally:
        for p, data in zip(params, originals):
            p.data = data
