"""One run per output: an advisory lock beside each output folder or file.

``with output_lock(path): ...`` holds ``<parent>/.<name>.lock`` (``fcntl.flock`` on it, the pid and
command line written inside). A second run on the same output stops at once with

    another run holds <path> (pid N, started <time>: <command>); wait for it to finish or choose another ...

(``wait=True``: it waits instead, for outputs that parallel processes share by design, e.g. the
study's score folder). The kernel releases the lock when its process ends, however it ends, so a
lock file left by a killed run is *stale*: the next run takes it over (with a warning naming the
dead pid), and pid reuse cannot keep a folder locked. The lock file is removed on release.
Locks are re-entrant within one process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from dealrec.core.files import OutputError
from dealrec.core.logs import LOG, commit_log

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking (warned once)
    fcntl = None  # type: ignore[assignment]

_HELD: dict[str, int] = {}  # lock path -> depth, this process


class LockError(OutputError):
    """Another live run holds the output."""


def lock_path(target: str | os.PathLike) -> Path:
    target = Path(os.path.abspath(target))
    return target.parent / f".{target.name}.lock"


def _holder(fd: int) -> dict[str, str]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition("=")
        if v:
            out[k.strip()] = v.strip()
    return out


def _describe(info: dict[str, str]) -> str:
    pid = info.get("pid", "unknown")
    extra = [x for x in (f"started {info['started']}" if info.get("started") else "",
                         info.get("command", "")) if x]
    return f"pid {pid}" + (f", {': '.join(extra)}" if extra else "")


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, *, flag: str = "output folder", wait: bool = False,
                poll_s: float = 2.0) -> Iterator[Path]:
    """Hold the lock of ``target`` (a folder or file that this run writes) for the block."""
    lock = lock_path(target)
    key = str(lock)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield lock
        finally:
            _HELD[key] -= 1
        return
    if fcntl is None:  # pragma: no cover
        LOG.warning("no fcntl on this platform: %s is not locked against concurrent runs", target)
        yield lock
        return
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{flag} {target}: cannot create {lock.parent} ({e.strerror}); "
                          "choose a writable location") from e
    waited = False
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"{flag} {target}: cannot create the lock file {lock} ({e.strerror}); "
                              "choose a writable location") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _holder(fd)
            os.close(fd)
            if not wait:
                raise LockError(
                    f"another run holds {target} ({_describe(info)}); wait for it to finish or choose another "
                    f"{flag} (lock file {lock})"
                ) from None
            if not waited:
                LOG.info("waiting for another run that holds %s (%s)", target, _describe(info))
                waited = True
            time.sleep(poll_s)
            continue
        try:  # the holder may have removed the file between our open and flock: lock the current one
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    previous = _holder(fd)
    if previous.get("pid") and previous.get("pid") != str(os.getpid()):
        LOG.warning("stale lock of %s taken over: %s is no longer running (lock file %s)",
                    target, _describe(previous), lock)
    record = (f"pid={os.getpid()}\nhost={socket.gethostname()}\nstarted={time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
              f"command={' '.join(sys.argv)[:300]}\n")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, record.encode("utf-8"))
    _HELD[key] = 1
    commit_log()  # the run owns its output now: a deferred log file may be written
    try:
        yield lock
    finally:
        del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
