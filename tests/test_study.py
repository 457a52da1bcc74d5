"""The reproduction study (bench/reproduce.py): table code by hand, a tiny end-to-end study."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

from dealrec.io import logging_restored, read_json
from dealrec.study import PRESETS, Study, StudyConfig, markdown_table, mean_std, summarize

REPO = Path(__file__).resolve().parents[1]


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


def _load_cli():
    spec = importlib.util.spec_from_file_location("reproduce_cli", REPO / "bench" / "reproduce.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_tiny_study_end_to_end(tiny_dataset, games, one_thread, tmp_path):
    """2 strategies x 1 seed on 60 Games users: a well-formed report and chart, then a resumed rerun."""
    n_users = 60
    ds = tiny_dataset("games", games.train[:n_users], games.valid[:n_users], games.test[:n_users], games.titles,
                      dicts=False)
    out = tmp_path / "study"
    args = ["--data_dir", str(ds.data_dir), "--out_dir", str(out), "--n", "8", "--strategies", "dealrec,random",
            "--seeds", "0", "--pool_users", "40", "--test_users", "4", "--surrogate_epochs", "2",
            "--recursion_depth", "10", "--cutoff_len", "96", "--max_steps", "1", "--max_new_tokens", "4",
            "--max_items", "50", "--sasrec_epochs", "2", "--log_file", str(tmp_path / "study.log")]
    cli = _load_cli()
    with logging_restored():
        assert cli.main(args) == 0
        report = (out / "REPORT.md").read_text()
        png = (out / "report.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        results = read_json(out / "results.json")
        assert [r["strategy"] for r in results["llm"]] == ["dealrec", "random"]
        assert [r["strategy"] for r in results["sasrec"]] == ["dealrec", "random", "all candidates"]
        assert all(r["n_users"] == 4 for r in results["llm"])
        for r in results["llm"] + results["sasrec"]:
            assert all(0.0 <= r[m] <= 1.0 for m in ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20"))
        # the report's table rows carry the per-run numbers (one seed: std 0)
        for r in results["llm"]:
            assert f"| {r['strategy']} | 1 | " in report
            assert f"{r['Recall@20']:.4f} ± 0.0000" in report
        assert "paper: DEALRec | – | 0.0181 | 0.0276 | 0.0115 | 0.0142" in report
        assert "## Configuration" in report and json.loads(report.split("```json")[1].split("```")[0])["n"] == 8
        # the same test users for every run
        tests = {json.dumps([r["user"] for r in read_json(out / "runs" / f"{s}_s0" / "result.json")])
                 for s in ("dealrec", "random")}
        assert len(tests) == 1
        # selections: n distinct candidates (first 40 users)
        for s in ("dealrec", "random"):
            sel = read_json(out / "runs" / f"{s}_s0" / "selection.pt.json")["indices"]
            assert len(sel) == len(set(sel)) == 8 and all(0 <= u < 40 for u in sel)
        # a rerun reuses every stage: the adapters and result files are not rewritten
        stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".safetensors", ".json")
                  and "REPORT" not in p.name and p.name not in ("results.json", "config.json")}
        assert cli.main([*args, "--only", "report"]) == 0
        assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_n_larger_than_candidates(tiny_dataset):
    ds = tiny_dataset("games", dicts=False)
    with pytest.raises(ValueError, match="--n 5 exceeds the 2 eligible candidates"):
        Study(StudyConfig.flat(data_dir=str(ds.data_dir), data_name="games", n=5, seeds=(0,)))
