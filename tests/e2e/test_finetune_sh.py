"""finetune.sh's wiring: what each step is asked to read and write, per strategy and backend (the
Python steps replaced by a recorder; their own behaviour is tested elsewhere)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "code" / "finetune" / "finetune.sh"


def _run(tmp_path: Path, *args: str, **env: str) -> list[list[str]]:
    """Run finetune.sh with a PYTHON that answers `-c` snippets for real and records every script
    call instead of running it; returns the recorded command lines."""
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "python"
    stub.write_text(f"#!/bin/sh\nif [ \"$1\" = -c ]; then exec {shlex.quote(sys.executable)} \"$@\"; fi\n"
                    f"printf '%s\\n' \"$*\" >> {shlex.quote(str(calls))}\n")
    stub.chmod(0o755)
    proc = subprocess.run(["bash", str(SCRIPT), "games", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": str(stub), "LOG_DIR": str(tmp_path / "logs"),
                               "CUDA_VISIBLE_DEVICES": "", **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = calls.read_text().splitlines() if calls.exists() else []
    return [line.split() for line in lines]


def _flag(call: list[str], flag: str) -> str:
    return call[call.index(flag) + 1]


@pytest.mark.parametrize("strategy, label", [("dealrec", "64"), ("random", "64_random")])
def test_outputs_are_labelled_by_strategy(tmp_path, strategy, label):
    calls = _run(tmp_path, N_FEWSHOT="64", STRATEGY=strategy)
    gen, train, infer, evaluate = calls
    assert gen[1].endswith("gen_fewshot.py") and _flag(gen, "--strategy") == strategy
    assert _flag(train, "--train_data_path") == f"data/games/train/train-{label}.json"
    assert _flag(train, "--val_data_path") == f"data/games/valid/valid-{label}.json"
    assert _flag(train, "--output_dir") == f"model/games/0_{label}"
    assert _flag(infer, "--lora_weights") == f"model/games/0_{label}"
    assert _flag(infer, "--result_json_data") == f"results/games/0_{label}.json"
    assert _flag(evaluate, "--result_file").endswith(f"results/games/0_{label}.json")


def test_two_strategies_never_share_an_output(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _run(tmp_path / "a", STRATEGY="dealrec")
    b = _run(tmp_path / "b", STRATEGY="greedy")
    outputs = [{_flag(c, f) for c in calls for f in ("--output_dir", "--result_json_data") if f in c}
               for calls in (a, b)]
    assert outputs[0] and outputs[1] and not outputs[0] & outputs[1]


def test_tiger_backend_runs_tiger_after_the_few_shot_files(tmp_path):
    calls = _run(tmp_path, "--backend", "tiger", STRATEGY="random", N_FEWSHOT="32")
    assert [Path(c[1]).name for c in calls] == ["gen_fewshot.py", "tiger.py"]
    assert _flag(calls[1], "--output_dir") == "model/games/tiger_0_32_random"
