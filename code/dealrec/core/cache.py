"""Cached outputs: the JSON manifest beside each output and the key that decides reuse.

Every output carries a manifest (``<file>.json``) with the parameters that produced it; a stage
reuses its cached output only when the manifest's ``key`` (a hash of the parameters that matter)
is unchanged. The hashes of files and tensors that go into keys live here too.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from dealrec.core.files import jsonable, read_json, write_json


def manifest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def cache_key(params: dict[str, Any]) -> str:
    """A stable hash of the parameters that determine an output."""
    blob = json.dumps(jsonable(params), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_hash(path: str | os.PathLike, n_bytes: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if n_bytes is None:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(n_bytes))
    return h.hexdigest()[:16]


def tensor_hash(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def cached(path: str | os.PathLike, key_params: dict[str, Any]) -> bool:
    """True when ``path`` exists and its manifest was written with the same key parameters."""
    path = Path(path)
    mpath = manifest_path(path)
    if not (path.exists() and mpath.exists()):
        return False
    try:
        return read_json(mpath).get("key") == cache_key(key_params)
    except (OSError, json.JSONDecodeError):
        return False


def write_manifest(path: str | os.PathLike, key_params: dict[str, Any], **extra: Any) -> dict:
    manifest = {
        "file": Path(path).name,
        "key": cache_key(key_params),
        "params": key_params,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
    }
    write_json(manifest_path(path), manifest)
    return manifest
