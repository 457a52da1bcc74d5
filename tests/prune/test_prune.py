"""The pruning pipeline and its command line: argument checks, an end-to-end run, the caches."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dealrec.core.files import load_tensor, read_json, save_tensor
from dealrec.core.logs import logging_restored
from dealrec.data.dataset import DataError
from dealrec.llm.model import ModelError
from dealrec.prune import pipeline as prune_lib
from dealrec.prune.pipeline import PruneConfig
from dealrec.surrogate import SurrogateConfig, build_surrogate

REPO = Path(__file__).resolve().parents[2]
PRUNE_DIR = REPO / "code" / "prune"
# prune.py writes its log to code/prune/logs/<log_name>.log and has no option for the folder; an
# absolute --log_name (joined onto that folder it replaces it) puts every test run's log under tmp_path.
LOG_NAME = "testlog"
HAS_GAMES = (REPO / "data" / "games").is_dir()
needs_games = pytest.mark.skipif(not HAS_GAMES, reason="data/games not linked")

# The small run of the end-to-end test; the in-process reruns repeat it so that the caches match.
N_USERS, N_FEWSHOT = 120, 16
RUN_ARGS = [
    "--max_users", str(N_USERS), "--epochs", "2", "--eval_every", "1", "--recursion_depth", "50",
    "--n_fewshot", str(N_FEWSHOT), "--cutoff_len", "96",
]


@pytest.fixture(scope="module")
def cli():
    """``code/prune/prune.py`` imported from its path."""
    spec = importlib.util.spec_from_file_location("prune_cli", PRUNE_DIR / "prune.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module", autouse=True)
def restore_logging():
    """``main`` reconfigures the package logger: undo it."""
    with logging_restored():
        yield


def run_main(cli, argv: list[str], log_dir: Path) -> tuple[int, str]:
    """``main(argv)`` logging to ``log_dir/testlog.log``; returns its exit code and what this call logged."""
    log_file = log_dir / f"{LOG_NAME}.log"
    before = log_file.stat().st_size if log_file.exists() else 0
    with logging_restored():
        rc = cli.main([*argv, "--log_name", str(log_dir / LOG_NAME), "--gpu_id", "cpu"])
    text = log_file.read_text(encoding="utf-8")[before:] if log_file.exists() else ""
    return rc, text


def forbid_loading_the_llm(monkeypatch) -> None:
    """Make loading the effort stage's LLM fail the test."""
    monkeypatch.setattr(prune_lib.EffortModel, "load", lambda *a, **k: pytest.fail("the LLM must not be loaded here"))


