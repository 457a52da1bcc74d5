"""Reproduction study: does DEALRec's selection beat random and the baselines at equal cost?

One data set, one sample count n, strategies × seeds (the paper's Table 2 setting, §5.2):

1. prune once: surrogate, influence (Eq. 9–11), effort (Eq. 12) and the EL2N/GraNd baselines
   are computed once and cached under ``<out>/scores``; every strategy then selects from them
   (:func:`dealrec.select.run_strategy`) with the run's seed;
2. per strategy and seed, the LLM signal: few-shot LoRA fine-tuning of BIGRec on the selection,
   generation for one fixed set of test users (the same users for every run), grounding over the
   catalogue, Recall/NDCG@K;
3. per strategy and seed, a cheap second signal: a fresh SASRec trained only on the selected
   users' sequences, evaluated on the full test set (plus a reference row: SASRec on every
   candidate user);
4. ``<out>/REPORT.md`` (mean ± sample std over seeds, the paper's Table 2 rows beside them,
   wall-clock time per stage, the configuration) and ``<out>/report.png`` (bars with error bars),
   rendered by :mod:`dealrec.study.report`.

:class:`StudyConfig` holds a :class:`~dealrec.prune.pipeline.PruneConfig`, a
:class:`~dealrec.llm.finetune.FinetuneConfig` and an :class:`~dealrec.llm.generate.InferenceConfig`
(the study's defaults are overrides of their settings) plus the study's own settings; the flat
names of the earlier flat configuration (``n``, ``lamda``, ``learning_rate``, ``num_beams`` …)
remain readable and settable (:data:`STUDY_ALIASES`).

5. the paired-difference table: per signal, each strategy against ``random`` on the same test
   users with the same seed (per-user Recall@20/NDCG@20 differences, averaged over seeds, bootstrap
   95 % interval, seed-to-seed spread, a verdict sentence: :mod:`dealrec.study.paired`).

Each finished run leaves its small result files in the record folder (``record_dir``; default
``docs/study/<preset>`` for a named preset, else ``<out>/records``; :mod:`dealrec.study.records`): the
selection's indices, the metrics and timings, and per test user the ranks of its targets. A run
whose record carries the expected key is never recomputed, and the report is made from the
records alone, so a study resumes from them on a machine without ``<out>`` (scores, adapters,
generations and title embeddings are rebuilt only for runs still missing). The SASRec signal may
have more seeds than the LLM signal (``sasrec_seeds``).

Every heavy output is cached with a manifest too, so an interrupted run resumes where it stopped,
and several processes can share the work when given disjoint ``strategies`` (``only="runs"``).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dealrec.config import Alias, FlatView, from_flat, get, override
from dealrec.core import faults
from dealrec.core.cache import cache_key, cached, file_hash, tensor_hash, write_manifest
from dealrec.core.files import check_writable, read_json, write_json
from dealrec.core.hardware import cpu_precision
from dealrec.core.locking import output_lock
from dealrec.core.logs import LOG, Timer
from dealrec.data.dataset import load_dataset
from dealrec.data.fewshot import build_examples, write_fewshot
from dealrec.llm.finetune import MANIFEST as FINETUNE_MANIFEST
from dealrec.llm.finetune import NOT_IN_KEY as FINETUNE_NOT_IN_KEY
from dealrec.llm.finetune import FinetuneConfig, is_done
from dealrec.llm.finetune import train as finetune
from dealrec.llm.generate import InferenceConfig, run_inference
from dealrec.llm.ground import GROUND_AUTO, POOLING, evaluate_results
from dealrec.llm.model import model_id
from dealrec.presets import DEFAULT_STRATEGIES
from dealrec.presets import STUDY_PRESETS as PRESETS
from dealrec.prune.pipeline import (
    PruneConfig,
    compute_scores,
    effort_file,
    eligible_mask,
    influence_file,
    surrogate_file,
)
from dealrec.select import STRATEGIES, ScoreSet, run_strategy, strategy_spec
from dealrec.study.records import Records, users_key
from dealrec.study.report import (
    METRICS,
    PAPER_TABLE2,
    REFERENCE,
    REPORT_KS,
    StudyFacts,
    markdown_table,
    mean_std,
    plot_report,
    summarize,
    write_report,
)
from dealrec.surrogate import build_surrogate
from dealrec.surrogate.trainer import SurrogateConfig, train_surrogate

SIGNALS = ("llm", "sasrec")
# Settings the study sets per run (paths inside <out>): not options of its command line.
PER_RUN = ("prune.score_dir", "prune.selected_dir", "finetune.train_file", "finetune.val_file", "finetune.output_dir",
           "generate.test_file", "generate.result_file", "generate.lora_weights")
_SEEDS = ("prune.surrogate.train.seed", "prune.influence.seed", "prune.effort.seed", "prune.select.seed")
# The earlier flat settings of the study, in their order (REPORT.md's configuration lists them):
# each names the setting(s) it stands for.
STUDY_ALIASES: dict[str, Alias] = {
    "data_dir": Alias(("prune.data_dir",)),
    "data_name": Alias(("prune.data_name",)),
    "n": Alias(("prune.select.n_fewshot",), note="selected samples per run"),
    "pool_users": Alias(("prune.max_users",), note="candidates = the first N users (None: all)"),
    "base_model": Alias(("prune.effort.base_model", "finetune.base_model", "generate.base_model")),
    "device": Alias(("prune.device",)),
    "lamda": Alias(("prune.select.lamda",)),
    "k": Alias(("prune.select.k",)),
    "hard_prune": Alias(("prune.select.hard_prune",)),
    "prune_seed": Alias(_SEEDS, note="the pruning scores' seed (computed once)"),
    "surrogate_epochs": Alias(("prune.surrogate.train.epochs",)),
    "recursion_depth": Alias(("prune.influence.recursion_depth",)),
    "cutoff_len": Alias(("prune.effort.cutoff_len", "finetune.cutoff_len", "generate.cutoff_len")),
    "batch_size": Alias(("finetune.batch_size",)),
    "micro_batch_size": Alias(("finetune.micro_batch_size",)),
    "num_epochs": Alias(("finetune.num_epochs",), note="LoRA epochs per run"),
    "learning_rate": Alias(("finetune.learning_rate",)),
    "warmup_steps": Alias(("finetune.warmup_steps",)),
    "train_on_inputs": Alias(("finetune.train_on_inputs",),
                             note="true: loss on the whole prompt (paper); false: on the response only (cpu preset)"),
    "max_steps": Alias(("finetune.max_steps",), note="LoRA optimiser steps per run (overrides --num_epochs)"),
    "val_set_size": Alias(("finetune.val_set_size",)),
    "eval_steps": Alias(("finetune.eval_steps",)),
    "num_beams": Alias(("generate.num_beams",)),
    "max_new_tokens": Alias(("generate.max_new_tokens",)),
    "gen_batch_size": Alias(("generate.batch_size",)),
    "gen_engine": Alias(("generate.engine",), note="auto | fast (prefill once, CPU default) | hf (transformers')"),
    "gen_precision": Alias(("generate.precision",), note="fp32 | bf16 (fast engine, CPU with native bf16) | auto"),
    "train_precision": Alias(("finetune.precision",), note="fp32 | bf16 autocast (CPU with native bf16) | auto"),
}

# The order of the flat configuration in config.json and REPORT.md (as before the sections).
SUMMARY_ORDER = (
    "data_dir", "data_name", "preset", "out_dir", "n", "strategies", "seeds", "pool_users", "test_users", "test_seed",
    "base_model", "device", "lamda", "k", "hard_prune", "prune_seed", "surrogate_epochs", "recursion_depth",
    "cutoff_len", "batch_size", "micro_batch_size", "num_epochs", "learning_rate", "warmup_steps", "train_on_inputs",
    "max_steps", "val_set_size", "eval_steps", "num_beams", "max_new_tokens", "gen_batch_size", "max_items",
    "sasrec_seeds", "sasrec_epochs", "sasrec_eval_every", "sasrec_patience", "record_dir", "gen_engine",
    "gen_precision", "train_precision", "ground_precision", "reference_seeds", "signals",
)

# The study's defaults where they differ from the stage configurations' own (a CPU-sized run).
STUDY_DEFAULTS: dict[str, dict[str, Any]] = {
    "prune": {"select.n_fewshot": 128, "effort.cutoff_len": 256},
    "finetune": {"batch_size": 8, "micro_batch_size": 4, "num_epochs": 1.0, "learning_rate": 3e-4, "warmup_steps": 2,
                 "cutoff_len": 256, "val_set_size": 8, "eval_steps": 8, "logging_steps": 1},
    "generate": {"num_beams": 1, "max_new_tokens": 24, "batch_size": 8, "cutoff_len": 256},
}


@dataclass
class StudyConfig(FlatView):
    preset: str | None = None
    out_dir: str | None = None  # default results/<data_name>_<n>
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    test_users: int | None = None  # a fixed random sample of N test users (None: all)
    test_seed: int = 0
    max_items: int | None = None  # rank among the first N items + targets (None: the whole catalogue)
    ground_precision: str = "fp32"  # embeddings for grounding: fp32 | bf16 (CPU with native bf16) | auto
    # the run records (selections, metrics, per-user hit ranks): None = docs/study/<preset> for a
    # named preset (relative to the working directory; bench/reproduce.py anchors it at the
    # repository), else <out>/records
    record_dir: str | None = None
    # which signals `--only runs` computes (the report shows every recorded run of both)
    signals: tuple[str, ...] = SIGNALS
    # second signal: SASRec trained on the selection only
    sasrec_seeds: tuple[int, ...] | None = None  # its seeds (None: seeds); cheap, so it may have more
    # the seeds of the full-data reference row (SASRec on every candidate; None: sasrec_seeds)
    reference_seeds: tuple[int, ...] | None = None
    sasrec_epochs: int = 100
    sasrec_eval_every: int = 10
    sasrec_patience: int = 2
    prune: PruneConfig = field(default_factory=lambda: override(PruneConfig(), STUDY_DEFAULTS["prune"]))
    finetune: FinetuneConfig = field(default_factory=lambda: override(FinetuneConfig(), STUDY_DEFAULTS["finetune"]))
    generate: InferenceConfig = field(default_factory=lambda: override(InferenceConfig(), STUDY_DEFAULTS["generate"]))

    @staticmethod
    def _aliases() -> dict[str, Alias]:
        return STUDY_ALIASES

    @classmethod
    def flat(cls, **values: Any) -> StudyConfig:
        """From flat names (:data:`STUDY_ALIASES`, own fields) or dotted ones."""
        return from_flat(cls, STUDY_ALIASES, **values)

    @classmethod
    def from_preset(cls, preset: str | None, **overrides: Any) -> StudyConfig:
        """The defaults, then the preset's overrides, then ``overrides`` (None values skipped)."""
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown --preset {preset!r}; known: {', '.join(PRESETS)}")
        cfg = from_flat(cls, STUDY_ALIASES, base=cls(preset=preset), **(PRESETS[preset] if preset else {}))
        return from_flat(cls, STUDY_ALIASES, base=cfg, **{k: v for k, v in overrides.items() if v is not None})

    def summary(self) -> dict[str, Any]:
        """The flat view written into ``config.json`` and REPORT.md (the earlier flat configuration)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("prune", "finetune", "generate")}
        values = {**own, **{name: get(self, a.targets[0]) for name, a in STUDY_ALIASES.items()}}
        return {name: values[name] for name in SUMMARY_ORDER}

    @property
    def out(self) -> Path:
        return Path(self.out_dir or Path("results") / f"{self.data_name}_{self.n}")

    @property
    def records(self) -> Path:
        """The record folder (:mod:`dealrec.study.records`): ``record_dir``, else ``docs/study/<preset>``
        for a named preset, else ``<out>/records``."""
        if self.record_dir:
            return Path(self.record_dir)
        if self.preset:
            return Path("docs") / "study" / self.preset
        return self.out / "records"

    @property
    def signal_seeds(self) -> dict[str, tuple[int, ...]]:
        """The seeds of each signal: the LLM's ``seeds``, SASRec's ``sasrec_seeds`` (or ``seeds``)."""
        return {"llm": tuple(self.seeds), "sasrec": tuple(self.sasrec_seeds or self.seeds)}

    @property
    def reference(self) -> tuple[int, ...]:
        """The seeds of the full-data reference row: ``reference_seeds``, else SASRec's."""
        return tuple(self.signal_seeds["sasrec"] if self.reference_seeds is None else self.reference_seeds)

    @property
    def all_seeds(self) -> tuple[int, ...]:
        """Every seed of either signal (a selection per strategy and seed), in order."""
        return tuple(dict.fromkeys((*self.seeds, *(self.sasrec_seeds or ()))))

    def validate(self) -> None:
        """Fail before any expensive work, naming the argument."""
        if self.n <= 0:
            raise ValueError(f"--n must be > 0, got {self.n}")
        if not self.strategies:
            raise ValueError("--strategies: give at least one strategy")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"--strategies: unknown {unknown}; registered: {', '.join(sorted(STRATEGIES))}")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"--strategies lists a strategy twice: {list(self.strategies)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct and non-empty, got {list(self.seeds)}")
        if self.sasrec_seeds is not None and (not self.sasrec_seeds or len(set(self.sasrec_seeds)) != len(self.sasrec_seeds)):
            raise ValueError(f"--sasrec_seeds must be distinct and non-empty (or omitted), got {list(self.sasrec_seeds)}")
        if self.reference_seeds is not None and len(set(self.reference_seeds)) != len(self.reference_seeds):
            raise ValueError(f"--reference_seeds must be distinct, got {list(self.reference_seeds)}")
        if not self.signals or set(self.signals) - set(SIGNALS):
            raise ValueError(f"--signals: choose from {', '.join(SIGNALS)}, got {list(self.signals)}")
        for name in ("pool_users", "test_users", "max_items"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"--{name} must be > 0 (or omitted), got {v}")
        if self.micro_batch_size <= 0 or self.batch_size < self.micro_batch_size:
            raise ValueError(f"--batch_size {self.batch_size} must be ≥ --micro_batch_size {self.micro_batch_size} > 0")
        models = {self.prune.effort.base_model, self.finetune.base_model, self.generate.base_model}
        if len(models) > 1:
            raise ValueError(f"--base_model: the sections name different models {sorted(map(str, models))}; set one")
        for name in ("num_beams", "max_new_tokens", "gen_batch_size", "sasrec_epochs", "surrogate_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("num_epochs", "learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"--max_steps must be -1 (off) or ≥ 1, got {self.max_steps}")
        self.prune_config().validate()

    def prune_config(self, strategy: str = "dealrec") -> PruneConfig:
        """The pruning configuration of ``strategy`` (its registered scoring settings applied).

        A score file given with ``--prune.influence_scores`` / ``--prune.effort_scores`` holds the
        scores of the configured settings, so it is not used for a strategy whose registration
        changes that score's settings (``dealrec-stable``: expected negatives, base-weight effort)."""
        cfg = override(self.prune, {"score_dir": str(self.out / "scores"), "selected_dir": str(self.out / "selected")})
        scoring = strategy_spec(strategy).scoring
        given = {}
        for name in ("influence", "effort"):
            if any(k.startswith(f"{name}.") and get(cfg, k) != v for k, v in scoring.items()):
                given[f"{name}_scores"] = None
        return override(cfg, given).for_strategy(strategy) if given else cfg.for_strategy(strategy)

    def finetune_config(self, train_file: Path, val_file: Path, output_dir: Path, seed: int) -> FinetuneConfig:
        return dataclasses.replace(self.finetune, train_file=str(train_file), val_file=str(val_file),
                                   output_dir=str(output_dir), seed=seed)

    def inference_config(self, test_file: Path, result_file: Path, lora_weights: Path) -> InferenceConfig:
        return dataclasses.replace(self.generate, test_file=str(test_file), result_file=str(result_file),
                                   lora_weights=str(lora_weights))

    def sasrec_config(self, seed: int) -> SurrogateConfig:
        return SurrogateConfig(
            epochs=self.sasrec_epochs, eval_every=self.sasrec_eval_every, patience=self.sasrec_patience, seed=seed
        )


