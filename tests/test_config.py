"""One source of truth for the settings: the command lines built from the configuration
dataclasses accept every flag of the original scripts with its meaning, and an unchanged
command keeps its cache keys and file names."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dealrec.config import Alias, from_flat, get, override, settings
from dealrec.core.cache import cache_key
from dealrec.llm.finetune import FinetuneConfig
from dealrec.prune import pipeline as prune_lib
from dealrec.prune.pipeline import PRUNE_ALIASES, PruneConfig
from dealrec.select import STRATEGIES, strategy_spec
from dealrec.study.config import StudyConfig
from dealrec.surrogate import SurrogateConfig

REPO = Path(__file__).resolve().parents[1]
HAS_GAMES = (REPO / "data" / "games").is_dir()
needs_games = pytest.mark.skipif(not HAS_GAMES, reason="data/games not linked")


def _script(rel: str, name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def prune_cli():
    return _script("code/prune/prune.py", "prune_cli_config")


def _prune_sh_argv(surrogate: str = "SASRec") -> list[str]:
    """What ``sh prune.sh games <surrogate> 0.3 50 log cpu`` passes to prune.py."""
    return ["--data_name", "games", "--surrogate", surrogate, "--lamda", "0.3", "--k", "50", "--log_name", "log",
            "--gpu_id", "cpu", "--strategy", "dealrec"]


# --------------------------------------------------------------------------------------------
# Cache keys and file names of the default command, pinned: the layout of the configuration
# classes must not change them (the caches already on disk stay valid). The effort key is the one
# of the committed chunks of the long Games effort run (records/effort/games/effort.chunks/key.json).
# --------------------------------------------------------------------------------------------

PINNED = {
    "SASRec": {"surrogate": "47efe39c0ac5f035", "influence_config": "280e350ce94408dc",
               "files": ("surrogate.pt", "influence.pt", "effort.pt")},
    "BERT4Rec": {"surrogate": "8bff45191d8002fe", "influence_config": "280e350ce94408dc",
                 "files": ("surrogate_BERT4Rec.pt", "influence_BERT4Rec.pt", "effort.pt")},
    "GRU4Rec": {"surrogate": "a1d7d5e1bb9578a8", "influence_config": "a9b5b6e0e9a56466",
                "files": ("surrogate_GRU4Rec.pt", "influence_GRU4Rec.pt", "effort.pt")},
}
PINNED_EFFORT = "1e51237abe683fa9"


@needs_games
@pytest.mark.parametrize("surrogate", sorted(PINNED))
def test_default_command_keeps_its_cache_keys(prune_cli, monkeypatch, surrogate):
    from dealrec.data.dataset import load_dataset

    monkeypatch.setenv("DEALREC_NATIVE_BF16", "1")  # the machine of the committed chunks: auto = bf16
    cfg, _, ignored = prune_cli.parse_args(_prune_sh_argv(surrogate))
    assert not ignored and cfg.score_dir == str(REPO / "code" / "prune" / "scores" / "games")
    data = load_dataset(cfg.data_dir, cfg.data_name)
    pin = PINNED[surrogate]
    assert cache_key(prune_lib.surrogate_key(cfg, data)) == pin["surrogate"]
    assert cache_key({"c": dataclasses.asdict(cfg.influence_config())}) == pin["influence_config"]
    files = (prune_lib.surrogate_file(cfg).name, prune_lib.influence_file(cfg).name, prune_lib.effort_file(cfg).name)
    assert files == pin["files"]
    assert cache_key(prune_lib.effort_key(cfg, data)) == PINNED_EFFORT
    committed = REPO / "records" / "effort" / "games" / "effort.chunks" / "key.json"
    if committed.is_file():
        assert json.loads(committed.read_text())["key"] == PINNED_EFFORT
    stable = cfg.for_strategy("dealrec-stable")
    assert (prune_lib.influence_file(stable).name, prune_lib.effort_file(stable).name) == (
        pin["files"][1].replace(".pt", "_expected.pt"), "effort_base.pt")


def test_default_sections_hold_each_stage_default():
    """Each section of PruneConfig (and FinetuneConfig) holds the stage's default values."""
    cfg = PruneConfig()
    assert cfg.surrogate.config() == SurrogateConfig()
    assert cfg.influence_config().params == ("item_encoder.layer.1.attention.dense.weight",)
    assert (cfg.influence.seed, cfg.effort.seed, cfg.select.seed, cfg.surrogate.config().seed) == (42, 42, 42, 42)
    assert (cfg.select.lamda, cfg.select.k, cfg.select.hard_prune, cfg.select.n_fewshot) == (0.3, 50, 0.1, 1024)
    assert (cfg.effort.precision, cfg.effort.lora_r, cfg.effort.lora_alpha, cfg.effort.lora_target_modules) == (
        "auto", 8, 16, ("q_proj", "v_proj"))
    ft = FinetuneConfig()
    assert (ft.lora_r, ft.lora_alpha, ft.lora_dropout, ft.lora_target_modules) == (8, 16, 0.05, ["q_proj", "v_proj"])


