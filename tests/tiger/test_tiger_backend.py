"""TIGER end to end on a tiny data set: few-shot files in, model folder, ranking and metrics out."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dealrec.core.files import read_json
from dealrec.data.dataset import load_dataset
from dealrec.data.fewshot import write_fewshot
from dealrec.tiger import cli
from dealrec.tiger.cli import MANIFEST, RESUME

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--levels", "2", "--codebook_size", "4", "--d_model", "32", "--d_ff", "64", "--num_heads", "2",
         "--d_kv", "16", "--num_layers", "1", "--num_decoder_layers", "1", "--max_epochs", "6", "--patience", "3",
         "--batch_size", "2", "--progress", "false"]


def _setup(tiny_dataset, tmp_path):
    ds = tiny_dataset()
    data = load_dataset(ds.data_dir, ds.name)
    paths = write_fewshot(data, [0, 3, 4, 2], tmp_path / "fewshot", None, n_label=4, progress=False)
    emb = torch.randn(data.n_items, 16, generator=torch.Generator().manual_seed(0))
    emb[2] = emb[1]  # items 1 and 2 share a title
    torch.save(emb, tmp_path / "emb.pt")
    args = ["--data_dir", str(ds.data_dir), "--data_name", ds.name, "--embeddings", str(tmp_path / "emb.pt"),
            "--train_data_path", str(paths["train"]), "--val_data_path", str(paths["valid"]),
            "--test_data_path", str(paths["test"]), "--output_dir", str(tmp_path / "model"),
            "--result_file", str(tmp_path / "results" / "tiger_0_4.json"), "--ks", "5,10", "--num_beams", "10",
            *SMALL]
    return data, args


def test_backend_trains_decodes_and_writes_metrics(tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEALREC_CACHE", str(tmp_path / "cache"))
    data, args = _setup(tiny_dataset, tmp_path)
    assert cli.main(args) == 0
    model_dir, result = tmp_path / "model", tmp_path / "results" / "tiger_0_4.json"
    for f in (MANIFEST, "config.json", "model.safetensors", "semantic_ids.pt"):
        assert (model_dir / f).is_file(), f
    assert not (model_dir / RESUME).exists()  # the training state goes once the model is saved
    manifest = read_json(model_dir / MANIFEST)
    # the selection's training sequences [0 1 2 3], [3 4 5 6 7], [7 1], [5]: every item after the first
    assert manifest["n_train"] == 3 + 4 + 1 and manifest["n_valid"] == 3  # users 0, 2, 4 have a validation item
    assert 1 <= manifest["train"]["epochs"] <= 6
    records = read_json(result)
    assert [r["user"] for r in records] == data.test_users == [0, 1, 3, 4]
    for r in records:
        assert r["target_ids"] == data.test[r["user"]]
        assert len(r["ranked"]) == len(set(r["ranked"])) == data.n_items  # every item fits in 10 beams
        assert r["scores"] == sorted(r["scores"], reverse=True)
    metrics = read_json(result.with_name("tiger_0_4.metrics.json"))
    assert metrics["ks"] == [5, 10] and metrics["n_users"] == 4 and metrics["backend"] == "tiger"
    assert metrics["Recall"][1] == pytest.approx(1.0)  # 8 items, all ranked: every target is in the top 10
    assert metrics["short_lists"] == 4  # fewer than 10 items: padded, counted
    hits = read_json(result.with_name("tiger_0_4.hits.json"))
    assert hits["users"] == [0, 1, 3, 4] and len(hits["hit_ranks"][2]) == 2  # user 3 has two test items
    assert read_json(result.with_name(result.name + ".json"))["data_name"] == data.name
    assert list((tmp_path / "cache" / "tiger" / "semantic_ids").glob("tiny-*.pt.json"))

    capsys.readouterr()
    assert cli.main(args) == 0  # same settings and selection: the model folder is reused
    assert "TIGER model: reused" in capsys.readouterr().err
    assert read_json(result) == records


def test_bad_inputs_stop_before_training(tiny_dataset, tmp_path, capsys):
    data, args = _setup(tiny_dataset, tmp_path)
    assert cli.main([*args, "--num_beams", "5"]) == 2  # below the largest K (10)
    assert "--num_beams 5" in capsys.readouterr().err
    wrong = tmp_path / "wrong.json"
    wrong.write_text('[{"user": 99, "target_ids": [1]}]')
    assert cli.main([*args, "--train_data_path", str(wrong)]) == 2
    assert "no valid 'user'" in capsys.readouterr().err
    assert not (tmp_path / "model" / MANIFEST).exists()


@pytest.mark.slow
def test_finetune_sh_backend_tiger(tiny_dataset, tmp_path):
    """``finetune.sh <data> --backend tiger``: gen_fewshot, then tiger.py with the base LLM's title
    embeddings (a tiny random LLaMA folder), into the BIGRec file layout."""
    from dealrec.llm.tiny_models import make_llama

    name = f"tigertest{os.getpid()}"
    ds = tiny_dataset(name=name)
    base = make_llama(tmp_path / "llama")
    sel = tmp_path / "sel.pt"
    torch.save([0, 3, 4, 2], sel)
    here = REPO / "code" / "finetune"
    env = {**os.environ, "DATA_DIR": str(ds.data_dir), "SELECTED": str(sel), "N_FEWSHOT": "4",
           "BASE_MODEL": str(base), "LOG_DIR": str(tmp_path / "logs"), "DEALREC_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHON": sys.executable}
    try:
        res = subprocess.run(["bash", str(here / "finetune.sh"), name, "--backend", "tiger", "--ks", "5",
                              "--num_beams", "8", *SMALL], env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert (here / "model" / name / "tiger_0_4" / MANIFEST).is_file()
        metrics = read_json(here / "results" / name / "tiger_0_4.metrics.json")
        assert metrics["n_users"] == 4 and metrics["ks"] == [5]
        assert (tmp_path / "logs" / "tiger_0_4.log").is_file()
        assert list((tmp_path / "cache" / "embeddings").glob(f"{name}-*.pt"))  # grounding's title embeddings
        bad = subprocess.run(["bash", str(here / "finetune.sh"), name, "--backend", "sasrec"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and "unknown --backend 'sasrec'" in bad.stderr
    finally:
        for sub in ("data", "model", "results"):
            shutil.rmtree(here / sub / name, ignore_errors=True)
        for sub in ("model", "results"):  # left only when this test made them
            with contextlib.suppress(OSError):
                (here / sub).rmdir()


def test_training_examples_from_the_selection(tiny_dataset, tmp_path):
    """prefixes: every item of each selected training sequence given the items before it; last: one
    example per selected user (BIGRec's); validation: train items -> first validation item."""
    data, args = _setup(tiny_dataset, tmp_path)
    flags = dict(zip(args[::2], args[1::2]))
    cfg = cli.TigerConfig(train_data_path=flags["--train_data_path"], val_data_path=flags["--val_data_path"],
                          test_data_path=flags["--test_data_path"], output_dir="m", result_file="r.json")
    ex = cli.load_examples(cfg, data)
    assert ex["train"] == [([0], 1), ([0, 1], 2), ([0, 1, 2], 3), ([3], 4), ([3, 4], 5), ([3, 4, 5], 6),
                           ([3, 4, 5, 6], 7), ([7], 1)]
    assert ex["valid"] == [([0, 1, 2, 3], 4), ([7, 1], 0), ([5], 6)]
    assert ex["users"] == [0, 1, 3, 4] and ex["histories"][0] == [0, 1, 2, 3, 4] and ex["histories"][1] == []
    cfg.train_examples = "last"
    assert cli.load_examples(cfg, data)["train"] == [([0, 1, 2], 3), ([3, 4, 5, 6], 7), ([7], 1), ([], 5)]
    cfg.train_examples = "all"
    with pytest.raises(ValueError, match="--train_examples"):
        cfg.check()


@pytest.mark.slow
def test_a_run_killed_in_training_resumes_to_the_same_model(tiny_dataset, tmp_path):
    """``tiger.py`` killed (SIGKILL) after its 2nd training epoch leaves ``train_state.pt`` and no
    manifest; the same command then resumes and saves the weights of an uninterrupted run."""
    data, args = _setup(tiny_dataset, tmp_path)
    ref_args = [a.replace(str(tmp_path / "model"), str(tmp_path / "ref")) for a in args]
    ref_args = [a.replace("tiger_0_4.json", "ref_0_4.json") for a in ref_args]
    code = "import sys; from dealrec.tiger import cli; sys.exit(cli.main(sys.argv[1:]))"
    env = {**os.environ, "DEALREC_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}

    def tiger(argv, **extra):
        return subprocess.run([sys.executable, "-c", code, *argv], env={**env, **extra}, capture_output=True,
                              text=True, timeout=300)

    assert tiger(ref_args).returncode == 0
    killed = tiger(args, DEALREC_FAULT_AFTER="tiger:2")
    assert killed.returncode == -9 and "SIGKILL after tiger step 2" in killed.stderr, killed.stderr[-2000:]
    model_dir = tmp_path / "model"
    assert (model_dir / RESUME).is_file() and not (model_dir / MANIFEST).exists()
    resumed = tiger(args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "TIGER: resuming at epoch 3" in resumed.stderr
    assert not (model_dir / RESUME).exists()
    from safetensors.torch import load_file

    ref, got = load_file(tmp_path / "ref" / "model.safetensors"), load_file(model_dir / "model.safetensors")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    ref_train = read_json(tmp_path / "ref" / MANIFEST)["train"]
    got_train = read_json(model_dir / MANIFEST)["train"]
    assert {k: v for k, v in got_train.items() if k != "seconds"} == {k: v for k, v in ref_train.items() if k != "seconds"}
