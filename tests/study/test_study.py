"""The reproduction study (bench/reproduce.py): table code by hand, a tiny end-to-end study."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

from dealrec.core.files import read_json
from dealrec.core.logs import logging_restored
from dealrec.presets import STUDY_PRESETS as PRESETS
from dealrec.study.config import StudyConfig
from dealrec.study.paired import metrics_from_ranks
from dealrec.study.report import (
    PAPER_TABLE2,
    PAPER_TIGER,
    REFERENCE,
    markdown_table,
    mean_std,
    paired_results,
    paired_table,
    report_metrics,
    summarize,
)
from dealrec.study.runner import Study
from dealrec.study.signals import metrics_at

REPO = Path(__file__).resolve().parents[2]


def test_mean_std_by_hand():
    mu, sd = mean_std([0.1, 0.2, 0.6])
    assert mu == pytest.approx(0.3)
    # sample std: sqrt(((-.2)^2 + (-.1)^2 + .3^2) / 2) = sqrt(0.07)
    assert sd == pytest.approx(0.07 ** 0.5)
    assert sd == pytest.approx(statistics.stdev([0.1, 0.2, 0.6]))
    assert mean_std([0.25]) == (0.25, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_summarize_and_table():
    rows = [
        {"strategy": "dealrec", "seed": 0, "Recall@10": 0.2, "Recall@20": 0.4, "NDCG@10": 0.1, "NDCG@20": 0.2},
        {"strategy": "random", "seed": 0, "Recall@10": 0.1, "Recall@20": 0.1, "NDCG@10": 0.0, "NDCG@20": 0.3},
        {"strategy": "dealrec", "seed": 1, "Recall@10": 0.4, "Recall@20": 0.4, "NDCG@10": 0.3, "NDCG@20": 0.2},
    ]
    s = summarize(rows)
    assert list(s) == ["dealrec", "random"]
    assert s["dealrec"]["Recall@10"] == pytest.approx((0.3, statistics.stdev([0.2, 0.4])))
    assert s["dealrec"]["Recall@20"] == pytest.approx((0.4, 0.0))
    assert s["random"]["NDCG@20"] == (0.3, 0.0)
    table = markdown_table(s, {"dealrec": 2, "random": 1}, {"DEALRec": (0.0181, 0.0276, 0.0115, 0.0142)})
    lines = table.splitlines()
    assert lines[0] == "| strategy | seeds | Recall@10 | Recall@20 | NDCG@10 | NDCG@20 |"
    assert lines[2].startswith("| dealrec | 2 | **0.3000 ± 0.1414** | **0.4000 ± 0.0000** | **0.2000 ± 0.1414** | 0.2000 ± 0.0000 |")
    assert lines[3] == "| random | 1 | 0.1000 ± 0.0000 | 0.1000 ± 0.0000 | 0.0000 ± 0.0000 | **0.3000 ± 0.0000** |"
    assert lines[4] == "| paper: DEALRec | – | 0.0181 | 0.0276 | 0.0115 | 0.0142 |"


def test_the_report_follows_the_papers_cutoffs_per_data_set():
    """Table 2 reports Games at @10/@20 and MicroLens-50K at @20/@50: the report's columns and the
    paper's rows beside them follow; a run record holds all of @10/@20/@50."""
    assert report_metrics("games") == ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20")
    assert report_metrics("microlens-50k") == ("Recall@20", "Recall@50", "NDCG@20", "NDCG@50")
    assert report_metrics("my-own-data") == report_metrics("games")
    for table in (PAPER_TABLE2, PAPER_TIGER):
        assert all(len(v) == 4 for rows in table.values() for v in rows.values())
    rows = [{"strategy": "dealrec", "seed": 0, "Recall@20": 0.2, "Recall@50": 0.3, "NDCG@20": 0.1, "NDCG@50": 0.15}]
    metrics = report_metrics("microlens-50k")
    lines = markdown_table(summarize(rows, metrics), {"dealrec": 1}, PAPER_TABLE2["microlens-50k"], metrics).splitlines()
    assert lines[0] == "| strategy | seeds | Recall@20 | Recall@50 | NDCG@20 | NDCG@50 |"
    assert lines[3] == "| paper: DEALRec | – | 0.0124 | 0.0160 | 0.0055 | 0.0064 |"
    record = metrics_at({"Recall": [0.1, 0.2, 0.3, 0.4], "NDCG": [0.01, 0.02, 0.03, 0.04]}, [5, 10, 20, 50])
    assert record == {"Recall@10": 0.2, "Recall@20": 0.3, "Recall@50": 0.4, "NDCG@10": 0.02, "NDCG@20": 0.03,
                      "NDCG@50": 0.04}
    with pytest.raises(ValueError, match=r"--tiger.ks must include the report's cutoffs \[20, 50\] for microlens-50k"):
        StudyConfig.from_preset("microlens", **{"tiger.ks": (10, 20)}).validate()