# --------------------------------------------------------------------------------------------
# Every flag of the original utils.py and finetune.py parses to the same value
# --------------------------------------------------------------------------------------------

# (flag, value on the command line, setting it must reach, parsed value); values differ from the
# defaults so that a flag that is silently dropped fails.
ORIGINAL_PRUNE_FLAGS = [
    ("--data_dir", "/tmp/d", "data_dir", "/tmp/d"),
    ("--output_dir", "/tmp/models", "score_dir", "/tmp/models"),
    ("--data_name", "book", "data_name", "book"),
    ("--gpu_id", "cpu", "device", "cpu"),
    ("--no_cuda", None, "device", "cpu"),
    ("--seed", "7", "select.seed", 7),
    ("--log_name", "mylog", None, None),
    ("--model_name", "GRU4Rec", "surrogate.name", "GRU4Rec"),
    ("--hidden_size", "128", "surrogate.train.hidden_size", 128),
    ("--num_hidden_layers", "3", "surrogate.train.num_hidden_layers", 3),
    ("--num_attention_heads", "4", "surrogate.train.num_attention_heads", 4),
    ("--hidden_act", "relu", None, None),
    ("--attention_probs_dropout_prob", "0.2", "surrogate.train.attention_dropout", 0.2),
    ("--hidden_dropout_prob", "0.3", "surrogate.train.dropout", 0.3),
    ("--initializer_range", "0.05", "surrogate.train.initializer_range", 0.05),
    ("--max_seq_length", "30", "surrogate.train.max_seq_length", 30),
    ("--do_eval", None, "stage", "surrogate"),
    ("--batch_size", "256", "surrogate.train.batch_size", 256),
    ("--epochs", "10", "surrogate.train.epochs", 10),
    ("--topN", "[5, 10, 20]", "surrogate.train.ks", (5, 10, 20)),
    ("--top", "[10, 20]", "surrogate.train.ks", (10, 20)),
    ("--lr", "0.002", "surrogate.train.lr", 0.002),
    ("--weight_decay", "0.01", "surrogate.train.weight_decay", 0.01),
    ("--adam_beta1", "0.8", "surrogate.train.adam_beta1", 0.8),
    ("--adam_beta2", "0.99", "surrogate.train.adam_beta2", 0.99),
    ("--base_model", "/models/llama", "effort.base_model", "/models/llama"),
    ("--train_data_path", "/tmp/train_49156.json", "train_data_path", "/tmp/train_49156.json"),
    ("--resume_from_checkpoint", "/tmp/alpaca", "effort.resume_from_checkpoint", "/tmp/alpaca"),
    ("--cutoff_len", "256", "effort.cutoff_len", 256),
    ("--lora_r", "16", "effort.lora_r", 16),
    ("--lora_alpha", "32", "effort.lora_alpha", 32),
    ("--lora_dropout", "0.1", None, None),
    ("--n_fewshot", "512", "select.n_fewshot", 512),
    ("--lamda", "0.5", "select.lamda", 0.5),
    ("--k", "25", "select.k", 25),
    ("--hard_prune", "0.2", "select.hard_prune", 0.2),
    ("--iteration", "2", "influence.iteration", 2),
    ("--recursion_depth", "100", "influence.recursion_depth", 100),
]


def test_every_original_prune_flag_is_listed():
    """The list above is the original utils.py's (plus --top, the abbreviation of --topN)."""
    original = {"data_dir", "output_dir", "data_name", "gpu_id", "no_cuda", "seed", "log_name", "model_name",
                "hidden_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
                "attention_probs_dropout_prob", "hidden_dropout_prob", "initializer_range", "max_seq_length",
                "do_eval", "batch_size", "epochs", "topN", "lr", "weight_decay", "adam_beta1", "adam_beta2",
                "base_model", "train_data_path", "resume_from_checkpoint", "cutoff_len", "lora_r", "lora_alpha",
                "lora_dropout", "n_fewshot", "lamda", "k", "hard_prune", "iteration", "recursion_depth"}
    assert {f[0][2:] for f in ORIGINAL_PRUNE_FLAGS} == original | {"top"}


