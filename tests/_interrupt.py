"""A training loop stopped after a chosen epoch, in process: the loops call ``faults.step(stage)``
once per finished epoch (after writing their resume state), and :func:`stopping_after` makes that
call raise :class:`Stop` — a crash, Ctrl-C or the end of a session at that point."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import pytest

from dealrec.core import faults


class Stop(Exception):
    """The interruption."""


@contextlib.contextmanager
def stopping_after(epoch: int | None) -> Iterator[None]:
    """Inside: the ``epoch``-th ``faults.step`` call raises :class:`Stop` (None: nothing changes)."""
    with pytest.MonkeyPatch.context() as mp:
        if epoch is not None:
            calls = itertools.count(1)

            def step(stage: str) -> None:
                if next(calls) == epoch:
                    raise Stop

            mp.setattr(faults, "step", step)
        yield