def test_config_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="--strategies: unknown"):
        StudyConfig(strategies=("dealrec", "nope")).validate()
    with pytest.raises(ValueError, match="--seeds"):
        StudyConfig(seeds=()).validate()
    with pytest.raises(ValueError, match="--preset"):
        StudyConfig.from_preset("tpu")
    with pytest.raises(ValueError, match="--lamda"):
        StudyConfig.flat(lamda=-1).validate()
    cfg = StudyConfig.from_preset("cpu", n=64)
    assert cfg.n == 64 and cfg.strategies == PRESETS["cpu"]["strategies"] and cfg.num_beams == 1
    assert StudyConfig.from_preset("gpu").n == 1024 and StudyConfig.from_preset("gpu").test_users is None


def test_paired_results_by_hand():
    """Two seeds, 4 users, one target each: the per-seed differences of Recall@20 are exact."""
    per_user = {
        "random": {0: [[-1], [3], [-1], [-1]], 1: [[-1], [-1], [-1], [0]]},
        "dealrec": {0: [[5], [3], [-1], [-1]], 1: [[-1], [-1], [25], [0]]},  # rank 25 is outside the top 20
    }
    r = paired_results(per_user, n_boot=500)
    assert list(r) == ["dealrec"] and set(r["dealrec"]) == {"Recall@20", "NDCG@20"}
    rec = r["dealrec"]["Recall@20"]
    assert rec["seed_means"] == [0.25, 0.0] and rec["mean"] == pytest.approx(0.125) and rec["seeds"] == 2
    assert rec["baseline_mean"] == pytest.approx(0.25) and rec["relative"] == pytest.approx(0.5)
    assert rec["seed_std"] == pytest.approx(statistics.stdev([0.25, 0.0]))
    assert rec["verdict"].startswith("Recall@20: dealrec ") and "random" in rec["verdict"]
    ndcg = r["dealrec"]["NDCG@20"]
    assert ndcg["seed_means"][0] == pytest.approx(1 / math.log2(7) / 4)
    table = paired_table(r).splitlines()
    assert table[0].startswith("| strategy | metric | seeds | random | difference | 95 % interval | bootstrap | "
                               "given the seeds |")
    assert table[2].startswith("| dealrec | Recall@20 | 2 | 0.2500 | +0.1250 | ")
    assert "| +50% | 0.1768 | 0.2500, 0.0000 | +0.2500, +0.0000 |" in table[2]
    # d = [[1, 0, 0, 0], [0, 0, 0, 0]]: every mean square is 0.125, so both components truncate to
    # 0 and Var(mean) = MS_resid / (S·U) = 0.125 / 8 with 3 degrees of freedom
    assert rec["interval"] == "variance components" and rec["se"] == pytest.approx(0.125) and rec["df"] == 3
    t3 = 3.182446305284263
    assert (rec["low"], rec["high"]) == (pytest.approx(0.125 - t3 * 0.125), pytest.approx(0.125 + t3 * 0.125))
    assert rec["low_boot"] <= rec["low_users"] <= rec["high_users"] <= rec["high_boot"]
    assert paired_results({"dealrec": per_user["dealrec"]}) == {}  # no random: nothing to pair