@pytest.mark.parametrize("flag,value,setting,parsed", ORIGINAL_PRUNE_FLAGS, ids=[f[0] for f in ORIGINAL_PRUNE_FLAGS])
def test_original_prune_flag_parses_to_its_setting(prune_cli, flag, value, setting, parsed):
    argv = [flag] + ([value] if value is not None else [])
    cfg, ns, ignored = prune_cli.parse_args(argv)
    if setting is None:  # the script's own option, or accepted and logged as without effect
        assert flag == "--log_name" and ns.log_name == value or ignored == {flag[2:]: type(ignored[flag[2:]])(value)}
        return
    assert get(cfg, setting) == parsed


def test_seed_and_batch_size_reach_every_stage(prune_cli):
    cfg, _, _ = prune_cli.parse_args(["--seed", "3", "--batch_size", "100"])
    assert (cfg.surrogate.config().seed, cfg.influence.seed, cfg.effort.seed, cfg.select.seed) == (3, 3, 3, 3)
    assert cfg.surrogate.config().batch_size == cfg.influence.batch_size == 100
    # a dotted name sets one stage only, and wins over the flat alias
    cfg, _, _ = prune_cli.parse_args(["--seed", "3", "--effort.seed", "9"])
    assert (cfg.effort.seed, cfg.select.seed) == (9, 3)


def test_surrogate_architecture_from_the_command_line(prune_cli):
    cfg, _, _ = prune_cli.parse_args(["--hidden_size", "32", "--num_hidden_layers", "1", "--initializer_range", "0.1"])
    model = prune_lib.build_surrogate(cfg.surrogate.name, 20, cfg.surrogate.config())
    assert model.item_embeddings.weight.shape == (21, 32) and len(model.item_encoder.layer) == 1
    assert model.cfg.initializer_range == 0.1
    # set only at its default, a late field stays out of the key (caches keyed without it stay valid)
    assert "initializer_range" not in PruneConfig().surrogate.config().key()
    assert cfg.surrogate.config().key()["initializer_range"] == 0.1


ORIGINAL_FINETUNE_FLAGS = [
    ("--base_model", "/m", "base_model", "/m"),
    ("--train_data_path", "t.json", "train_file", "t.json"),
    ("--val_data_path", "v.json", "val_file", "v.json"),
    ("--output_dir", "out", "output_dir", "out"),
    ("--sample", "64", "sample", 64),
    ("--seed", "3", "seed", 3),
    ("--batch_size", "64", "batch_size", 64),
    ("--micro_batch_size", "8", "micro_batch_size", 8),
    ("--num_epochs", "3", "num_epochs", 3.0),
    ("--learning_rate", "3e-4", "learning_rate", 3e-4),
    ("--cutoff_len", "256", "cutoff_len", 256),
    ("--lora_r", "16", "lora_r", 16),
    ("--lora_alpha", "32", "lora_alpha", 32),
    ("--lora_dropout", "0.1", "lora_dropout", 0.1),
    ("--lora_target_modules", "[q_proj,k_proj]", "lora_target_modules", ["q_proj", "k_proj"]),
    ("--train_on_inputs", "False", "train_on_inputs", False),
    ("--group_by_length", "False", "group_by_length", False),
    ("--wandb_project", "p", None, None),
    ("--wandb_run_name", "r", None, None),
    ("--wandb_watch", "all", None, None),
    ("--wandb_log_model", "true", None, None),
    ("--resume_from_checkpoint", "/a", "resume_from_checkpoint", "/a"),
]


@pytest.mark.parametrize("flag,value,setting,parsed", ORIGINAL_FINETUNE_FLAGS,
                         ids=[f[0] for f in ORIGINAL_FINETUNE_FLAGS])
def test_original_finetune_flag_parses_to_its_setting(flag, value, setting, parsed):
    from dealrec.config import build_parser, parse

    cli = _script("code/finetune/finetune.py", "finetune_cli_config")
    p = build_parser(FinetuneConfig, cli.ALIASES, cli.PRESETS)
    cfg, _, ignored = parse(FinetuneConfig, [flag, value], cli.ALIASES, cli.PRESETS, parser=p)
    if setting is None:
        assert ignored == {flag[2:]: value}
    else:
        assert getattr(cfg, setting) == parsed


