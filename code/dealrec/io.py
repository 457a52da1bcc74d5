"""Files, manifests, caches, seeds and logs shared by every stage.

Every output is written to a temporary file in the same folder and then renamed, so a
crash or Ctrl-C never leaves a half-written file. Every output carries a JSON manifest
(``<file>.json``) with the parameters that produced it; a stage reuses its cached output
only when the manifest's ``key`` (the parameters that matter) is unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

LOG = logging.getLogger("dealrec")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def write_compact_json(path: str | os.PathLike, obj: Any) -> None:
    """JSON on one line without spaces (per-user records: thousands of small ints)."""
    write_text(path, json.dumps(_jsonable(obj), separators=(",", ":"), ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_tensor(path: str | os.PathLike, value: Any) -> None:
    """``torch.save`` atomically (plain tensors/lists stay loadable with weights_only=True)."""
    with atomic_path(path) as tmp:
        torch.save(value, tmp)


def load_tensor(path: str | os.PathLike) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def manifest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def cache_key(params: dict[str, Any]) -> str:
    """A stable hash of the parameters that determine an output."""
    blob = json.dumps(_jsonable(params), sort_keys=True, ensure_ascii=False)
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, when given, to ``log_file`` (one file per run)."""
    LOG.setLevel(level)
    LOG.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    LOG.addHandler(stream)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(fmt)
        LOG.addHandler(fh)
    LOG.propagate = False
    return LOG


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Undo what :func:`setup_logging` does to the package logger (handlers, level, propagation)
    when the block ends: for callers that run a command's ``main`` in-process (tests, notebooks)."""
    handlers, propagate, level = list(LOG.handlers), LOG.propagate, LOG.level
    try:
        yield
    finally:
        for h in LOG.handlers:
            if h not in handlers:
                h.close()
        LOG.handlers[:] = handlers
        LOG.propagate, LOG.level = propagate, level


class Timer:
    """``with Timer() as t: ...; t.seconds``"""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def resolve_device(gpu_id: str | int | None) -> torch.device:
    """``cpu``, ``None``, or a GPU index; an absent GPU gives a warning and the CPU."""
    if gpu_id is None or str(gpu_id).lower() in {"cpu", "-1", ""}:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        LOG.warning("GPU %s requested but CUDA is not available: using the CPU", gpu_id)
        return torch.device("cpu")
    idx = int(gpu_id)
    if idx >= torch.cuda.device_count():
        LOG.warning("GPU %s requested but only %d visible: using cuda:0", gpu_id, torch.cuda.device_count())
        idx = 0
    return torch.device(f"cuda:{idx}")
