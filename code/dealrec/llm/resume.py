"""Resuming an interrupted LoRA fine-tuning from its last Trainer checkpoint.

With a validation set the Trainer saves a checkpoint (adapter, optimiser, scheduler, RNG states,
trainer state) every ``eval_steps`` under ``output_dir/checkpoints``. Beside them :data:`RUN_FILE`
holds the key of the configuration they belong to and the training seconds spent up to each saved
step. A rerun with the same key continues from the latest complete checkpoint (the Trainer writes
``trainer_state.json`` last) with the optimiser state, RNG states and batch order of the
uninterrupted run, so it ends with the same adapter; checkpoints of another configuration, or all of
them with ``--overwrite``, are deleted and the run starts afresh.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dealrec.core.files import read_json, write_json
from dealrec.core.logs import LOG

RUN_FILE = "run.json"
PREFIX = "checkpoint-"


@dataclass(frozen=True)
class ResumePoint:
    """Where a fine-tuning run starts: a checkpoint folder (``None``: from the beginning), its step,
    and the training seconds the interrupted run(s) spent up to it."""

    checkpoint: str | None
    step: int = 0
    seconds: float = 0.0


def _step(folder: Path) -> int | None:
    tail = folder.name.removeprefix(PREFIX)
    return int(tail) if folder.name.startswith(PREFIX) and tail.isdigit() else None


def _checkpoints(folder: Path) -> list[Path]:
    """Every ``checkpoint-<step>`` folder in ``folder``, by step."""
    return sorted((p for p in folder.glob(PREFIX + "*") if _step(p) is not None and p.is_dir()), key=_step)


def _json_dict(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; empty where the file is missing, cut short or not an object."""
    try:
        obj = read_json(path)
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def complete_checkpoints(folder: Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders in ``folder`` whose ``trainer_state.json`` reads and names
    their step (a save cut short lacks it or has it truncated), by step."""
    return [p for p in _checkpoints(folder) if _is_complete(p)]


def _is_complete(checkpoint: Path) -> bool:
    """Whether ``checkpoint``'s ``trainer_state.json`` reads and names its step."""
    return _json_dict(checkpoint / "trainer_state.json").get("global_step") == _step(checkpoint)


def _remove(checkpoints: list[Path], why: str) -> None:
    if checkpoints:
        LOG.info("removing %d checkpoint(s) %s in %s", len(checkpoints), why, checkpoints[0].parent)
    for c in checkpoints:
        shutil.rmtree(c, ignore_errors=True)


def resume_point(folder: Path, key: str, overwrite: bool, main: bool) -> ResumePoint:
    """Where the run with cache key ``key`` starts, given the Trainer checkpoint folder ``folder``.

    The latest complete checkpoint of a run with the same key, unless ``overwrite``; otherwise the
    beginning. On the main process (``main``) the checkpoints that will not be used are deleted (a
    stale "best" checkpoint must not be loaded at the end) and, when starting afresh, the key written.
    Every process reaches the same answer: the main process only deletes what no process resumes from."""
    run = _json_dict(folder / RUN_FILE)
    every = _checkpoints(folder)
    if not overwrite and run.get("key") == key and (done := [p for p in every if _is_complete(p)]):
        last = done[-1]
        step = _step(last)
        if main:
            _remove([p for p in every if _step(p) > step], "cut short while saving")
        seconds = float(run.get("seconds", {}).get(str(step), 0.0))
        return ResumePoint(str(last), step, seconds)
    if main:
        why = ("of an interrupted run with other settings" if run.get("key") != key
               else "of an interrupted run (--overwrite)" if overwrite else "cut short while saving")
        _remove(every, why)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / RUN_FILE, {"key": key, "seconds": {}})
    return ResumePoint(None)


def seconds_at_save(folder: Path, start: ResumePoint) -> Any:
    """A Trainer callback that records in :data:`RUN_FILE`, at each checkpoint save, the training
    seconds up to that step (the resumed run's own time added to ``start.seconds``)."""
    from transformers import TrainerCallback

    class SecondsAtSave(TrainerCallback):
        t0 = time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.t0 = time.perf_counter()

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                run = _json_dict(folder / RUN_FILE)
                run.setdefault("seconds", {})[str(state.global_step)] = round(
                    start.seconds + time.perf_counter() - self.t0, 1)
                write_json(folder / RUN_FILE, run)

    return SecondsAtSave()
