"""The study's TIGER signal: the full preset's plan, and a tiny study with ``--signals tiger``."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from dealrec.config import get
from dealrec.core.files import read_json
from dealrec.core.logs import logging_restored
from dealrec.study.config import StudyConfig
from dealrec.study.paired import metrics_from_ranks
from dealrec.study.report import PAPER_TIGER, REFERENCE
from dealrec.study.runner import Study

REPO = Path(__file__).resolve().parents[2]
METRICS = ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20")
# A TIGER small enough for one CPU thread: 2 levels of 16 codes, a 1+1-layer T5 of width 32, 2 epochs.
TINY_TIGER = ["--tiger.quantizer.levels", "2", "--tiger.quantizer.codebook_size", "16", "--tiger.model.d_model", "32",
              "--tiger.model.d_ff", "64", "--tiger.model.num_heads", "2", "--tiger.model.d_kv", "16",
              "--tiger.model.num_layers", "1", "--tiger.model.num_decoder_layers", "1", "--tiger.train.max_epochs", "2",
              "--tiger.train.batch_size", "16", "--tiger.ks", "10,20", "--tiger.num_beams", "20",
              "--tiger.progress", "false"]


def _load_cli():
    spec = importlib.util.spec_from_file_location("reproduce_cli_tiger", REPO / "bench" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_full_preset_plans_tiger():
    """The full preset: TIGER with 10 seeds beside the LLM's 3 and SASRec's 5; without it in
    ``signals`` no TIGER run (nor its seeds' selections) is planned."""
    cfg = StudyConfig.from_preset("full")
    cfg.validate()
    assert cfg.signals == ("llm", "sasrec", "tiger") and cfg.signal_seeds["tiger"] == tuple(range(10))
    assert cfg.all_seeds == tuple(range(10)) and cfg.reference_row_seeds == (0,)
    run = cfg.tiger_config(*(Path(f"/r/{i}") for i in range(5)), seed=7)
    assert (run.seed, run.gpu, run.data_name, run.max_test_users, run.output_dir) == (7, "cpu", "games", None, "/r/3")
    without = StudyConfig.from_preset("full", signals=("llm", "sasrec"))
    assert without.planned_signals == ("llm", "sasrec") and without.all_seeds == without.sasrec_seeds
    assert StudyConfig().signals == ("llm", "sasrec") and StudyConfig().tiger_seeds is None
    assert StudyConfig.flat(seeds=(4, 5)).signal_seeds["tiger"] == (4, 5)
    assert StudyConfig.flat(base_model="m").tiger.base_model == "m"
    assert StudyConfig.flat(device="cuda:1").tiger_config(*(Path("x"),) * 5, seed=0).gpu == "1"
    with pytest.raises(ValueError, match="--tiger_seeds"):
        StudyConfig.flat(tiger_seeds=(1, 1)).validate()
    with pytest.raises(ValueError, match="--tiger.ks"):
        StudyConfig.flat(**{"tiger.ks": (5, 10), "tiger.num_beams": 10}).validate()
    cli = _load_cli()
    for flag in ("--tiger.result_file", "--tiger.seed", "--tiger.gpu", "--tiger.max_test_users"):
        with pytest.raises(SystemExit):  # set per run by the study: not an option
            cli.parse_args([flag, "1"])
    # short names shared with the TIGER section name the pruning / generation settings
    cfg, _ = cli.parse_args(["--patience", "7", "--progress", "false", "--tiger.train.patience", "2"])
    assert (get(cfg, "prune.surrogate.train.patience"), cfg.generate.progress, cfg.tiger.train.patience) == (7, False, 2)


@pytest.mark.skipif(not (REPO / "data" / "games").is_dir(), reason="data/games not linked")
def test_full_preset_counts_and_committed_records():
    """6 strategies x (3 LLM + 5 SASRec + 10 TIGER seeds) + the SASRec and TIGER reference rows; the
    committed records hold every LLM and SASRec run, so only TIGER runs are pending: exactly those
    without a record file yet."""
    cli = _load_cli()
    study = Study(cli.parse_args(["--preset", "full"])[0])
    planned = study.planned()
    counts = {s: sum(1 for r in planned if r[0] == s) for s in ("llm", "sasrec", "tiger")}
    assert counts == {"llm": 18, "sasrec": 31, "tiger": 61}
    assert ("tiger", REFERENCE, 0) in planned and ("llm", REFERENCE, 0) not in planned
    if (REPO / "records" / "study" / "full" / "llm").is_dir():
        assert study.pending(("llm", "sasrec")) == []
        tiger = REPO / "records" / "study" / "full" / "tiger"
        recorded = {f.stem for f in tiger.glob("*.json") if not f.name.endswith(".hits.json")} if tiger.is_dir() else set()
        assert study.pending() == [r for r in planned if r[0] == "tiger"
                                   and f"{r[1].replace(' ', '-')}_s{r[2]}" not in recorded]


@pytest.mark.slow
def test_tiny_study_tiger_signal(tiny_dataset, games, one_thread, tmp_path):
    """dealrec and random x 2 TIGER seeds on 60 Games users, ``--signals tiger``: per-user records
    whose means are the runs' metrics, the TIGER table with the paper's rows, the paired table; the
    LLM and SASRec runs listed as pending; a rerun from the records alone recomputes nothing."""
    n_users = 60
    ds = tiny_dataset("games", games.train[:n_users], games.valid[:n_users], games.test[:n_users], games.titles,
                      dicts=False)
    out, records = tmp_path / "study", tmp_path / "records"
    args = ["--data_dir", str(ds.data_dir), "--out_dir", str(out), "--record_dir", str(records), "--n", "8",
            "--strategies", "dealrec,random", "--seeds", "0", "--tiger_seeds", "0,1", "--signals", "tiger",
            "--pool_users", "40", "--surrogate_epochs", "2", "--recursion_depth", "10", "--cutoff_len", "96",
            *TINY_TIGER, "--log_file", str(tmp_path / "study.log")]
    cli = _load_cli()
    with logging_restored():
        assert cli.main(args) == 0
        results = read_json(out / "results.json")
        report = (out / "REPORT.md").read_text()
        assert [(r["strategy"], r["seed"]) for r in results["tiger"]] == [
            ("dealrec", 0), ("dealrec", 1), ("random", 0), ("random", 1), (REFERENCE, 0)]
        assert results["llm"] == results["sasrec"] == []
        assert {sig for sig, _, _ in results["pending"]} == {"llm", "sasrec"}
        test_users = [u for u in range(n_users) if games.test[u]]
        assert read_json(records / "users" / "tiger.json")["users"] == test_users
        for r in results["tiger"]:
            name = f"{r['strategy'].replace(' ', '-')}_s{r['seed']}"
            rec = read_json(records / "tiger" / f"{name}.json")
            ranks = read_json(records / "tiger" / f"{name}.hits.json")["hit_ranks"]
            assert len(ranks) == len(test_users) == r["n_users"] and all(-1 <= x < 20 for u in ranks for x in u)
            assert rec["metrics"]["ks"] == [10, 20] and r["train_seconds"] >= 0 and r["decode_seconds"] >= 0
            for m in METRICS:
                name_m, k = m.split("@")
                assert np.nanmean(metrics_from_ranks(ranks, int(k))[name_m]) == pytest.approx(r[m], abs=1e-12)
                assert rec[m] == r[m] and 0.0 <= r[m] <= 1.0
        # the report: TIGER's table with the paper's rows, its paired rows, its stage times and runs
        paper = " | ".join(f"{v:.4f}" for v in PAPER_TIGER["games"]["DEALRec"])
        assert "## TIGER trained on the selection (third signal)" in report and f"| paper: DEALRec | – | {paper} |" in report
        assert "| dealrec | 2 | " in report and "### TIGER on the selection" in report
        assert "TIGER on selection (train + decode)" in report and "TIGER Recall@10" in report
        assert "TIGER dealrec seeds [0]" not in report and "LLM dealrec seeds [0]" in report  # pending: LLM, SASRec
        paired = results["paired"]["tiger"]
        assert set(paired) == {"dealrec", REFERENCE}
        for s, by_metric in paired.items():
            for metric, r in by_metric.items():
                assert r["verdict"] in report and r["seeds"] == (2 if s == "dealrec" else 1)
                means = {row["seed"]: row[metric] for row in results["tiger"] if row["strategy"] == s}
                base = {row["seed"]: row[metric] for row in results["tiger"] if row["strategy"] == "random"}
                seeds = sorted(set(means) & set(base))
                assert r["seed_means"] == pytest.approx([means[x] - base[x] for x in seeds], abs=1e-12)
        assert "| dealrec | NDCG@20 | 2 |" in report and "Power (TIGER signal)" in report
        assert Study(cli.parse_args(args)[0]).pending() == []

        # the same command without <out>: every run comes from the records, nothing is recomputed
        first = {p: p.stat().st_mtime_ns for p in records.rglob("*") if p.is_file()}
        shutil.rmtree(out)
        assert cli.main(args) == 0
        assert not (out / "scores").exists() and not (out / "runs").exists()
        assert {p: p.stat().st_mtime_ns for p in records.rglob("*") if p.is_file()} == first
        again = read_json(out / "results.json")
        assert again["tiger"] == results["tiger"] and again["paired"]["tiger"] == results["paired"]["tiger"]
        # a changed TIGER setting makes exactly the TIGER runs stale
        stale = Study(cli.parse_args([*args, "--tiger.train.max_epochs", "3"])[0]).pending(("llm", "sasrec", "tiger"))
        assert [r for r in stale if r[0] == "tiger"] == [("tiger", r["strategy"], r["seed"]) for r in results["tiger"]]
        assert len([r for r in stale if r[0] != "tiger"]) == len(results["pending"])
