"""Reproducibility: one call that seeds every random number generator a stage draws from, and a
context in which PyTorch picks deterministic kernels.

With more than one thread, a few CPU kernels of a training step accumulate in an order that
depends on thread timing (``index_put_`` with ``accumulate=True``, the backward of advanced
indexing into the item embeddings); a surrogate trained twice on 2 threads then differs in the
last bits after a few epochs, and the equal-width strata of the selection turn such differences
into different selected samples (18 of 64 in the demo). Surrogate and TIGER training run inside
:func:`deterministic_algorithms`, so a rerun gives the same weights, scores and selection whatever
the load on the machine; on one thread both kernels give identical weights
(``bench/bench_determinism.py`` measures the cost and the repeat-to-repeat differences).
Influence scoring needs no such context: on a fixed model its gradients are reproducible with the
default kernels.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Run the block with ``torch.use_deterministic_algorithms(True)``, restoring the caller's
    setting after it. ``warn_only``: an operation with no deterministic kernel (some CUDA ones)
    warns instead of failing, since a run that is not bit-reproducible on a GPU is still valid; on
    CUDA, reproducible matrix products also need ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the
    environment before the process starts."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