def _load_cli():
    spec = importlib.util.spec_from_file_location("reproduce_cli", REPO / "bench" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _report_body(text: str) -> str:
    """REPORT.md without what differs between two calls (when and where it was written, wall clock)."""
    return "\n".join(line for line in text.splitlines()
                     if not line.startswith("Written ") and not line.startswith("Pruning (once, cached)"))


@pytest.mark.slow
def test_tiny_study_end_to_end(tiny_dataset, games, one_thread, tmp_path):
    """3 strategies (dealrec-stable among them) x 1 LLM seed and 2 SASRec seeds on 60 Games users:
    a well-formed report and chart, per-user records whose means are the runs' metrics, the paired
    table; then, with every heavy cache deleted, a rerun that recomputes nothing from the records."""
    n_users = 60
    ds = tiny_dataset("games", games.train[:n_users], games.valid[:n_users], games.test[:n_users], games.titles,
                      dicts=False)
    out, records = tmp_path / "study", tmp_path / "records"
    args = ["--data_dir", str(ds.data_dir), "--out_dir", str(out), "--record_dir", str(records), "--n", "8",
            "--strategies", "dealrec,dealrec-stable,random", "--seeds", "0", "--sasrec_seeds", "0,1",
            "--pool_users", "40", "--test_users", "4", "--surrogate_epochs", "2", "--recursion_depth", "10",
            "--cutoff_len", "96", "--max_steps", "1", "--max_new_tokens", "4", "--max_items", "50",
            "--sasrec_epochs", "2", "--log_file", str(tmp_path / "study.log")]
    cli = _load_cli()
    with logging_restored():
        assert cli.main(args) == 0
        report = (out / "REPORT.md").read_text()
        png = (out / "report.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        results = read_json(out / "results.json")
        assert [r["strategy"] for r in results["llm"]] == ["dealrec", "dealrec-stable", "random"]
        assert [(r["strategy"], r["seed"]) for r in results["sasrec"]] == [
            ("dealrec", 0), ("dealrec", 1), ("dealrec-stable", 0), ("dealrec-stable", 1), ("random", 0), ("random", 1),
            ("all candidates", 0), ("all candidates", 1)]
        assert all(r["n_users"] == 4 for r in results["llm"])
        for r in results["llm"] + results["sasrec"]:
            assert all(0.0 <= r[m] <= 1.0 for m in ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20"))
        # the report's table rows carry the per-run numbers (one LLM seed: std 0)
        for r in results["llm"]:
            assert f"| {r['strategy']} | 1 | " in report
            assert f"{r['Recall@20']:.4f} ± 0.0000" in report
        assert "| random | 2 | " in report  # the SASRec table: two seeds
        assert "paper: DEALRec | – | 0.0181 | 0.0276 | 0.0115 | 0.0142" in report
        assert "## Configuration" in report and json.loads(report.split("```json")[1].split("```")[0])["n"] == 8
        # the same test users for every run
        tests = {json.dumps([r["user"] for r in read_json(out / "runs" / f"{s}_s0" / "result.json")])
                 for s in ("dealrec", "dealrec-stable", "random")}
        assert len(tests) == 1
        llm_users = read_json(records / "users" / "llm.json")["users"]
        assert json.dumps(llm_users) in tests and len(llm_users) == 4
        # selections: n distinct candidates (first 40 users), recorded
        for s in ("dealrec", "dealrec-stable", "random"):
            for seed in (0, 1):
                sel = read_json(records / "selection" / f"{s}_s{seed}.json")["indices"]
                assert len(sel) == len(set(sel)) == 8 and all(0 <= u < 40 for u in sel)
        # per-user records: every run's per-user metrics average to its metrics
        sas_users = read_json(records / "users" / "sasrec.json")["users"]
        assert len(sas_users) == results["sasrec"][0]["n_test_users"] == sum(1 for t in games.test[:n_users] if t)
        for signal, n in (("llm", 4), ("sasrec", len(sas_users))):
            for r in results[signal]:
                name = f"{r['strategy'].replace(' ', '-')}_s{r['seed']}"
                rec = read_json(records / signal / f"{name}.json")
                ranks = read_json(records / signal / f"{name}.hits.json")["hit_ranks"]
                assert len(ranks) == n and all(-1 <= x < 50 for u in ranks for x in u)
                if signal == "llm":  # what the LoRA run did beyond its key
                    assert rec["finetune_ran"]["loss_positions_ran"] == "labelled"
                    assert rec["finetune_ran"]["global_step"] >= 1
                for m in ("Recall", "NDCG"):
                    for k in (10, 20):
                        assert np.nanmean(metrics_from_ranks(ranks, k)[m]) == pytest.approx(r[f"{m}@{k}"], abs=1e-12)
                        assert rec[f"{m}@{k}"] == r[f"{m}@{k}"]
        # the paired table, both signals, each strategy vs random
        paired = results["paired"]
        assert paired["baseline"] == "random" and paired["metrics"] == ["Recall@20", "NDCG@20"]
        assert set(paired["llm"]) == {"dealrec", "dealrec-stable"}
        assert set(paired["sasrec"]) == {"dealrec", "dealrec-stable", "all candidates"}
        for signal, seeds in (("llm", 1), ("sasrec", 2)):
            for s, by_metric in paired[signal].items():
                for metric, r in by_metric.items():
                    assert r["seeds"] == seeds and len(r["seed_means"]) == seeds
                    assert r["low"] <= r["mean"] <= r["high"] and r["verdict"] in report
                    means = {row["seed"]: row[metric] for row in results[signal] if row["strategy"] == s}
                    base = {row["seed"]: row[metric] for row in results[signal] if row["strategy"] == "random"}
                    assert r["seed_means"] == pytest.approx([means[x] - base[x] for x in sorted(base)], abs=1e-12)
        assert "## Paired differences to random" in report and "| dealrec-stable | NDCG@20 | 2 |" in report

        # the same command on a fresh machine: every heavy cache (scores, adapters, generations) gone
        first = {p: p.stat().st_mtime_ns for p in records.rglob("*") if p.is_file()}
        shutil.rmtree(out)
        assert cli.main(args) == 0
        assert not (out / "scores").exists() and not (out / "runs").exists()  # nothing was recomputed
        assert {p: p.stat().st_mtime_ns for p in records.rglob("*") if p.is_file()} == first
        again = read_json(out / "results.json")
        for part in ("llm", "sasrec", "paired", "prune_seconds"):
            assert again[part] == results[part], part
        assert _report_body((out / "REPORT.md").read_text()) == _report_body(report)
        # a report alone reads the records too
        assert cli.main([*args, "--only", "report"]) == 0
        assert {p: p.stat().st_mtime_ns for p in records.rglob("*") if p.is_file()} == first
        # a changed setting makes exactly the runs it determines stale
        assert Study(cli.parse_args(args)[0]).pending() == []
        stale = Study(cli.parse_args([*args, "--sasrec_epochs", "3"])[0]).pending()
        assert {sig for sig, _, _ in stale} == {"sasrec"} and len(stale) == 8
        stale = Study(cli.parse_args([*args, "--test_users", "3"])[0]).pending()
        assert stale == [("llm", s, 0) for s in ("dealrec", "dealrec-stable", "random")]
        stale = Study(cli.parse_args([*args, "--seeds", "0,1"])[0]).pending()
        assert stale == [("llm", s, 1) for s in ("dealrec", "dealrec-stable", "random")]
        assert Study(cli.parse_args([*args, "--seeds", "0,1", "--signals", "sasrec"])[0]).pending() == []
        assert Study(cli.parse_args([*args, "--reference_seeds", "0,7"])[0]).pending() == [("sasrec", REFERENCE, 7)]

        # a study run in parts: the report covers the recorded runs and names the missing ones
        (records / "llm" / "random_s0.json").unlink()
        (records / "sasrec" / "dealrec_s1.json").unlink()
        assert cli.main([*args, "--only", "report"]) == 0
        partial = read_json(out / "results.json")
        assert partial["pending"] == [["sasrec", "dealrec", 1], ["llm", "random", 0]]
        assert [r["strategy"] for r in partial["llm"]] == ["dealrec", "dealrec-stable"]
        assert partial["paired"]["llm"] == {} and partial["paired"]["sasrec"]["dealrec"]["Recall@20"]["seeds"] == 1
        text = (out / "REPORT.md").read_text()
        assert "## Partial report" in text and "LLM random seeds [0]" in text and "SASRec dealrec seeds [1]" in text
        assert Study(cli.parse_args(args)[0]).pending() == [("sasrec", "dealrec", 1), ("llm", "random", 0)]


def test_full_preset():
    cfg = StudyConfig.from_preset("full")
    cfg.validate()
    assert cfg.n == 1024 and cfg.pool_users is None and cfg.test_users == 2000
    assert {"dealrec", "dealrec-stable", "random", "influence", "effort", "greedy"} <= set(cfg.strategies)
    assert len(cfg.seeds) >= 3 and len(cfg.signal_seeds["sasrec"]) >= 5 and set(cfg.seeds) <= set(cfg.sasrec_seeds)
    assert cfg.record_folder == Path("records/study/full") and cfg.all_seeds == cfg.tiger_seeds
    assert cfg.reference_row_seeds == (0,) and StudyConfig.flat(sasrec_seeds=(3, 4)).reference_row_seeds == (3, 4)
    with pytest.raises(ValueError, match="--signals"):
        StudyConfig.flat(signals=("llm", "bert")).validate()
    assert StudyConfig.flat(n=8).record_folder == Path("results/games_8/records")
    assert StudyConfig.flat(n=8, record_dir="/x").record_folder == Path("/x")
    cli = _load_cli()
    cfg, _ = cli.parse_args(["--preset", "full", "--test_users", "500"])
    assert cfg.record_folder == REPO / "records" / "study" / "full" and cfg.test_users == 500
    for flag in ("--generate.result_file", "--result_file", "--finetune.output_dir", "--prune.score_dir"):
        with pytest.raises(SystemExit):  # set per run by the study: not an option
            cli.parse_args([flag, "x"])
    with pytest.raises(ValueError, match="--sasrec_seeds"):
        StudyConfig.flat(sasrec_seeds=(1, 1)).validate()


def test_given_scores_are_not_used_for_other_scoring_settings(tmp_path):
    """--prune.effort_scores holds lora_B effort: dealrec-stable (base-weight effort, expected
    negatives) must compute its own, dealrec uses the file."""
    f = tmp_path / "effort.pt"
    f.write_bytes(b"x")
    cfg = StudyConfig.flat(**{"prune.effort_scores": str(f), "prune.influence_scores": str(f)})
    assert cfg.prune_config("dealrec").effort_scores == str(f)
    stable = cfg.prune_config("dealrec-stable")
    assert stable.effort_scores is None and stable.influence_scores is None and stable.effort.target == "base"


def test_n_larger_than_candidates(tiny_dataset):
    ds = tiny_dataset("games", dicts=False)
    with pytest.raises(ValueError, match="--n 5 exceeds the 2 eligible candidates"):
        Study(StudyConfig.flat(data_dir=str(ds.data_dir), data_name="games", n=5, seeds=(0,)))


def test_dcrec_preset_plans_the_sasrec_signal_of_dcrec_scores_apart_from_full():
    """DCRec's influence behind dealrec and influence, random beside them on SASRec's 5 seeds, the
    LLM planned for dealrec only, no full-data row, and its own output and record folders."""
    cfg = StudyConfig.from_preset("dcrec")
    cfg.validate()
    full = StudyConfig.from_preset("full")
    assert (cfg.surrogate, full.surrogate) == ("DCRec", "SASRec") and cfg.summary()["surrogate"] == "DCRec"
    assert (cfg.data_name, cfg.lamda, cfg.k, cfg.n) == (full.data_name, full.lamda, full.k, full.n)
    assert cfg.out != full.out and cfg.record_folder == Path("records/study/dcrec")
    assert cfg.signal_seeds["sasrec"] == (0, 1, 2, 3, 4) and cfg.reference_row_seeds == ()
    assert cfg.signal_strategies("sasrec") == ("dealrec", "random", "influence")
    assert cfg.signal_strategies("llm") == ("dealrec",) and cfg.signals == ("sasrec",)
    if not (REPO / "data" / "games").is_dir():
        pytest.skip("data/games is absent")
    planned = Study(StudyConfig.from_preset("dcrec", data_dir=str(REPO / "data"))).planned()
    count = {s: sum(1 for sig, _, _ in planned if sig == s) for s in ("llm", "sasrec", "tiger")}
    assert count == {"llm": 3, "sasrec": 3 * 5, "tiger": 0}


def test_microlens_preset_plans_the_paper_settings_and_three_llm_and_tiger_strategies():
    """MicroLens-50K at λ 1.0, k 50: the LLM and TIGER signals for dealrec, dealrec-stable and
    random only, every strategy for SASRec."""
    cfg = StudyConfig.from_preset("microlens")
    cfg.validate()
    assert (cfg.data_name, cfg.lamda, cfg.k, cfg.n) == ("microlens-50k", 1.0, 50, 1024)
    assert cfg.record_folder == Path("records/study/microlens")
    assert cfg.signal_strategies("llm") == cfg.signal_strategies("tiger") == ("dealrec", "dealrec-stable", "random")
    assert cfg.signal_strategies("sasrec") == cfg.strategies and len(cfg.strategies) == 6
    for name in ("llm_strategies", "tiger_strategies"):
        with pytest.raises(ValueError, match=f"--{name} must be some of --strategies"):
            StudyConfig.flat(strategies=("dealrec", "random"), **{name: ("greedy",)}).validate()
    if not (REPO / "data" / "microlens-50k").is_dir():
        pytest.skip("data/microlens-50k is absent")
    planned = Study(StudyConfig.from_preset("microlens", data_dir=str(REPO / "data"))).planned()
    count = {s: sum(1 for sig, _, _ in planned if sig == s) for s in ("llm", "sasrec", "tiger")}
    assert count == {"llm": 9, "sasrec": 6 * 5 + 1, "tiger": 3 * 10 + 1}
