"""Crash-safe output files and the readers of what the stages write.

Every output is written to a temporary file in the same folder and then renamed
(:func:`atomic_path`), so a crash or Ctrl-C never leaves a half-written file; a write that fails
becomes an :class:`OutputError` naming the file and the fix. The readers check what they load
and name the flag that pointed at a bad file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


class OutputError(ValueError):
    """An output cannot be written (read-only folder, full disk, another run holds it); the message
    names the file and the fix."""


def write_error(path: Path, e: OSError, flag: str | None = None) -> OutputError:
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
    from dealrec.core.faults import check_write

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            check_write(path)
            yield tmp_path
            os.replace(tmp_path, path)
        except OSError as e:
            raise write_error(path, e) from e
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_writable(folder: str | os.PathLike, flag: str) -> None:
    """Fail now, before any expensive stage, when ``folder`` (existing or to be created) cannot
    take a file: probe its first existing ancestor with a small temporary file (removed again)."""
    from dealrec.core.faults import check_write

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
        raise write_error(folder, e, flag) from e


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
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
    write_text(path, json.dumps(jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def write_compact_json(path: str | os.PathLike, obj: Any) -> None:
    """JSON on one line without spaces (per-user records: thousands of small ints)."""
    write_text(path, json.dumps(jsonable(obj), separators=(",", ":"), ensure_ascii=False) + "\n")


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