# ------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------


_RECORD_ONLY = ("key", "params", "written", "users_key", "metrics", "timings", "finetune_ran")


def _finetune_ran(adapter: Path) -> dict[str, Any]:
    """What the LoRA run did beyond its key (an adapter made before an option existed ran its old way)."""
    m = read_json(adapter / FINETUNE_MANIFEST)
    return {"precision_ran": m.get("precision_ran"), "loss_positions_ran": m.get("loss_positions_ran", "all"),
            "global_step": m.get("global_step"), "best_eval_loss": m.get("best_eval_loss")}


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    """A record's row: its numbers without the bookkeeping (key, params, full metrics, timings)."""
    return {k: v for k, v in rec.items() if k not in _RECORD_ONLY}


def _at(metrics: dict[str, Any], ks: Sequence[int]) -> dict[str, float]:
    """{"Recall@10": …, …} from a metrics dict with per-k lists aligned to ``ks``."""
    out = {}
    for m in ("Recall", "NDCG"):
        for k in REPORT_KS:
            out[f"{m}@{k}"] = float(metrics[m][list(ks).index(k)])
    return out


class Study:
    """The runs of one :class:`StudyConfig` (orchestration and caching; the report is rendered by
    :mod:`dealrec.study.report`); every method reuses what is on disk."""

    def __init__(self, cfg: StudyConfig):
        cfg.validate()
        self.cfg = cfg
        self.out = cfg.out
        self.data = load_dataset(cfg.data_dir, cfg.data_name)
        self.pool = self.data.subset_users(cfg.pool_users)
        self.eligible = eligible_mask(self.pool)
        self.candidates = [int(u) for u in torch.nonzero(self.eligible).flatten()]
        if cfg.n > len(self.candidates):
            raise ValueError(
                f"--n {cfg.n} exceeds the {len(self.candidates)} eligible candidates (users with ≥ 3 train items among "
                f"the first {self.pool.n_users}); lower --n or raise --pool_users"
            )
        self.train_hash = file_hash(self.data.root / "sequential_train.txt")
        self.records = Records(cfg.records)
        self._scores: dict[str, ScoreSet] = {}
        self._tokenizer: Any = None
        self._base: Any = None

    # -- shared pieces ------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from dealrec.llm.model import load_tokenizer

            self._tokenizer = load_tokenizer(self.cfg.base_model)
        return self._tokenizer

    @property
    def base(self) -> Any:
        """The base LLM without adapter (grounding embeds with it), loaded once."""
        if self._base is None:
            from dealrec.llm.model import load_base_model

            self._base = load_base_model(self.cfg.base_model, self.cfg.device)
        return self._base

    def test_user_ids(self) -> list[int]:
        """The LLM signal's test users: a fixed random sample of ``test_users`` (user order), or all."""
        cfg = self.cfg
        users = self.data.test_users
        if cfg.test_users is not None and cfg.test_users < len(users):
            users = sorted(random.Random(cfg.test_seed).sample(users, cfg.test_users))
        return users

    def test_file(self) -> Path:
        """One test file for every run: :meth:`test_user_ids`' examples, in that order."""
        cfg = self.cfg
        path = self.out / "test.json"
        users = self.test_user_ids()
        key = {"data_name": cfg.data_name, "train": file_hash(self.data.root / "sequential_train.txt"),
               "users": cache_key({"u": users}), "cutoff_len": cfg.cutoff_len, "model": model_id(cfg.base_model)}
        if not cached(path, key):
            write_json(path, build_examples(self.data, users, "test", self.tokenizer, cfg.cutoff_len))
            write_manifest(path, key, data_name=cfg.data_name, n_users=len(users))
        return path

    def scores(self, strategy: str) -> ScoreSet:
        """The scores ``strategy`` needs (:func:`dealrec.prune.pipeline.compute_scores`, cached in ``<out>/scores``)."""
        pcfg = self.cfg.prune_config(strategy)
        needs = strategy_spec(strategy).needs
        tag = f"{pcfg.influence.negatives}-{pcfg.effort.target}-{'-'.join(sorted(needs))}"
        if tag not in self._scores:
            # shared by parallel study processes (--only prune / runs): one computes, the others wait and reuse
            with output_lock(pcfg.scores_path, flag="--out_dir", wait=True):
                self._scores[tag] = ScoreSet(**compute_scores(pcfg, self.pool, needs), eligible=self.eligible)
        return self._scores[tag]

    def prune(self) -> None:
        """The scores of every strategy that still has a selection to make (none when every
        selection is in the records)."""
        for s in self.cfg.strategies:
            if any(self.records.get("selection", f"{s}_s{seed}", self.selection_params(s, seed)) is None
                   for seed in self.cfg.all_seeds):
                self.scores(s)

    def embed(self) -> None:
        """The item-title embeddings grounding needs (cached per model and catalogue), ahead of the runs."""
        from dealrec.llm.ground import item_embeddings

        items = None
        if self.cfg.max_items is not None and self.cfg.max_items < self.data.n_items:
            targets = {i for r in read_json(self.test_file()) for i in r["target_ids"]}
            items = sorted(set(range(self.cfg.max_items)) | targets)
        item_embeddings(self.cfg.base_model, self.data, self.base, self.tokenizer, items, device=self.cfg.device,
                        precision=self.ground_precision())  # the cache evaluate_results will look for

    def ground_precision(self) -> str:
        """What ``--ground_precision`` runs on this device (``fp32`` or ``bf16``)."""
        return cpu_precision(self.cfg.ground_precision, self.cfg.device, "--ground_precision", auto=GROUND_AUTO,
                             warn=False)

    def prune_timings(self) -> dict[str, float]:
        """Seconds of each pruning stage, read from the score manifests."""
        pcfg = self.cfg.prune_config()
        files = {"surrogate": surrogate_file(pcfg), "influence": influence_file(pcfg),
                 "effort": effort_file(pcfg)}
        out = {}
        for name, f in files.items():
            m = f.with_name(f.name + ".json")
            if m.is_file():
                sec = read_json(m).get("seconds")
                if sec is not None:
                    out[name] = round(float(sec), 1)
        return out

    # -- the keys of the records ------------------------------------------------------------

    def selection_params(self, strategy: str, seed: int) -> dict[str, Any]:
        """What determines a selection: the data, the pool, the strategy's scoring settings (not
        where the scores came from), n, the selection knobs and the seed."""
        cfg = self.cfg
        pcfg = cfg.prune_config(strategy)
        needs = set(strategy_spec(strategy).needs)
        scoring: dict[str, Any] = {}
        if needs & {"influence", "baselines"}:
            scoring["surrogate"] = {"name": pcfg.surrogate.name, "config": pcfg.surrogate.config().key()}
        if "influence" in needs:
            inf = dataclasses.asdict(pcfg.influence_config())
            inf.pop("chunk_positions", None)
            scoring["influence"] = inf
        if "effort" in needs:
            eff = dataclasses.asdict(pcfg.effort)
            for k in ("max_batch_tokens", "max_batch_size", "chunk_size", "force_precision", "prefix_reuse"):
                eff.pop(k, None)
            eff["base_model"] = model_id(eff["base_model"])
            scoring["effort"] = eff
        return {"data_name": cfg.data_name, "train": self.train_hash, "pool_users": cfg.pool_users,
                "strategy": strategy, "seed": seed, "n": cfg.n, "lamda": cfg.lamda, "k": cfg.k,
                "hard_prune": cfg.hard_prune, "scoring": scoring}

    def llm_params(self, strategy: str, seed: int, users: list[int]) -> dict[str, Any]:
        """What determines an LLM run: the selection, the fine-tuning and generation settings
        (without paths and throughput-only settings), the test users and the grounding."""
        cfg = self.cfg
        ft = dataclasses.asdict(cfg.finetune)
        for k in FINETUNE_NOT_IN_KEY:  # as the adapter's own key
            ft.pop(k, None)
        ft["base_model"] = model_id(ft["base_model"])
        ft["seed"] = seed
        if "precision" not in cfg.finetune.key():  # as the adapter's own key: fp32 runs stay keyed as before
            ft.pop("precision", None)
        gen = dataclasses.asdict(cfg.generate)
        for k in ("test_file", "result_file", "lora_weights", "overwrite", "progress", "batch_size", "max_test_users",
                  "engine"):
            gen.pop(k, None)
        if cfg.generate.resolved_precision() == "fp32":
            gen.pop("precision", None)
        ground = {"model": model_id(cfg.base_model), "pooling": POOLING, "distance": "L2"}
        if self.ground_precision() != "fp32":
            ground["precision"] = "bf16-autocast"
        gen["base_model"] = model_id(gen["base_model"])
        return {"data_name": cfg.data_name, "train": self.train_hash, "strategy": strategy, "seed": seed,
                "selection": cache_key({"u": users}), "n_selected": len(users), "finetune": ft, "generate": gen,
                "test_users": users_key(self.test_user_ids()), "max_items": cfg.max_items,
                "ground": ground}

    def sasrec_params(self, seed: int, users: list[int]) -> dict[str, Any]:
        """What determines a SASRec run: the data, the training users, the training settings."""
        cfg = self.cfg
        return {"data_name": cfg.data_name, "train": self.train_hash, "users": cache_key({"u": sorted(users)}),
                "config": cfg.sasrec_config(seed).key()}

    # -- one run ------------------------------------------------------------------------------

    def run_dir(self, strategy: str, seed: int) -> Path:
        return self.out / "runs" / f"{strategy}_s{seed}"

    def selection(self, strategy: str, seed: int, compute: bool = True) -> list[int]:
        """The selected users of ``strategy`` with ``seed``: from the record, else selected from
        the scores (computed or reused from ``<out>/scores``) and recorded."""
        cfg = self.cfg
        name = f"{strategy}_s{seed}"
        params = self.selection_params(strategy, seed)
        rec = self.records.get("selection", name, params)
        if rec is not None:
            return [int(u) for u in rec["indices"]]
        if not compute:
            raise FileNotFoundError(f"no record of the selection {name} in {self.records.root}; run the study first")
        scores = self.scores(strategy)
        with Timer() as t:
            res = run_strategy(strategy, scores, cfg.n, seed=seed, lamda=cfg.lamda, k=cfg.k,
                               hard_prune=cfg.hard_prune)
        users = [int(i) for i in res.indices]
        if res.shortfall:
            LOG.warning("%s seed %d: selection is %d short of n=%d", strategy, seed, res.shortfall, cfg.n)
        summary = {k: v for k, v in res.to_dict().items() if k not in ("indices", "hard_pruned")}
        used = {k: tensor_hash(torch.as_tensor(getattr(scores, k))) for k in ("influence", "effort", "el2n", "grand")
                if getattr(scores, k, None) is not None}
        self.records.put("selection", name, params, {"indices": users, "selection": summary,
                                                     "scores": used, "seconds": round(t.seconds, 3)})
        return users

    def _timings(self, run: Path, **new: float) -> dict[str, float]:
        path = run / "timings.json"
        t = read_json(path) if path.is_file() else {}
        if new:
            t.update({k: round(v, 1) for k, v in new.items()})
            write_json(path, t)
        return t

    def llm_run(self, strategy: str, seed: int, users: list[int]) -> dict[str, Any]:
        """Few-shot fine-tune, generate, ground and score one run (BIGRec, paper §5.1); the
        record (metrics, per-user hit ranks, timings) when there is one."""
        rec = self.records.get("llm", f"{strategy}_s{seed}", self.llm_params(strategy, seed, users))
        if rec is not None:  # recorded: no run folder, no lock
            return {**_row(rec), **rec.get("timings", {})}
        with output_lock(self.run_dir(strategy, seed), flag="--out_dir", wait=True):
            return self._llm_run(strategy, seed, users)

    def _llm_run(self, strategy: str, seed: int, users: list[int]) -> dict[str, Any]:
        cfg = self.cfg
        name = f"{strategy}_s{seed}"
        params = self.llm_params(strategy, seed, users)
        rec = self.records.get("llm", name, params)
        if rec is not None:
            return {**_row(rec), **rec.get("timings", {})}
        run = self.run_dir(strategy, seed)
        paths = write_fewshot(self.data, users, run / "fewshot", self.tokenizer, cfg.cutoff_len, n_label=cfg.n,
                              base_model=cfg.base_model, splits=("train", "valid"), progress=False)
        ft = cfg.finetune_config(paths["train"], paths["valid"], run / "adapter", seed)
        if not is_done(ft):
            with Timer() as t:
                result = finetune(ft)
            self._timings(run, finetune=t.seconds)
            del result
        icfg = cfg.inference_config(self.test_file(), run / "result.json", run / "adapter")
        if not cached(icfg.result_file, icfg.key()):
            with Timer() as t:
                run_inference(icfg)
            self._timings(run, generate=t.seconds)
        with Timer() as t:
            report = evaluate_results(icfg.result_file, self.data, cfg.base_model, device=cfg.device,
                                      max_items=cfg.max_items, model=self.base, tokenizer=self.tokenizer,
                                      precision=cfg.ground_precision)
        timings = self._timings(run, ground=t.seconds)
        per_user = report.pop("per_user")
        if per_user["users"] != self.test_user_ids():
            raise ValueError(f"{icfg.result_file}: its users are not the study's fixed test users")
        record = {"strategy": strategy, "seed": seed, **_at(report, report["ks"]),
                  "exact_title_share": report["exact_title_share"], "n_users": report["n_users"],
                  "n_items_ranked": report["n_items_ranked"], "timings": timings,
                  "finetune_ran": _finetune_ran(Path(ft.output_dir)),
                  "metrics": {k: report[k] for k in ("ks", "Recall", "NDCG", "Precision", "MRR", "n_empty",
                                                     "catalogue", "precision")}}
        rec = self.records.put("llm", name, params, record, per_user["hit_ranks"], per_user["users"])
        return {**_row(rec), **timings}

    def sasrec_run(self, label: str, seed: int, users: list[int]) -> dict[str, Any]:
        """Second signal: a fresh SASRec trained on ``users``' sequences only, full test set; the
        record (metrics, per-user hit ranks) when there is one."""
        cfg = self.cfg
        name = f"{label}_s{seed}"
        params = self.sasrec_params(seed, users)
        rec = self.records.get("sasrec", name, params)
        if rec is not None:
            return _row(rec)
        scfg = cfg.sasrec_config(seed)
        lock = self.out / "sasrec" / f"{name}.json"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with output_lock(lock, flag="--out_dir", wait=True):  # the reference row is run by every --only runs process
            rec = self.records.get("sasrec", name, params)
            if rec is not None:
                return _row(rec)
            return self._sasrec_train(label, seed, users, name, params, scfg)

    def _sasrec_train(self, label: str, seed: int, users: list[int], name: str, params: dict[str, Any],
                      scfg: SurrogateConfig) -> dict[str, Any]:
        cfg = self.cfg
        model = build_surrogate("SASRec", self.data.n_items, scfg)
        with Timer() as t:
            res = train_surrogate(model, self.data, scfg, cfg.device, train_users=sorted(users))
        record = {"strategy": label, "seed": seed, **_at(res.test, scfg.ks), "best_epoch": res.best_epoch,
                  "n_test_users": res.test["n_users"], "seconds": round(t.seconds, 1),
                  "metrics": {"ks": list(scfg.ks), **{k: res.test[k] for k in ("Recall", "NDCG", "Precision", "MRR")}}}
        self.records.write_users("sasrec", res.test_users)
        return _row(self.records.put("sasrec", name, params, record, res.test_hit_ranks, res.test_users))

    def planned(self) -> list[tuple[str, str, int]]:
        """Every (signal, label, seed) run of the study: per strategy its seeds of each signal, then
        the SASRec full-data reference row with ``reference_seeds``."""
        seeds = self.cfg.signal_seeds
        out = [(signal, strategy, seed) for strategy in self.cfg.strategies for seed in self.cfg.all_seeds
               for signal in SIGNALS if seed in seeds[signal]]
        return out + [("sasrec", REFERENCE, seed) for seed in self.cfg.reference]

    def run_record(self, signal: str, label: str, seed: int) -> dict[str, Any] | None:
        """The record of one planned run under the current settings (None: not run yet, or stale)."""
        if label == REFERENCE:
            return self.records.get("sasrec", f"{REFERENCE}_s{seed}", self.sasrec_params(seed, self.candidates))
        try:
            users = self.selection(label, seed, compute=False)
        except FileNotFoundError:
            return None
        params = self.llm_params(label, seed, users) if signal == "llm" else self.sasrec_params(seed, users)
        return self.records.get(signal, f"{label}_s{seed}", params)

    def pending(self, signals: Sequence[str] | None = None) -> list[tuple[str, str, int]]:
        """The planned runs of ``signals`` (default: the configured ``signals``) without a record (a
        missing selection counts as pending runs of both signals)."""
        wanted = set(self.cfg.signals if signals is None else signals)
        return [(sig, label, seed) for sig, label, seed in self.planned()
                if sig in wanted and self.run_record(sig, label, seed) is None]

    def runs(self) -> None:
        """Every pending run of the configured ``signals``, strategy by strategy (per seed the cheap
        SASRec run before the LLM run); each run's record is written as it finishes."""
        seeds, signals = self.cfg.signal_seeds, self.cfg.signals
        if "llm" in signals:
            self.records.write_users("llm", self.test_user_ids())
        pending = self.pending()
        LOG.info("%d run(s) without a record in %s: %s", len(pending), self.records.root,
                 ", ".join(f"{sig} {s} s{seed}" for sig, s, seed in pending) or "none")
        for strategy in self.cfg.strategies:
            for seed in self.cfg.all_seeds:
                LOG.info("== run %s seed %d", strategy, seed)
                users = self.selection(strategy, seed)
                if seed in seeds["sasrec"] and "sasrec" in signals:
                    self.sasrec_run(strategy, seed, users)
                if seed in seeds["llm"] and "llm" in signals:
                    self.llm_run(strategy, seed, users)
                faults.step("study")
        if "sasrec" in signals:
            for seed in self.cfg.reference:
                self.sasrec_run(REFERENCE, seed, self.candidates)

    # -- report -------------------------------------------------------------------------------

    def collect(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], list[tuple[str, str, int]]]:
        """Per-run rows of both signals, their per-user hit ranks and the planned runs without a
        record yet, from the records only (a study spread over sittings reports what it has)."""
        rows: dict[str, list[dict[str, Any]]] = {"llm": [], "sasrec": []}
        per_user: dict[str, dict[str, dict[int, Any]]] = {"llm": {}, "sasrec": {}}
        users_keys: dict[str, set[str]] = {"llm": set(), "sasrec": set()}
        missing = []
        planned = self.planned()
        order = {label: i for i, label in enumerate([*self.cfg.strategies, REFERENCE])}
        for signal, label, seed in sorted(planned, key=lambda r: (order[r[1]], SIGNALS.index(r[0]), r[2])):
            rec = self.run_record(signal, label, seed)
            if rec is None:
                missing.append((signal, label, seed))
                continue
            rows[signal].append({**_row(rec), "strategy": label, "seed": seed, **rec.get("timings", {})})
            users_keys[signal].add(rec["users_key"])
            per_user[signal].setdefault(label, {})[seed] = self.records.hit_ranks(signal, f"{label}_s{seed}", rec)
        for signal, keys in users_keys.items():
            if len(keys) > 1:
                raise ValueError(f"the {signal} records were made on different test users; rerun the stale ones")
        if not rows["llm"] and not rows["sasrec"]:
            raise FileNotFoundError(f"no run of this study has a record in {self.records.root}; "
                                    "run the study with --only runs first")
        return rows["llm"], rows["sasrec"], per_user, [r for r in planned if r in missing]

    def record_prune_timings(self) -> dict[str, float]:
        """The pruning stages' seconds: the score manifests' (when there) merged into the record
        folder's ``prune.json``, so that a report made from the records alone still has them."""
        path = self.records.root / "prune.json"
        t = read_json(path) if path.is_file() else {}
        new = self.prune_timings()
        if new and {**t, **new} != t:
            t.update(new)
            write_json(path, t)
        return t

    def report(self, wall_seconds: float | None = None) -> Path:
        """Collect the rows and write REPORT.md, results.json and report.png (:func:`write_report`)."""
        llm_rows, sas_rows, per_user, missing = self.collect()
        facts = StudyFacts(len(self.candidates), self.pool.n_users, self.data.n_users, self.data.n_items,
                           self.record_prune_timings(), len(self.test_user_ids()), missing)
        return write_report(self.out, self.cfg, llm_rows, sas_rows, facts, wall_seconds, per_user=per_user)


ONLY = ("prune", "embed", "runs", "report", "all")


def run_study(cfg: StudyConfig, only: str = "all") -> Path | None:
    """Run the study (``only``: prune | embed | runs | report | all); returns the report path if written."""
    if only not in ONLY:
        raise ValueError(f"--only must be one of {', '.join(ONLY)}; got {only!r}")
    start = time.time()
    study = Study(cfg)
    check_writable(cfg.out, "--out_dir")
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json(cfg.out / "config.json", cfg.summary())
    LOG.info("records: %s", cfg.records)
    if only == "embed":
        study.embed()
    if only in ("prune", "runs", "all"):
        study.prune()
        study.record_prune_timings()
    if only in ("runs", "all"):
        study.runs()
    if only in ("report", "all"):
        return study.report(time.time() - start if only == "all" else None)
    return None


__all__ = [
    "METRICS", "PAPER_TABLE2", "PER_RUN", "PRESETS", "STUDY_ALIASES", "Study", "StudyConfig", "markdown_table", "mean_std",
    "plot_report", "run_study", "summarize",
]
