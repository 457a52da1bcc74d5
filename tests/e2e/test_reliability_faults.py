"""Every long stage survives a kill.

Each stage is killed with SIGKILL at a point drawn from a seeded random generator
(``DEALREC_KILL_SEED``, default 0): the run is started with ``DEALREC_FAULT_AFTER=<stage>:<n>``
and sends itself SIGKILL after its ``n``-th progress step of that stage (deterministic, unlike a
timer on a loaded machine). Then the same command is run again, and the outputs must equal those of
an uninterrupted run of the same command: bit for bit for the surrogate weights, the influence and
effort scores, the selection indices, the adapter, the generations and the metrics. After each
kill no final file may exist half-written (only complete earlier stages, with their manifests),
and the killed run's lock is stale and taken over by the rerun.

Kill points: surrogate training, influence (LiSSA), effort, LoRA fine-tuning, generation,
grounding, and the study (inside its fine-tuning and after a finished run)."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from _reliability import base_env
from _reliability import run as spawn

pytestmark = pytest.mark.slow

RNG = random.Random(int(os.environ.get("DEALREC_KILL_SEED", "0")))
N_USERS = 24


@pytest.fixture
def run(zygote, tmp_path):
    """Run an entry point in its own process (forked from a pre-imported interpreter when possible)."""
    io_dir = tmp_path / "io"
    io_dir.mkdir()

    def go(entry: str, args: list[str], env: dict[str, str] | None = None):
        env = env or base_env()
        return zygote.run(entry, args, env, io_dir) if zygote is not None else spawn(entry, args, env=env)

    return go


def kill_point(stage: str, low: int, high: int) -> str:
    """``<stage>:<n>`` with n drawn from [low, high] (every n in the range is a real step of the stage)."""
    return f"{stage}:{RNG.randint(low, high)}"


@pytest.fixture(scope="module")
def base_model():
    from dealrec.llm.model import embedded_model_dir

    return str(embedded_model_dir())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from dealrec.llm.tiny_models import write_synthetic_dataset

    d = tmp_path_factory.mktemp("fault_data")
    write_synthetic_dataset(d, "games", n_users=N_USERS, seed=5)
    return d


def killed(proc, point: str) -> None:
    assert proc.returncode == -signal.SIGKILL, (
        f"expected SIGKILL at {point}, got rc {proc.returncode}\n{proc.stderr[-3000:]}")
    assert f"FAULT: SIGKILL after {point.replace(':', ' step ')}" in proc.stderr


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]


def no_temporaries(folder: Path) -> None:
    tmp = [str(p) for p in folder.rglob(".*.tmp")]
    assert not tmp, f"temporary files left: {tmp}"


def load(path: Path):
    from dealrec.core.files import load_tensor

    return load_tensor(path)


def same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------
# pruning: surrogate → influence → effort → selection
# ------------------------------------------------------------------------------------------


def prune_args(data_dir: Path, base_model: str, out: Path) -> list[str]:
    return ["--data_dir", str(data_dir), "--data_name", "games", "--max_users", str(N_USERS), "--epochs", "3",
            "--eval_every", "1", "--recursion_depth", "30", "--n_fewshot", "6", "--cutoff_len", "64",
            "--effort_batch_tokens", "256", "--base_model", base_model, "--score_dir", str(out / "scores"),
            "--selected_dir", str(out / "sel"), "--log_name", str(out / "prune"), "--gpu_id", "cpu"]


def test_prune_killed_in_each_stage(data_dir, base_model, tmp_path, run):
    ref, out = tmp_path / "ref", tmp_path / "out"
    ok(run("prune.py", prune_args(data_dir, base_model, ref)))
    scores = out / "scores"
    lock = out / ".scores.lock"
    points = [kill_point("surrogate", 1, 2), kill_point("influence", 1, 29), kill_point("effort", 1, 3)]
    pids = []
    for i, point in enumerate(points):
        proc = run("prune.py", prune_args(data_dir, base_model, out), env=base_env(DEALREC_FAULT_AFTER=point))
        killed(proc, point)
        if pids:  # the previous killed run's lock was stale: taken over, naming the dead pid
            assert f"stale lock of {scores} taken over: pid {pids[-1]}" in proc.stderr, proc.stderr[-2000:]
        assert lock.is_file()
        pids.append(lock.read_text().split("pid=")[1].split()[0])
        # Stages before the killed one are complete (file + manifest); the killed one left no final file.
        done = ["surrogate", "influence", "effort"][:i]
        for name in ("surrogate", "influence", "effort"):
            assert (scores / f"{name}.pt").is_file() == (name in done), (point, name)
            assert (scores / f"{name}.pt.json").is_file() == (name in done), (point, name)
        assert not (out / "sel").exists()
        # The surrogate's training state outlives a kill inside it, and the next run resumes from it.
        assert (scores / "surrogate.resume.pt").is_file() == (i == 0), point
        if i == 1:
            assert "surrogate: resuming at epoch" in proc.stderr, proc.stderr[-2000:]
        no_temporaries(out)
    proc = run("prune.py", prune_args(data_dir, base_model, out))
    ok(proc)
    assert f"stale lock of {scores} taken over: pid {pids[-1]}" in proc.stderr
    assert "surrogate: reusing" in proc.stderr and "influence: reusing" in proc.stderr
    assert not lock.exists()
    no_temporaries(out)
    same_state(load(scores / "surrogate.pt"), load(ref / "scores" / "surrogate.pt"))
    for name in ("influence", "effort"):
        assert torch.equal(load(scores / f"{name}.pt"), load(ref / "scores" / f"{name}.pt")), name
    assert load(out / "sel" / "games_6.pt") == load(ref / "sel" / "games_6.pt")
    print(f"prune kill points survived: {points}")


# ------------------------------------------------------------------------------------------
# fine-tuning → generation → grounding
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fewshot(data_dir, base_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("fewshot")
    from dealrec.core.files import save_tensor

    save_tensor(d / "sel.pt", [0, 2, 4, 6, 8, 10, 12, 14])
    ok(spawn("gen_fewshot.py", ["--data_dir", str(data_dir), "--data_name", "games", "--n_sample", "8",
                              "--selected", str(d / "sel.pt"), "--out_dir", str(d), "--cutoff_len", "96",
                              "--max_test_users", "3", "--base_model", base_model]))
    return d


def ft_args(fs: Path, base_model: str, out: Path) -> list[str]:
    return ["--base_model", base_model, "--train_data_path", str(fs / "train" / "train-8.json"),
            "--val_data_path", str(fs / "valid" / "valid-8.json"), "--output_dir", str(out / "adapter"),
            "--batch_size", "2", "--micro_batch_size", "2", "--max_steps", "4", "--eval_steps", "2",
            "--val_set_size", "2", "--warmup_steps", "1", "--learning_rate", "3e-3", "--cutoff_len", "96",
            "--logging_steps", "1"]


def inf_args(fs: Path, base_model: str, out: Path) -> list[str]:
    return ["--base_model", base_model, "--lora_weights", str(out / "adapter"),
            "--test_data_path", str(fs / "test" / "test.json"), "--result_json_data", str(out / "r.json"),
            "--num_beams", "2", "--max_new_tokens", "6", "--batch_size", "1", "--cutoff_len", "96"]


def ev_args(data_dir: Path, base_model: str, out: Path) -> list[str]:
    return ["--result_file", str(out / "r.json"), "--data_dir", str(data_dir), "--data_name", "games",
            "--base_model", base_model, "--max_items", "12", "--batch_size", "4"]


def test_finetune_generate_ground_killed(data_dir, base_model, fewshot, tmp_path, run):
    from safetensors.torch import load_file

    ref, out = tmp_path / "ref", tmp_path / "out"
    env_ref = base_env(DEALREC_CACHE=str(tmp_path / "cache_ref"))  # item embeddings: computed in both runs
    env = {"DEALREC_CACHE": str(tmp_path / "cache")}
    ok(run("finetune.py", ft_args(fewshot, base_model, ref), env=env_ref))
    ok(run("inference.py", inf_args(fewshot, base_model, ref), env=env_ref))
    ok(run("evaluate.py", ev_args(data_dir, base_model, ref), env=env_ref))

    # LoRA: 4 optimiser steps, a checkpoint after step 2; killed after step 1 or 2 (the rerun starts
    # again) or 3 (the rerun resumes from checkpoint-2)
    point = kill_point("finetune", 1, 3)
    killed(run("finetune.py", ft_args(fewshot, base_model, out), env=base_env(**env, DEALREC_FAULT_AFTER=point)),
           point)
    assert not (out / "adapter" / "finetune_manifest.json").exists()
    assert not (out / "adapter" / "adapter_config.json").exists()  # a folder without it is "not finished"
    no_temporaries(out)
    proc = run("finetune.py", ft_args(fewshot, base_model, out), env=base_env(**env))
    ok(proc)
    assert "stale lock of" in proc.stderr
    assert ("resuming the interrupted run from" in proc.stderr) == point.endswith(":3"), proc.stderr[-2000:]
    a, b = load_file(out / "adapter" / "adapter_model.safetensors"), load_file(ref / "adapter" / "adapter_model.safetensors")
    same_state(a, b)
    points = [point]

    # generation: 3 test users, one per batch; killed after 1 or 2 answers, then resumed
    point = kill_point("generate", 1, 2)
    killed(run("inference.py", inf_args(fewshot, base_model, out), env=base_env(**env, DEALREC_FAULT_AFTER=point)),
           point)
    assert not (out / "r.json").exists() and (out / "r.json.partial-rank0.jsonl").is_file()
    n_done = int(point.split(":")[1])
    proc = run("inference.py", inf_args(fewshot, base_model, out), env=base_env(**env))
    ok(proc)
    assert f"3 test examples: {n_done} done before, {3 - n_done} to generate" in proc.stderr, proc.stderr[-2000:]
    assert not list(out.glob("r.json.partial*"))
    assert json.loads((out / "r.json").read_text()) == json.loads((ref / "r.json").read_text())
    points.append(point)

    # grounding: item titles (12 + targets: one batch of the tree layout) then the 3 generations (one
    # more); killed in between or before the metrics are written
    point = kill_point("ground", 1, 2)
    killed(run("evaluate.py", ev_args(data_dir, base_model, out), env=base_env(**env, DEALREC_FAULT_AFTER=point)),
           point)
    assert not (out / "r.metrics.json").exists()
    no_temporaries(out)
    ok(run("evaluate.py", ev_args(data_dir, base_model, out), env=base_env(**env)))
    m, m_ref = (json.loads((d / "r.metrics.json").read_text()) for d in (out, ref))
    m.pop("result_file"), m_ref.pop("result_file")
    assert m == m_ref
    points.append(point)
    print(f"fine-tuning/generation/grounding kill points survived: {points}")


# ------------------------------------------------------------------------------------------
# the study (bench/reproduce.py): killed inside a run's fine-tuning, then after a finished run
# ------------------------------------------------------------------------------------------


def study_args(data_dir: Path, base_model: str, out: Path) -> list[str]:
    return ["--data_dir", str(data_dir), "--out_dir", str(out), "--n", "6", "--strategies", "random",
            "--seeds", "0", "--pool_users", str(N_USERS), "--test_users", "2", "--cutoff_len", "96",
            "--max_steps", "2", "--max_new_tokens", "4", "--max_items", "12", "--sasrec_epochs", "1",
            "--base_model", base_model, "--log_file", str(out.parent / f"{out.name}.log")]


def study_rows(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())
    drop = {"finetune", "generate", "ground", "seconds"}  # wall-clock times differ between runs
    return {k: [{f: v for f, v in row.items() if f not in drop} for row in res[k]] for k in ("llm", "sasrec")}


def test_study_killed_and_resumed(data_dir, base_model, tmp_path, run):
    """One run (2 LoRA steps): killed inside its fine-tuning, after the selection and the SASRec
    signal of the run were written; the rerun keeps those and redoes the rest."""
    ref, out = tmp_path / "ref", tmp_path / "out"
    ok(run("reproduce.py", study_args(data_dir, base_model, ref), env=base_env(DEALREC_CACHE=str(tmp_path / "c1"))))
    env = {"DEALREC_CACHE": str(tmp_path / "c2")}
    point = kill_point("finetune", 1, 2)
    killed(run("reproduce.py", study_args(data_dir, base_model, out), env=base_env(**env, DEALREC_FAULT_AFTER=point)),
           point)
    assert not (out / "REPORT.md").exists() and not (out / "results.json").exists()
    assert not (out / "runs" / "random_s0" / "adapter" / "adapter_config.json").exists()
    no_temporaries(out)
    kept = [out / "records" / "selection" / "random_s0.json", out / "records" / "sasrec" / "random_s0.json"]
    stamps = {f: f.stat().st_mtime_ns for f in kept}
    proc = run("reproduce.py", study_args(data_dir, base_model, out), env=base_env(**env))
    ok(proc)
    assert "stale lock of" in proc.stderr  # the killed run's lock on its run folder
    assert {f: f.stat().st_mtime_ns for f in kept} == stamps  # finished pieces reused, not redone
    assert study_rows(out) == study_rows(ref)
    assert (out / "REPORT.md").is_file()
    print(f"study kill point survived: {point}")
