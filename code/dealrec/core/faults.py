"""Deterministic fault injection for the reliability tests (inactive unless an environment variable asks).

- ``DEALREC_FAULT_AFTER=<stage>:<n>[,<stage>:<n>...]``: the process sends itself SIGKILL right
  after its ``n``-th progress step of ``stage`` (a kill at a chosen point, reproducible, unlike a
  timer: a step is a surrogate epoch, a LiSSA step or influence batch, an effort batch, a LoRA
  optimiser step, a generation batch, a grounding batch, a TIGER epoch, a finished study run).
- ``DEALREC_FAULT_FORBID=<stage>,...`` (or ``*``): entering one of these stages ends the process at
  once with exit status 97 and a line on stderr (the tests' "fails before any expensive work").
- ``DEALREC_FAULT_ENOSPC=1``: every atomic write (:func:`dealrec.core.files.atomic_path`) and the
  writability probe fail with ``ENOSPC`` (a full disk, without filling one).

Stages: ``surrogate``, ``influence``, ``effort``, ``load_model``, ``finetune``, ``generate``,
``ground``, ``tiger``, ``study``.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

AFTER = "DEALREC_FAULT_AFTER"
FORBID = "DEALREC_FAULT_FORBID"
ENOSPC = "DEALREC_FAULT_ENOSPC"
FORBIDDEN_EXIT = 97

_counts: dict[str, int] = {}


def _kill_points() -> dict[str, int]:
    spec = os.environ.get(AFTER, "")
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        stage, _, n = part.partition(":")
        out[stage] = int(n)
    return out


def enter(stage: str) -> None:
    """Mark the start of an expensive stage (ends the process when the stage is forbidden)."""
    forbid = os.environ.get(FORBID)
    if forbid and (forbid.strip() == "*" or stage in {s.strip() for s in forbid.split(",")}):
        sys.stderr.write(f"FAULT: expensive stage {stage!r} started although forbidden\n")
        sys.stderr.flush()
        os._exit(FORBIDDEN_EXIT)


def step(stage: str) -> None:
    """One progress step of ``stage``: SIGKILL this process when it is the chosen kill point."""
    if not os.environ.get(AFTER) and not os.environ.get(FORBID):
        return
    enter(stage)
    n = _kill_points().get(stage)
    if n is None:
        return
    _counts[stage] = _counts.get(stage, 0) + 1
    if _counts[stage] == n:
        sys.stderr.write(f"FAULT: SIGKILL after {stage} step {n}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def check_write(path: str | os.PathLike) -> None:
    """Raise ``ENOSPC`` for ``path`` when a full disk is simulated."""
    if os.environ.get(ENOSPC, "") not in ("", "0"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
