"""The identity of a base LLM in cache keys and manifests, without loading anything.

Shared by the stages that record which model made an output (few-shot files, effort scores,
adapters, generations, study records); loading the model is :mod:`dealrec.llm.model`'s job.
"""

from __future__ import annotations

import os
from pathlib import Path

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_ALIASES = {EMBEDDED_NAME, "embedded", "default", "SmolLM2-135M-Instruct"}


def model_id(base_model: str | os.PathLike | None) -> str:
    """A short, stable name for cache keys and manifests: the embedded model's name, else the
    folder's absolute path."""
    if base_model is None or str(base_model) in EMBEDDED_ALIASES:
        return EMBEDDED_NAME
    return str(Path(base_model).expanduser().resolve())
