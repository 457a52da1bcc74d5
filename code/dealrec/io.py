"""Files, manifests, caches, seeds and logs shared by every stage.

Every output is written to a temporary file in the same folder and then renamed, so a
crash or Ctrl-C never leaves a half-written file. Every output carries a JSON manifest
(``<file>.json``) with the parameters that produced it; a stage reuses its cached output
only when the manifest's ``key`` (the parameters that matter) is unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
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


class OutputError(ValueError):
    """An output cannot be written (read-only folder, full disk, another run holds it); the message
    names the file and the fix."""


def _write_error(path: Path, e: OSError, flag: str | None = None) -> OutputError:
    where = f"{flag} {path}" if flag else str(path)
    if e.errno == errno.ENOSPC:
        fix = "free some space on that disk or choose an output folder on another disk"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make it writable or choose a writable output folder"
    else:
        fix = "check the output folder"
    return OutputError(f"{where}: cannot write ({e.strerror or e}); {fix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success only.

    An ``OSError`` while writing (a full disk, a read-only folder) becomes an :class:`OutputError`
    naming ``path``; nothing is left behind."""
    from .faults import check_write

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            check_write(path)
            yield tmp_path
            os.replace(tmp_path, path)
        except OSError as e:
            raise _write_error(path, e) from e
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_writable(folder: str | os.PathLike, flag: str) -> None:
    """Fail now, before any expensive stage, when ``folder`` (existing or to be created) cannot
    take a file: probe its first existing ancestor with a small temporary file (removed again)."""
    from .faults import check_write

    folder = Path(os.path.abspath(folder))
    probe_dir = folder
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise OutputError(f"{flag} {folder}: {probe_dir} is a file, not a folder; choose another path")
    try:
        check_write(folder)
        with tempfile.TemporaryFile(dir=probe_dir) as f:
            f.write(b"dealrec write probe\n" * 64)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise _write_error(folder, e, flag) from e


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


def read_json_checked(path: str | os.PathLike, flag: str, fix: str) -> Any:
    """:func:`read_json` of a file the user named with ``flag``: a missing, empty, unreadable,
    non-UTF-8 or truncated file is one line naming the flag, the file and ``fix``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: a folder, not a JSON file; {fix}")
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file; {fix}")
    try:
        return read_json(path)
    except UnicodeDecodeError:
        raise ValueError(f"{flag} {path}: not UTF-8 text (not a JSON file); {fix}") from None
    except json.JSONDecodeError as e:
        what = "the file is empty" if not path.stat().st_size else f"not valid JSON ({e.msg} at line {e.lineno}; truncated?)"
        raise ValueError(f"{flag} {path}: {what}; {fix}") from None
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot read ({e.strerror}); check the file's permissions") from None


def save_tensor(path: str | os.PathLike, value: Any) -> None:
    """``torch.save`` atomically (plain tensors/lists stay loadable with weights_only=True)."""
    with atomic_path(path) as tmp:
        torch.save(value, tmp)


def load_tensor(path: str | os.PathLike) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checked(path: str | os.PathLike, flag: str, expected: str) -> Any:
    """``torch.load(weights_only=True)`` of a file the user named with ``flag``; any failure is one
    line naming the flag, the file and what it should be (never torch's advice to unpickle it)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{flag} {path}: the file is empty; expected {expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip/format errors all mean: not this kind of file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in first or "Weights only load failed" in first:
            first = "it holds objects other than tensors and plain containers"
        raise ValueError(
            f"{flag} {path}: not {expected} ({type(e).__name__}: {first[:160]}); pass the file that "
            f"{flag} expects"
        ) from None


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


class DeferredFileHandler(logging.Handler):
    """A log file that is created only once the run owns its output (:func:`commit_log`, called
    when the output lock is taken) or when the process ends normally; until then the records are
    kept in memory, so a run refused at its input checks writes nothing into the output folder
    (:func:`discard_log`; the message went to stderr)."""

    def __init__(self, path: str | os.PathLike, fmt: logging.Formatter):
        super().__init__()
        self.path, self.fmt = Path(path), fmt
        self.buffer: list[logging.LogRecord] | None = []
        self.file: logging.FileHandler | None = None
        self.setFormatter(fmt)

    def commit(self) -> None:
        if self.file is not None or self.buffer is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = logging.FileHandler(self.path, encoding="utf-8")
        except OSError:
            self.buffer = None  # an unwritable log folder: stderr only (the output checks say why)
            return
        self.file.setFormatter(self.fmt)
        for rec in self.buffer:
            self.file.emit(rec)
        self.buffer = []

    def discard(self) -> None:
        if self.file is None:
            self.buffer = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is not None:
            self.file.emit(record)
        elif self.buffer is not None:
            self.buffer.append(record)

    def close(self) -> None:
        if self.file is None and self.buffer:
            self.commit()
        if self.file is not None:
            self.file.close()
        super().close()


def commit_log() -> None:
    """Create the deferred log file of this run now (see :class:`DeferredFileHandler`)."""
    for h in LOG.handlers:
        if isinstance(h, DeferredFileHandler):
            h.commit()


def discard_log() -> None:
    """A run refused before it started: drop a deferred log file that was not created yet."""
    for h in LOG.handlers:
        if isinstance(h, DeferredFileHandler):
            h.discard()


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO,
                  defer: bool = False) -> logging.Logger:
    """Log to stderr and, when given, to ``log_file`` (one file per run). ``defer``: the log file
    lies inside the run's output; it is created only once the run got past its input checks
    (:class:`DeferredFileHandler`)."""
    LOG.setLevel(level)
    LOG.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    LOG.addHandler(stream)
    if log_file is not None and defer:
        LOG.addHandler(DeferredFileHandler(log_file, fmt))
    elif log_file is not None:
        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as e:
            LOG.warning("cannot write the log file %s (%s): logging to stderr only", log_file, e.strerror)
        else:
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
