"""A training loop's state between epochs, written after each one so that a stopped run (a crash,
Ctrl-C, the end of a session) continues where it stopped and ends as a run never stopped would.

The file holds the weights, the optimiser, the loop's own generator and torch's global random state
(dropout; CUDA's too where present) and the loop's progress (a plain dict: epoch, best so far,
history, timings), under a key naming the settings it was written for: a file written for other
settings, or unreadable, is ignored and training starts from its first epoch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from dealrec.core.files import load_tensor, save_tensor
from dealrec.core.logs import LOG


def save_state(path: str | os.PathLike, key: str, model: torch.nn.Module, optim: torch.optim.Optimizer,
               gen: torch.Generator, progress: dict[str, Any]) -> None:
    """Write the state atomically (``progress``: plain values and tensors, loadable with weights_only)."""
    state = {"key": key, "progress": progress, "model": model.state_dict(), "optim": optim.state_dict(),
             "gen": gen.get_state(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    save_tensor(path, state)


def load_state(path: str | os.PathLike, key: str, model: torch.nn.Module, optim: torch.optim.Optimizer,
               gen: torch.Generator, what: str) -> dict[str, Any] | None:
    """Restore model, optimiser and generators from ``path`` when it was written for ``key`` and
    return its progress; None (nothing restored) when there is no such file. ``what`` names the
    training in log lines."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = load_tensor(path)
    except Exception as err:  # noqa: BLE001 - an unreadable state file only costs the epochs it held
        LOG.warning("%s: ignoring the unreadable resume file %s (%s)", what, path, err)
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        LOG.info("%s: %s belongs to other settings; training from its first epoch", what, path)
        return None
    model.load_state_dict(state["model"])
    optim.load_state_dict(state["optim"])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["progress"]
