"""The process's place among several (:func:`dealrec.core.dist.dist_info`), read from the
environment that ``torchrun`` / ``accelerate launch`` set."""

from __future__ import annotations

from dealrec.core.dist import dist_info


def test_dist_info(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_info() == (2, 4, 1) and not dist_info().main
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k)
    assert dist_info() == (0, 1, 0) and dist_info().main