# --------------------------------------------------------------------------------------------
# The helper itself, presets, strategies' declared needs, the shared helpers
# --------------------------------------------------------------------------------------------


def test_override_and_from_flat():
    cfg = override(PruneConfig(), {"select.lamda": 0.5, "surrogate.train.epochs": 3})
    assert cfg.select.lamda == 0.5 and cfg.surrogate.train == {"epochs": 3} and PruneConfig().surrogate.train == {}
    assert from_flat(PruneConfig, PRUNE_ALIASES, lamda=0.5, epochs=3) == cfg == PruneConfig.flat(lamda=0.5, epochs=3)
    assert cfg.lamda == 0.5 and cfg.epochs == 3  # flat names read their setting
    with pytest.raises(ValueError, match="no setting"):
        override(PruneConfig(), {"select.lambda": 1})
    with pytest.raises(ValueError, match="unknown setting 'bogus'"):
        PruneConfig.flat(bogus=1)
    assert "select.lamda" in settings(PruneConfig) and "surrogate.train.hidden_size" in settings(PruneConfig)
    assert PruneConfig.flat(surrogate="GRU4Rec").lr == 3e-3  # the registered default reads through


def test_presets_are_overrides(prune_cli):
    cfg, _, _ = prune_cli.parse_args(["--preset", "demo", "--max_users", "100"])
    assert (cfg.max_users, cfg.select.n_fewshot, cfg.surrogate.config().epochs, cfg.effort.cutoff_len) == (100, 64, 20, 256)
    study = StudyConfig.from_preset("cpu", n=64)
    assert (study.n, study.finetune.train_on_inputs, study.finetune.learning_rate) == (64, False, 2e-3)
    assert study.prune.effort.cutoff_len == study.finetune.cutoff_len == study.generate.cutoff_len == 256
    assert list(study.summary())[:5] == ["data_dir", "data_name", "preset", "out_dir", "n"]


def test_demo_recipe_is_the_studys():
    """``make demo`` fine-tunes with the recipe the study found to change the generations."""
    from dealrec.presets import FINETUNE_PRESETS, STUDY_PRESETS

    demo = FINETUNE_PRESETS["cpu-demo"]["finetune"]
    assert demo["train_on_inputs"] is False
    assert demo["learning_rate"] == STUDY_PRESETS["cpu"]["finetune.learning_rate"]


def test_strategies_declare_their_needs():
    from dealrec.select.strategies import SPECS

    assert set(STRATEGIES) == set(SPECS)
    assert strategy_spec("dealrec").needs == ("influence", "effort")
    assert strategy_spec("random").needs == ()
    assert strategy_spec("ccs").needs == ("baselines",) and strategy_spec("ccs").hard_prunes
    stable = PruneConfig().for_strategy("dealrec-stable")
    assert (stable.influence.negatives, stable.effort.target) == ("expected", "base")
    assert PruneConfig.flat(strategy="dealrec-stable").for_strategy() == stable
    from dealrec.select.strategies import DEFAULT_K, DEFAULT_LAMDA

    assert (DEFAULT_LAMDA, DEFAULT_K) == (PruneConfig().select.lamda, PruneConfig().select.k) == (0.3, 50)


def test_compute_scores_computes_only_the_needs(monkeypatch):
    calls = []
    monkeypatch.setattr(prune_lib, "load_or_train_surrogate", lambda *a: calls.append("surrogate") or "model")
    monkeypatch.setattr(prune_lib, "compute_influence", lambda *a: calls.append("influence") or torch.zeros(3))
    monkeypatch.setattr(prune_lib, "compute_effort", lambda *a: calls.append("effort") or torch.zeros(3))
    monkeypatch.setattr(prune_lib, "compute_baselines", lambda *a: calls.append("baselines") or {})

    class Data:
        n_users = 3

    assert set(prune_lib.compute_scores(PruneConfig(), Data(), ("effort",))) == {"effort"}
    assert calls == ["effort"]
    calls.clear()
    prune_lib.compute_scores(PruneConfig(), Data(), strategy_spec("dealrec").needs)
    assert calls == ["surrogate", "influence", "effort"]


def test_alias_table_targets_exist():
    known = settings(PruneConfig)
    for name, a in PRUNE_ALIASES.items():
        assert isinstance(a, Alias) and all(t in known for t in a.targets), name


