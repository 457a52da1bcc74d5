"""Study run records: keys, per-user files, compact JSON, the machine behind the times, pruning times."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from dealrec.core.files import read_json
from dealrec.core.hardware import describe
from dealrec.study import runner
from dealrec.study.records import Records, users_key, write_record_json
from dealrec.study.report import machines_line
from dealrec.study.signals import row


def test_a_record_is_found_only_with_its_key_and_its_per_user_file(tmp_path):
    rec = Records(tmp_path / "r")
    params = {"seed": 0, "n": 8, "nested": {"lr": 2e-3}}
    assert rec.get("llm", "dealrec_s0", params) is None
    put = rec.put("llm", "dealrec_s0", params, {"Recall@20": 0.5}, [[0], [-1, 3]], [4, 9])
    got = rec.get("llm", "dealrec_s0", params)
    assert got == put and got["Recall@20"] == 0.5 and got["params"] == params
    assert got["users_key"] == users_key([4, 9])
    assert rec.hit_ranks("llm", "dealrec_s0", got) == [[0], [-1, 3]]
    assert rec.get("llm", "dealrec_s0", {**params, "seed": 1}) is None  # another configuration
    rec.hits_path("llm", "dealrec_s0").unlink()
    assert rec.get("llm", "dealrec_s0", params) is None  # a signal's record needs its per-user file
    # a selection record has no per-user file; names with spaces get dashes
    rec.put("selection", "all candidates_s0", params, {"indices": [1, 2]})
    assert (tmp_path / "r" / "selection" / "all-candidates_s0.json").is_file()
    assert rec.get("selection", "all candidates_s0", params)["indices"] == [1, 2]
    with pytest.raises(ValueError, match="same order"):
        rec.put("sasrec", "x", params, {}, [[0]], [1, 2])


def test_per_user_file_must_match_the_record_users(tmp_path):
    rec = Records(tmp_path)
    a = rec.put("sasrec", "a", {"k": 1}, {}, [[0]], [1])
    rec.put("sasrec", "b", {"k": 2}, {}, [[1]], [2])
    rec.hits_path("sasrec", "b").replace(rec.hits_path("sasrec", "a"))
    with pytest.raises(ValueError, match="other test users"):
        rec.hit_ranks("sasrec", "a", a)


def test_users_file_and_compact_json(tmp_path):
    rec = Records(tmp_path)
    key = rec.write_users("llm", [3, 1, 2])
    assert key == users_key([3, 1, 2]) and rec.read_users("llm") == [3, 1, 2]
    assert (tmp_path / "users" / "llm.json").read_text().count("\n") == 1  # one line
    write_record_json(tmp_path / "x.json", {"a": [1, 2.5, -1, None], "b": {"c": [[1, 2], [3]]}, "s": ["x", "y"]})
    text = (tmp_path / "x.json").read_text()
    assert '"a": [1, 2.5, -1, null]' in text and "[1, 2]" in text
    assert read_json(tmp_path / "x.json") == json.loads(text) == {"a": [1, 2.5, -1, None], "b": {"c": [[1, 2], [3]]},
                                                                 "s": ["x", "y"]}


def test_a_record_names_the_machine_that_ran_it_and_its_row_leaves_it_out(tmp_path):
    put = Records(tmp_path).put("tiger", "random_s0", {"k": 1}, {"train_seconds": 3.0}, [[0]], [1])
    assert put["machine"] == describe()
    assert "machine" not in row(put) and row(put)["train_seconds"] == 3.0


def test_the_report_names_the_machines_behind_the_run_times():
    rows = {"llm": [{"machine": None}, {"machine": None}],
            "sasrec": [{"machine": "CPU A"}, {}],
            "tiger": [{"machine": "CPU A"}, {"machine": "CPU B"}]}
    assert machines_line(rows) == ("Run times measured on: machine not recorded (2 llm, 1 sasrec); "
                                   "CPU A (1 sasrec, 1 tiger); CPU B (1 tiger).")


def test_recorded_pruning_times_stay_and_missing_stages_are_added(tmp_path, monkeypatch):
    study = SimpleNamespace(records=Records(tmp_path), cfg=None)
    (tmp_path / "prune.json").write_text(json.dumps({"surrogate": 2584.4}))
    monkeypatch.setattr(runner, "prune_timings", lambda cfg: {"surrogate": 330.1, "influence": 9.0})
    assert runner.record_prune_timings(study) == {"surrogate": 2584.4, "influence": 9.0}
    assert read_json(tmp_path / "prune.json") == {"surrogate": 2584.4, "influence": 9.0}


def test_a_selection_is_seed_free_when_equal_across_the_seeds_of_each_score_set(tmp_path):
    rec = Records(tmp_path)
    study = SimpleNamespace(records=rec, cfg=SimpleNamespace(strategies=("greedy", "random"), all_seeds=(0, 1, 2, 3)),
                            selection_params=lambda s, seed: {"strategy": s, "seed": seed})
    old, new = {"influence": "aa"}, {"influence": "bb"}
    for seed, scores, users in ((0, old, [1, 2]), (1, old, [1, 2]), (2, new, [3, 4]), (3, new, [3, 4])):
        rec.put("selection", f"greedy_s{seed}", {"strategy": "greedy", "seed": seed}, {"indices": users, "scores": scores})
        rec.put("selection", f"random_s{seed}", {"strategy": "random", "seed": seed},
                {"indices": [seed, 9], "scores": old})
    assert runner.seed_free_strategies(study) == ("greedy",)
    rec.put("selection", "greedy_s3", {"strategy": "greedy", "seed": 3}, {"indices": [4, 3], "scores": new})
    assert runner.seed_free_strategies(study) == ()  # one score set's seeds disagree
