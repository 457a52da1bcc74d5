"""Two runs on one output: a lock beside each output folder or file.

A helper process holds the lock of an output; every entry point started on that output stops at
once (before any expensive stage) with "another run holds <output> (pid N, ...)", writes nothing,
and leaves the holder's lock alone. A lock left by a killed run is stale: taken over with a warning
naming the dead pid. The study shares its score folder by design: it waits for the holder, then
reuses. Two gen_fewshot.py runs started at once on one folder end with intact files."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
from _reliability import EXPENSIVE, PY, base_env, error_lines, leftovers, make_world, run

from dealrec.core.locking import LockError, lock_path, output_lock
from dealrec.core.logs import LOG


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

HOLD = ("import sys\nfrom dealrec.core.locking import output_lock\n"
        "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n")


class Holder:
    """A process that holds the lock of ``target`` until :meth:`release` (or is SIGKILLed)."""

    def __init__(self, target: Path):
        self.proc = subprocess.Popen([PY, "-c", HOLD, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=base_env())
        assert self.proc.stdout.readline().strip() == "held"
        self.pid = self.proc.pid

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("lock_world"), 30)


def test_lock_in_process(tmp_path):
    """Re-entrant in one process, refused from another, released on exit, stale after a kill."""
    target = tmp_path / "out"
    with output_lock(target) as lock:
        assert lock == lock_path(target) == tmp_path / ".out.lock"
        assert f"pid={os.getpid()}" in lock.read_text()
        with output_lock(target):  # the same process again: fine
            pass
        assert lock.exists()
    assert not lock.exists()

    holder = Holder(target)
    with pytest.raises(LockError, match=rf"another run holds {target} \(pid {holder.pid}, started .*; wait for it "
                                        r"to finish or choose another output folder"):
        with output_lock(target):
            pass
    holder.kill()  # SIGKILL: the kernel drops its flock, the file stays with the dead pid
    assert f"pid={holder.pid}" in lock_path(target).read_text()
    records = Records()
    LOG.addHandler(records)
    try:
        with output_lock(target):
            assert f"pid={os.getpid()}" in lock_path(target).read_text()
    finally:
        LOG.removeHandler(records)
    assert any(f"stale lock of {target} taken over: pid {holder.pid}" in m for m in records.messages), records.messages
    assert not lock_path(target).exists()


def test_lock_file_of_a_dead_pid_by_hand(tmp_path):
    """A lock file that no process holds (e.g. copied along with a folder, or the pid reused) is stale."""
    target = tmp_path / "scores"
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    lock_path(target).write_text(f"pid={dead.pid}\nhost=x\nstarted=2026-01-01T00:00:00\ncommand=prune.py\n")
    with output_lock(target):
        assert f"pid={os.getpid()}" in lock_path(target).read_text()


def _entry_cases(w: Path, c: Path) -> list[tuple[str, list[str], Path, str]]:
    """(entry point, arguments, the output whose lock is held, its flag)."""
    return [
        ("prune.py", ["--data_dir", str(w / "data"), "--max_users", "30", "--n_fewshot", "4", "--score_dir",
                      str(c / "scores"), "--selected_dir", str(c / "sel"), "--log_name", str(c / "p")],
         c / "scores", "--score_dir"),
        ("gen_fewshot.py", ["--data_dir", str(w / "data"), "--n_sample", "6", "--selected", str(w / "sel.pt"),
                            "--out_dir", str(c / "fs"), "--cutoff_len", "96"], c / "fs", "--out_dir"),
        ("finetune.py", ["--train_data_path", str(w / "train.json"), "--output_dir", str(c / "adapter"),
                         "--batch_size", "4", "--max_steps", "1"], c / "adapter", "--output_dir"),
        ("inference.py", ["--test_data_path", str(w / "test.json"), "--result_json_data", str(c / "r.json")],
         c / "r.json", "--result_json_data"),
        ("evaluate.py", ["--result_file", str(c / "res" / "result.json"), "--data_dir", str(w / "data"),
                         "--data_name", "games"], c / "res" / "result.metrics.json", "--result_file"),
    ]


@pytest.mark.parametrize("entry", ["prune.py", "gen_fewshot.py", "finetune.py", "inference.py", "evaluate.py"])
def test_second_run_is_refused(world, tmp_path, entry, zygote):
    c = tmp_path
    (c / "io").mkdir()
    (c / "res").mkdir()
    (c / "res" / "result.json").write_text((world / "result.json").read_text())
    _, args, target, flag = next(x for x in _entry_cases(world, c) if x[0] == entry)
    before = {p: leftovers(p) for p in (target, c / "sel", c / "res")}
    holder = Holder(target)
    try:
        env = base_env(DEALREC_FAULT_FORBID=EXPENSIVE)
        proc = zygote.run(entry, args, env, c / "io") if zygote is not None else run(entry, args, env=env)
        assert lock_path(target).read_text().startswith(f"pid={holder.pid}\n")  # the holder's lock untouched
    finally:
        holder.release()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and f"another run holds {target} (pid {holder.pid}" in errors[0], proc.stderr[-3000:]
    assert f"choose another {flag}" in errors[0]
    assert {p: leftovers(p) for p in before} == before
    assert not lock_path(target).exists()


def test_study_waits_for_the_holder_of_its_scores(world, tmp_path):
    """The study's score folder is shared by design (parallel --only prune/runs): it waits, then goes on."""
    out = tmp_path / "study"
    holder = Holder(out / "scores")
    proc = subprocess.Popen(
        [PY, str(Path(__file__).resolve().parents[2] / "bench" / "reproduce.py"), "--data_dir", str(world / "data"),
         "--out_dir", str(out), "--n", "4", "--strategies", "random", "--seeds", "0", "--pool_users", "30",
         "--only", "prune", "--log_file", str(tmp_path / "study.log")],
        env=base_env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    log, deadline = tmp_path / "study.log", time.monotonic() + 300
    while not (log.exists() and "waiting for another run" in log.read_text(encoding="utf-8")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the study never reported that it waits"
        time.sleep(0.2)
    assert proc.poll() is None  # still waiting while the holder lives
    holder.release()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert f"waiting for another run that holds {out / 'scores'} (pid {holder.pid}" in err
    assert not lock_path(out / "scores").exists()


def test_two_runs_at_once_leave_intact_files(world, tmp_path):
    """Started together on one folder: one writes and the other waits its turn or is refused; never a
    mixed or half-written file."""
    out = tmp_path / "fs"
    args = ["--data_dir", str(world / "data"), "--n_sample", "6", "--selected", str(world / "sel.pt"),
            "--out_dir", str(out), "--cutoff_len", "96", "--overwrite"]
    from _reliability import SCRIPTS

    procs = [subprocess.Popen([*SCRIPTS["gen_fewshot.py"], *args, "--log_file", str(tmp_path / f"{i}.log")],
                              env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert any(rc == 0 for rc, _ in outcomes), outcomes
    for rc, err in outcomes:
        assert "Traceback" not in err
        assert rc == 0 or (rc == 2 and f"another run holds {out} (pid" in err), err[-2000:]
    for split, name in (("train", "train-6.json"), ("valid", "valid-6.json"), ("test", "test.json")):
        rows = json.loads((out / split / name).read_text(encoding="utf-8"))
        assert rows == json.loads((world / f"{split}.json").read_text(encoding="utf-8"))
    assert not lock_path(out).exists() and not list(out.rglob(".*.tmp"))