def test_study_sections_give_the_stage_configurations(tmp_path):
    """StudyConfig's sections give each stage the configuration listed here, field by field (the
    study's caches are keyed by these values)."""
    from dealrec.llm.generate import InferenceConfig
    from dealrec.scores.effort import EffortConfig

    cfg = StudyConfig.flat(out_dir=str(tmp_path))
    pcfg = cfg.prune_config("dealrec")
    assert pcfg.effort == EffortConfig(precision="auto", cutoff_len=256)
    assert (pcfg.select.n_fewshot, pcfg.score_dir, pcfg.surrogate.config()) == (128, str(tmp_path / "scores"),
                                                                                SurrogateConfig())
    ft = cfg.finetune_config(tmp_path / "t.json", tmp_path / "v.json", tmp_path / "a", 1)
    assert ft == FinetuneConfig(
        train_file=str(tmp_path / "t.json"), val_file=str(tmp_path / "v.json"), output_dir=str(tmp_path / "a"),
        base_model=None, batch_size=8, micro_batch_size=4, num_epochs=1.0, learning_rate=3e-4, warmup_steps=2,
        cutoff_len=256, val_set_size=8, eval_steps=8, train_on_inputs=True, seed=1, max_steps=-1, logging_steps=1)
    icfg = cfg.inference_config(tmp_path / "test.json", tmp_path / "r.json", tmp_path / "a")
    assert icfg == InferenceConfig(test_file=str(tmp_path / "test.json"), result_file=str(tmp_path / "r.json"),
                                   lora_weights=str(tmp_path / "a"), num_beams=1, max_new_tokens=24, batch_size=8,
                                   cutoff_len=256)
    assert cfg.prune_config("dealrec-stable").influence.negatives == "expected"


def test_prune_sh_forwards_stable_and_further_options(tmp_path):
    """``prune.sh <6 positional> stable <options>``: the options reach prune.py (here a bad
    --lamda, refused before any work) after the positional ones."""
    import os
    import subprocess
    import sys

    # an absolute log name: the log goes under tmp_path, not code/prune/logs/
    proc = subprocess.run(["sh", str(REPO / "code" / "prune" / "prune.sh"), "games", "SASRec", "0.3", "50",
                           str(tmp_path / "log"), "cpu", "stable", "--lamda", "-2", "--score_dir", str(tmp_path / "s")],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    text = (tmp_path / "log.log").read_text()
    assert "--lamda must be ≥ 0, got -2.0" in text and "--strategy dealrec-stable" in text


@pytest.mark.parametrize("script,flag", [
    ("code/prune/prune.py", "--hidden_size"), ("code/finetune/finetune.py", "--train_data_path"),
    ("code/finetune/inference.py", "--result_json_data"), ("code/finetune/data/gen_fewshot.py", "--n_sample"),
    ("code/finetune/data/evaluate.py", "--result_file"), ("bench/reproduce.py", "--learning_rate"),
])
def test_every_cli_lists_its_flags(script, flag):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, timeout=300,
                          cwd=REPO / Path(script).parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert flag in proc.stdout


def test_given_score_file_is_refused_for_a_strategy_that_rescored(tmp_path):
    """prune.py --strategy dealrec-stable --effort_scores F: F holds lora_B effort, the strategy
    needs base-weight effort, so the file cannot be used (the study drops it instead)."""
    import pytest
    import torch

    from dealrec.prune.config import PruneConfig

    f = tmp_path / "effort.pt"
    torch.save(torch.zeros(3), f)
    cfg = PruneConfig.flat(effort_scores=str(f), strategy="dealrec-stable")
    with pytest.raises(ValueError, match=r"--effort_scores .*dealrec-stable scores with effort.target=base"):
        cfg.for_strategy()
    assert PruneConfig.flat(effort_scores=str(f)).for_strategy().effort_scores == str(f)


@pytest.mark.parametrize("argv, flag", [
    (["--lamda", "nan"], "--lamda"), (["--lamda", "inf"], "--lamda"), (["--select.hard_prune=-inf"], "--select.hard_prune"),
    (["--lr", "NaN"], "--lr"),
])
def test_float_options_refuse_nan_and_infinity(argv, flag, capsys):
    """A NaN or infinite number is refused at parse time, naming the flag (never a stage run on it)."""
    spec = importlib.util.spec_from_file_location("prune_cli_nan", REPO / "code" / "prune" / "prune.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    with pytest.raises(SystemExit) as e:
        cli.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "not a finite number" in err


def test_float_lists_refuse_nan():
    from dealrec.config import _converted

    with pytest.raises(ValueError, match="--x: invalid value 'nan,1'.*not a finite number"):
        _converted(tuple[float, ...], "nan,1", "x")
