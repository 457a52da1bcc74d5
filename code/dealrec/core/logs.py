"""The package logger, the per-run log file and a wall-clock timer."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOG = logging.getLogger("dealrec")


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