def file_state(path: Path) -> tuple[int, int, int]:
    """(inode, mtime in ns, size): files are written to a temporary name and renamed, so a rewrite
    changes the inode even within one clock tick."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def forbid(monkeypatch, *names: str) -> None:
    """Make ``dealrec.prune.pipeline.<name>`` fail the test if it is called."""
    for name in names:
        def fail(*a, _name=name, **k):
            raise AssertionError(f"{_name} must not be called here")

        monkeypatch.setattr(prune_lib, name, fail)


# --------------------------------------------------------------------------------------------
# (a) bad arguments fail fast, before any data loading or training
# --------------------------------------------------------------------------------------------

BAD_ARGS = [
    (["--surrogate", "Caser"], r"unknown surrogate 'Caser'; registered: BERT4Rec, DCRec, GRU4Rec, SASRec"),
    (["--lamda", "-0.5"], r"--lamda must be ≥ 0, got -0.5"),
    (["--k", "0"], r"--k \(number of strata\) must be > 0, got 0"),
    (["--hard_prune", "1.0"], r"--hard_prune must be in \[0, 1\), got 1.0"),
    (["--strategy", "bogus"], r"unknown --strategy 'bogus'; registered: .*dealrec"),
    (["--n_fewshot", "0"], r"--n_fewshot must be > 0"),
    (["--surrogate_checkpoint", "{tmp}/missing.pt"], r"--surrogate_checkpoint .*missing.pt: no such file"),
    (["--resume_from_checkpoint", "{tmp}/no_adapter"], r"--resume_from_checkpoint .*no_adapter: no such directory"),
    (["--resume_from_checkpoint", "{tmp}"], r"no adapter_config.json"),
    (["--effort_scores", "{tmp}/nope.pt"], r"--effort_scores .*nope.pt: no such file"),
    (["--surrogate", "GRU4Rec", "--influence_params", "item_encoder.layer.1.attention.dense.weight"],
     r"--influence_params \['item_encoder.layer.1.attention.dense.weight'\] are not parameters of GRU4Rec; "
     r"available: .*dense.weight"),
]


@pytest.mark.parametrize("args,message", BAD_ARGS, ids=[a[0].lstrip("-") + str(i) for i, (a, _) in enumerate(BAD_ARGS)])
def test_bad_arguments_fail_before_any_work(cli, tmp_path, monkeypatch, args, message):
    import re

    forbid(monkeypatch, "load_dataset", "load_or_train_surrogate", "train_surrogate", "influence_scores",
           "effort_scores")
    forbid_loading_the_llm(monkeypatch)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    rc, log = run_main(cli, [*args, "--score_dir", str(tmp_path / "s"), "--selected_dir", str(tmp_path / "sel")],
                       tmp_path)
    assert rc == 2
    assert re.search(message, log), log
    assert not (tmp_path / "s").exists() and not (tmp_path / "sel").exists()


def test_config_validate_raises(tmp_path):
    with pytest.raises(ValueError, match="registered: BERT4Rec, DCRec, GRU4Rec, SASRec"):
        PruneConfig.flat(surrogate="nope").validate()
    with pytest.raises(ValueError, match="--lamda"):
        PruneConfig.flat(lamda=-1e-9).validate()
    with pytest.raises(ValueError, match="--k"):
        PruneConfig.flat(k=-3).validate()
    with pytest.raises(ValueError, match="--hard_prune"):
        PruneConfig.flat(hard_prune=1).validate()
    with pytest.raises(ValueError, match="--stage"):
        PruneConfig.flat(stage="bogus").validate()
    with pytest.raises(ValueError, match="--effort_target"):
        PruneConfig.flat(effort_target="bogus").validate()
    with pytest.raises(ModelError, match="no such directory"):
        PruneConfig.flat(resume_from_checkpoint=str(tmp_path / "none")).validate()
    PruneConfig.flat(lamda=0, k=1, hard_prune=0).validate()


def test_unknown_data_set_folder(cli, tmp_path, monkeypatch):
    forbid(monkeypatch, "train_surrogate")
    with pytest.raises(DataError, match=r"data set folder .*nope does not exist"):
        prune_lib.run(PruneConfig.flat(data_dir=str(tmp_path), data_name="nope", score_dir=str(tmp_path / "s")))
    rc, log = run_main(cli, ["--data_dir", str(tmp_path), "--data_name", "nope", "--score_dir", str(tmp_path / "s"),
                             "--selected_dir", str(tmp_path / "sel")], tmp_path)
    assert rc == 2 and f"data set folder {tmp_path / 'nope'} does not exist" in log


@pytest.fixture(scope="module")
def small_games():
    from dealrec.data.dataset import load_dataset

    if not HAS_GAMES:
        pytest.skip("data/games not linked")
    return load_dataset(REPO / "data", "games", check_dicts=False).subset_users(20)


def _given_scores(tmp_path, n: int, n_fewshot: int) -> PruneConfig:
    """A configuration of the first ``n`` Games users whose influence and effort scores are given
    as files of random scores (no surrogate and no LLM needed)."""
    save_tensor(tmp_path / "inf.pt", torch.rand(n, generator=torch.Generator().manual_seed(0)))
    save_tensor(tmp_path / "eff.pt", torch.rand(n, generator=torch.Generator().manual_seed(1)))
    return PruneConfig.flat(
        data_dir=str(REPO / "data"), max_users=n, n_fewshot=n_fewshot, score_dir=str(tmp_path / "s"),
        selected_dir=str(tmp_path / "sel"), influence_scores=str(tmp_path / "inf.pt"),
        effort_scores=str(tmp_path / "eff.pt"),
    )


@needs_games
def test_n_fewshot_larger_than_pool(small_games, tmp_path, monkeypatch):
    """Given score files: no surrogate, no LLM; the selection names the pool size."""
    forbid(monkeypatch, "train_surrogate", "load_or_train_surrogate", "influence_scores")
    monkeypatch.setattr(prune_lib.EffortModel, "load", lambda *a, **k: pytest.fail("no effort model here"))
    n = small_games.n_users
    cfg = _given_scores(tmp_path, n, 500)
    n_elig = int(prune_lib.eligible_mask(small_games).sum())
    pool = n_elig - int(0.1 * n_elig)
    with pytest.raises(ValueError, match=rf"--n_fewshot 500 exceeds the {pool} users that dealrec can select from "
                                         rf"\({n_elig} of {n} users .*; lower --n_fewshot to at most {pool}"):
        prune_lib.run(cfg)
    # The selection's own check stays behind it (e.g. budget rounding in other callers).
    with pytest.raises(ValueError, match=rf"n=500 is larger than the pool of \d+ samples .*\({n_elig} eligible"):
        prune_lib.select(cfg, small_games, prune_lib.ScoreSet(
            influence=load_tensor(tmp_path / "inf.pt"), effort=load_tensor(tmp_path / "eff.pt"),
            eligible=prune_lib.eligible_mask(small_games)))
    # Within the pool, the same files select at once.
    manifest = prune_lib.run(cfg.set(n_fewshot=5))
    assert len(manifest["indices"]) == 5 and manifest["score_files"]["influence"] == str(tmp_path / "inf.pt")
    # Score files of another length are refused.
    save_tensor(tmp_path / "short.pt", torch.rand(n - 1))
    with pytest.raises(ValueError, match=rf"influence scores have {n - 1} entries but games has {n} users"):
        prune_lib.run(cfg.set(n_fewshot=5, influence_scores=str(tmp_path / "short.pt")))


@needs_games
def test_two_strategies_leave_both_selections(small_games, tmp_path, monkeypatch):
    """DEALRec's selection keeps the original's name, another strategy's carries its name: two
    runs never overwrite each other."""
    forbid(monkeypatch, "train_surrogate", "load_or_train_surrogate", "influence_scores")
    n = small_games.n_users
    cfg = _given_scores(tmp_path, n, 5)
    dealrec = prune_lib.run(cfg)
    random = prune_lib.run(cfg.set(strategy="random", seed=3))
    sel = tmp_path / "sel"
    assert torch.load(sel / "games_5.pt", weights_only=True) == dealrec["indices"]
    assert torch.load(sel / "games_5_random.pt", weights_only=True) == random["indices"]
    assert read_json(sel / "games_5_random.pt.json")["strategy"] == "random"
    assert dealrec["indices"] != random["indices"]


@needs_games
def test_n_fewshot_beyond_all_games_users_fails_before_training(cli, tmp_path, monkeypatch):
    """``--n_fewshot 100000`` on all of Games: refused at once, naming the pool (not 200 epochs later)."""
    forbid(monkeypatch, "train_surrogate", "load_or_train_surrogate", "influence_scores", "effort_scores")
    forbid_loading_the_llm(monkeypatch)
    rc, log = run_main(cli, ["--data_name", "games", "--data_dir", str(REPO / "data"), "--n_fewshot", "100000",
                             "--score_dir", str(tmp_path / "s"), "--selected_dir", str(tmp_path / "sel")], tmp_path)
    assert rc == 2
    assert "--n_fewshot 100000 exceeds the 37099 users that dealrec can select from (41221 of 49156 users" in log, log
    # refused before the first stage: no score folder (its lock), no selection
    assert not (tmp_path / "s").exists() and not (tmp_path / "sel").exists()
    rc, log = run_main(cli, ["--data_name", "games", "--data_dir", str(REPO / "data"), "--n_fewshot", "41222",
                             "--strategy", "random", "--score_dir", str(tmp_path / "s"),
                             "--selected_dir", str(tmp_path / "sel")], tmp_path)
    assert rc == 2 and "exceeds the 41221 users that random can select from" in log, log


# --------------------------------------------------------------------------------------------
# (c) a surrogate checkpoint of the wrong shape
# --------------------------------------------------------------------------------------------


@needs_games
def test_wrong_surrogate_checkpoint(cli, small_games, tmp_path, monkeypatch):
    forbid(monkeypatch, "train_surrogate")
    wrong = build_surrogate("SASRec", 10, SurrogateConfig()).state_dict()  # 10 items, not the Games catalogue
    save_tensor(tmp_path / "wrong.pt", wrong)
    cfg = PruneConfig.flat(data_dir=str(REPO / "data"), max_users=20, stage="surrogate", score_dir=str(tmp_path / "s"),
                      surrogate_checkpoint=str(tmp_path / "wrong.pt"))
    with pytest.raises(ValueError, match=r"does not match SASRec for games \(\d+ items\).*shape mismatch \['item_embeddings.weight'\]"):
        prune_lib.run(cfg)
    del wrong["LayerNorm.bias"]
    save_tensor(tmp_path / "missing.pt", wrong)
    rc, log = run_main(cli, ["--stage", "surrogate", "--max_users", "20", "--score_dir", str(tmp_path / "s"),
                             "--selected_dir", str(tmp_path / "sel"),
                             "--surrogate_checkpoint", str(tmp_path / "missing.pt")], tmp_path)
    assert rc == 2 and "missing ['LayerNorm.bias']" in log and "item_embeddings.weight" in log
    save_tensor(tmp_path / "list.pt", [1, 2, 3])
    with pytest.raises(ValueError, match="expected a state_dict"):
        prune_lib.run(cfg.set(surrogate_checkpoint=str(tmp_path / "list.pt")))
    assert not (tmp_path / "s" / "surrogate.pt").exists()


# --------------------------------------------------------------------------------------------
# (b) end to end through prune.sh, then the cached reruns
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    if not HAS_GAMES:
        pytest.skip("data/games not linked")
    tmp = tmp_path_factory.mktemp("prune")
    args = [*RUN_ARGS, "--score_dir", str(tmp / "scores"), "--selected_dir", str(tmp / "sel")]
    env = {**os.environ, "PYTHON": sys.executable, "PRUNE_ARGS": " ".join(args)}
    proc = subprocess.run(
        ["sh", str(PRUNE_DIR / "prune.sh"), "games", "SASRec", "0.3", "50", str(tmp / "logs" / LOG_NAME), "cpu"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, args


@pytest.mark.slow
def test_end_to_end(pipeline):
    tmp, _ = pipeline
    sel = tmp / "sel"
    indices = torch.load(sel / f"games_{N_FEWSHOT}.pt", weights_only=True)
    assert type(indices) is list and all(type(i) is int for i in indices)
    assert len(indices) == N_FEWSHOT == len(set(indices)) and all(0 <= i < N_USERS for i in indices)
    m = read_json(sel / f"games_{N_FEWSHOT}.pt.json")
    assert (m["data_name"], m["lamda"], m["k"], m["strategy"]) == ("games", 0.3, 50, "dealrec")
    assert m["indices"] == indices and m["n_users"] == N_USERS and m["max_users"] == N_USERS
    tag = f"games_{N_FEWSHOT}_dealrec_lam0.3_k50_hp0.1_seed42"
    assert torch.load(sel / f"{tag}.pt", weights_only=True) == indices
    assert (sel / f"{tag}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = tmp / "scores"
    for name in ("surrogate", "influence", "effort"):
        assert (scores / f"{name}.pt").is_file() and "key" in read_json(scores / f"{name}.pt.json")
    for name in ("influence", "effort"):
        s = load_tensor(scores / f"{name}.pt")
        assert s.shape == (N_USERS,) and torch.isfinite(s).all()
    assert (load_tensor(scores / "effort.pt") > 0).sum() >= N_FEWSHOT
    assert not (scores / "effort.chunks").exists()  # removed once the scores are saved
    # The run did the small amount of work asked for: 2 surrogate epochs, each evaluated, on the
    # first N_USERS users; a LiSSA depth of 50; at most one effort prompt per user.
    sur = read_json(scores / "surrogate.pt.json")
    assert [r["epoch"] for r in sur["history"]] == [0, 1] and all("valid" in r for r in sur["history"])
    assert sur["params"]["max_users"] == N_USERS
    assert read_json(scores / "influence.pt.json")["params"]["config"]["recursion_depth"] == 50
    assert 0 < read_json(scores / "effort.pt.json")["timing"]["prompts_timed"] <= N_USERS
    log = (tmp / "logs" / f"{LOG_NAME}.log").read_text(encoding="utf-8")  # prune.sh's --log_name, under tmp
    assert f"--score_dir {scores}" in log


@pytest.mark.slow
def test_select_stage_reuses_the_cache(cli, pipeline, monkeypatch):
    tmp, args = pipeline
    scores = tmp / "scores"
    names = ("surrogate", "influence", "effort")
    written = {n: read_json(scores / f"{n}.pt.json")["written"] for n in names}
    files = [scores / f"{n}.pt{ext}" for n in names for ext in ("", ".json")]
    before = {f: file_state(f) for f in files}
    forbid(monkeypatch, "train_surrogate", "influence_scores", "effort_scores")
    monkeypatch.setattr(prune_lib.EffortModel, "load", lambda *a, **k: pytest.fail("effort must be reused"))
    rc, log = run_main(cli, [*args, "--data_name", "games", "--stage", "select", "--lamda", "1.0", "--k", "50"],
                       tmp / "logs")
    assert rc == 0, log
    assert "--stage select --lamda 1.0 --k 50 --log_name" in log  # the command line of this call
    assert "surrogate: reusing" in log and "influence: reusing" in log and "effort: reusing" in log
    assert {n: read_json(scores / f"{n}.pt.json")["written"] for n in written} == written
    assert {f: file_state(f) for f in files} == before  # neither the scores nor their manifests rewritten
    m = read_json(tmp / "sel" / f"games_{N_FEWSHOT}.pt.json")
    assert m["lamda"] == 1.0 and len(m["indices"]) == N_FEWSHOT
    assert (tmp / "sel" / f"games_{N_FEWSHOT}_dealrec_lam1.0_k50_hp0.1_seed42.pt").is_file()
    assert (tmp / "sel" / f"games_{N_FEWSHOT}_dealrec_lam0.3_k50_hp0.1_seed42.pt").is_file()  # kept


@pytest.mark.slow
def test_correct_surrogate_checkpoint_skips_training(cli, pipeline, monkeypatch):
    tmp, args = pipeline
    ckpt = tmp / "scores" / "surrogate.pt"
    forbid(monkeypatch, "train_surrogate", "influence_scores")
    monkeypatch.setattr(prune_lib.EffortModel, "load", lambda *a, **k: pytest.fail("effort must be reused"))
    cfg = PruneConfig.flat(data_dir=str(REPO / "data"), max_users=N_USERS, score_dir=str(tmp / "scores"),
                      surrogate_checkpoint=str(ckpt))
    data = prune_lib.load_dataset(cfg.data_dir, cfg.data_name, check_dicts=False).subset_users(N_USERS)
    model = prune_lib.load_or_train_surrogate(cfg, data)
    want = torch.load(ckpt, weights_only=True)
    assert model.state_dict().keys() == want.keys()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    # Same weights: the cached influence scores (keyed by the weights' hash) are reused too.
    rc, log = run_main(cli, [*args, "--stage", "select", "--surrogate_checkpoint", str(ckpt),
                             "--selected_dir", str(tmp / "sel_ckpt")], tmp / "logs")
    assert rc == 0, log
    assert f"surrogate loaded from {ckpt} (training skipped)" in log and "influence: reusing" in log
    assert json.loads((tmp / "sel_ckpt" / f"games_{N_FEWSHOT}.pt.json").read_text())["lamda"] == 0.3


# --------------------------------------------------------------------------------------------
# (d) other surrogates: their own parameters and cache files, the shared effort scores
# --------------------------------------------------------------------------------------------


def test_surrogate_files_and_parameters(tmp_path):
    """SASRec keeps the original file names; another surrogate's files carry its name, so all share
    one score_dir (and its effort scores) without overwriting each other."""
    def files(**kw):
        cfg = PruneConfig.flat(score_dir=str(tmp_path), **kw)
        return (prune_lib.surrogate_file(cfg).name, prune_lib.influence_file(cfg).name,
                prune_lib.effort_file(cfg).name, cfg.influence_parameters)

    sasrec_param = ("item_encoder.layer.1.attention.dense.weight",)
    assert files() == ("surrogate.pt", "influence.pt", "effort.pt", sasrec_param)
    assert files(negatives="expected") == ("surrogate.pt", "influence_expected.pt", "effort.pt", sasrec_param)
    assert files(surrogate="BERT4Rec") == ("surrogate_BERT4Rec.pt", "influence_BERT4Rec.pt", "effort.pt", sasrec_param)
    assert files(surrogate="GRU4Rec", negatives="expected") == (
        "surrogate_GRU4Rec.pt", "influence_GRU4Rec_expected.pt", "effort.pt", ("dense.weight",))
    assert files(surrogate="GRU4Rec", influence_params=("gru.weight_hh_l0",))[3] == ("gru.weight_hh_l0",)
    PruneConfig.flat(surrogate="GRU4Rec", influence_params=("gru.weight_hh_l0",)).validate()
    # The surrogate's registered training defaults; SASRec's configuration is the plain one.
    assert PruneConfig.flat().surrogate.config() == SurrogateConfig()
    assert PruneConfig.flat(surrogate="BERT4Rec", epochs=3).surrogate.config() == SurrogateConfig(epochs=3, dropout=0.1)
    assert PruneConfig.flat(surrogate="GRU4Rec").surrogate.config().lr == 3e-3  # its registered default
    assert PruneConfig.flat(surrogate="GRU4Rec", lr=1e-2).surrogate.config().lr == 1e-2  # --lr wins
    assert PruneConfig.flat(lr=1e-3).surrogate.config() == PruneConfig.flat().surrogate.config()


def run_other_surrogate(pipeline, name: str):
    tmp, args = pipeline
    scores = tmp / "scores"
    before = {f.name: (read_json(f)["written"], file_state(f)) for f in scores.glob("*.pt.json")}
    env = {**os.environ, "PYTHON": sys.executable,
           "PRUNE_ARGS": " ".join([*args, "--selected_dir", str(tmp / f"sel_{name}")])}
    proc = subprocess.run(["sh", str(PRUNE_DIR / "prune.sh"), "games", name, "0.3", "50",
                           str(tmp / "logs" / f"{LOG_NAME}_{name}"), "cpu"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, scores, before, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["BERT4Rec", "GRU4Rec"])
def test_end_to_end_with_another_surrogate(pipeline, name):
    """``prune.sh games <name> ...`` in the SASRec run's score_dir: its own surrogate and influence
    files, the effort scores reused (they do not depend on the surrogate), SASRec's files untouched."""
    tmp, scores, before, log = run_other_surrogate(pipeline, name)
    assert "effort: reusing" in log
    for f in ("surrogate", "influence", "effort"):  # SASRec's (and the shared effort) files: not rewritten
        assert (read_json(scores / f"{f}.pt.json")["written"], file_state(scores / f"{f}.pt.json")) == before[f"{f}.pt.json"]
    m = read_json(scores / f"surrogate_{name}.pt.json")
    assert m["params"]["surrogate"] == name and m["params"]["config"]["epochs"] == 2
    state = load_tensor(scores / f"surrogate_{name}.pt")
    model = build_surrogate(name, prune_lib.load_dataset(REPO / "data", "games", check_dicts=False).n_items,
                            prune_lib.PruneConfig.flat(surrogate=name).surrogate.config())
    model.load_state_dict(state)  # the cached checkpoint loads back into the registered model
    inf = load_tensor(scores / f"influence_{name}.pt")
    assert inf.shape == (N_USERS,) and torch.isfinite(inf).all()
    assert not torch.equal(inf, load_tensor(scores / "influence.pt"))
    assert read_json(scores / f"influence_{name}.pt.json")["params"]["config"]["params"] == list(
        prune_lib.PruneConfig.flat(surrogate=name).influence_parameters)
    sel = tmp / f"sel_{name}"
    manifest = read_json(sel / f"games_{N_FEWSHOT}.pt.json")
    assert manifest["surrogate"] == name and len(manifest["indices"]) == N_FEWSHOT
    assert (sel / f"games_{N_FEWSHOT}_dealrec_{name}_lam0.3_k50_hp0.1_seed42.pt").is_file()


@pytest.mark.slow
def test_sasrec_cache_keys_hold_no_objective_entry(pipeline):
    """The SASRec run's manifests are keyed by the data, the surrogate's name and its training
    configuration only: the next-item objective adds no entry to SASRec's keys."""
    from dealrec.core.cache import cache_key, file_hash

    tmp, _ = pipeline
    data_key = {"data_name": "games", "train_file": file_hash(REPO / "data" / "games" / "sequential_train.txt"),
                "max_users": N_USERS}
    scfg = SurrogateConfig(epochs=2, batch_size=500, lr=1e-3, patience=5, eval_every=1, seed=42)

    m = read_json(tmp / "scores" / "surrogate.pt.json")
    assert m["key"] == cache_key({**data_key, "surrogate": "SASRec", "config": scfg.key()})
    m = read_json(tmp / "scores" / "influence.pt.json")
    assert set(m["params"]) == {"data_name", "train_file", "max_users", "surrogate", "config"}
    assert m["params"]["config"]["params"] == ["item_encoder.layer.1.attention.dense.weight"]
