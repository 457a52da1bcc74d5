"""The study's configuration: :class:`StudyConfig` and the one declaration of its flat settings.

A :class:`StudyConfig` holds a :class:`~dealrec.prune.config.PruneConfig`, a
:class:`~dealrec.llm.finetune.FinetuneConfig`, an :class:`~dealrec.llm.generate.InferenceConfig`
and a :class:`~dealrec.tiger.cli.TigerConfig` plus the study's own settings. :data:`SETTINGS`
declares, once and in the order in which ``config.json`` and ``REPORT.md`` list them, the study's
flat names: each either stands for one or more section settings (``n`` =
``prune.select.n_fewshot``; the study's default for them when it differs from the section's own)
or is a field of :class:`StudyConfig`. The alias table, the sections' defaults and the summary
order are derived from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dealrec.config import UNSET, Alias, FlatView, from_flat, get, override
from dealrec.llm.finetune import FinetuneConfig
from dealrec.llm.generate import InferenceConfig
from dealrec.presets import DEFAULT_STRATEGIES
from dealrec.presets import STUDY_PRESETS as PRESETS
from dealrec.prune.config import PruneConfig
from dealrec.select import STRATEGIES, strategy_spec
from dealrec.surrogate.trainer import SurrogateConfig
from dealrec.tiger.cli import TigerConfig

SIGNALS = ("llm", "sasrec", "tiger")
# The signals a study plans whatever ``signals`` says (its report shows every recorded run of
# them); TIGER's runs are planned only where ``signals`` names it.
DEFAULT_SIGNALS = ("llm", "sasrec")
SECTIONS = ("prune", "finetune", "generate", "tiger")
# The folder of a named preset's records, relative to the repository (or working directory).
RECORDS_ROOT = Path("records") / "study"


@dataclass(frozen=True)
class StudySetting:
    """One flat setting of the study: ``targets`` are the section settings it sets (none: a field
    of :class:`StudyConfig`); ``default`` is the study's default for them where it differs from
    the sections' own (a CPU-sized run); ``summary``: listed in ``config.json`` and REPORT.md."""

    name: str
    targets: tuple[str, ...] = ()
    default: Any = UNSET
    note: str = ""
    summary: bool = True


_SEEDS = ("prune.surrogate.train.seed", "prune.influence.seed", "prune.effort.seed", "prune.select.seed")
_CUTOFF = ("prune.effort.cutoff_len", "finetune.cutoff_len", "generate.cutoff_len")
_MODEL = ("prune.effort.base_model", "finetune.base_model", "generate.base_model", "tiger.base_model")

SETTINGS: tuple[StudySetting, ...] = (
    StudySetting("data_dir", ("prune.data_dir",)),
    StudySetting("data_name", ("prune.data_name",)),
    StudySetting("preset"),
    StudySetting("out_dir"),
    StudySetting("n", ("prune.select.n_fewshot",), 128, note="selected samples per run"),
    StudySetting("strategies"),
    StudySetting("seeds"),
    StudySetting("pool_users", ("prune.max_users",), note="candidates = the first N users (None: all)"),
    StudySetting("test_users"),
    StudySetting("test_seed"),
    StudySetting("base_model", _MODEL),
    StudySetting("device", ("prune.device",)),
    StudySetting("lamda", ("prune.select.lamda",)),
    StudySetting("k", ("prune.select.k",)),
    StudySetting("hard_prune", ("prune.select.hard_prune",)),
    StudySetting("surrogate", ("prune.surrogate.name",), note="the surrogate behind the influence scores"),
    StudySetting("prune_seed", _SEEDS, note="the pruning scores' seed (computed once)"),
    StudySetting("surrogate_epochs", ("prune.surrogate.train.epochs",)),
    StudySetting("recursion_depth", ("prune.influence.recursion_depth",)),
    StudySetting("cutoff_len", _CUTOFF, 256),
    StudySetting("batch_size", ("finetune.batch_size",), 8),
    StudySetting("micro_batch_size", ("finetune.micro_batch_size",), 4),
    StudySetting("num_epochs", ("finetune.num_epochs",), 1.0, note="LoRA epochs per run"),
    StudySetting("learning_rate", ("finetune.learning_rate",), 3e-4),
    StudySetting("warmup_steps", ("finetune.warmup_steps",), 2),
    StudySetting("train_on_inputs", ("finetune.train_on_inputs",),
                 note="true: loss on the whole prompt (paper); false: on the response only (cpu preset)"),
    StudySetting("max_steps", ("finetune.max_steps",), note="LoRA optimiser steps per run (overrides --num_epochs)"),
    StudySetting("val_set_size", ("finetune.val_set_size",), 8),
    StudySetting("eval_steps", ("finetune.eval_steps",), 8),
    StudySetting("num_beams", ("generate.num_beams",), 1),
    StudySetting("max_new_tokens", ("generate.max_new_tokens",), 24),
    StudySetting("gen_batch_size", ("generate.batch_size",), 8),
    StudySetting("max_items"),
    StudySetting("sasrec_seeds"),
    StudySetting("sasrec_epochs"),
    StudySetting("sasrec_eval_every"),
    StudySetting("sasrec_patience"),
    StudySetting("record_dir"),
    StudySetting("gen_engine", ("generate.engine",), note="auto | fast (prefill once, CPU default) | hf (transformers')"),
    StudySetting("gen_precision", ("generate.precision",),
                 note="fp32 | bf16 (fast engine, CPU with native bf16) | auto"),
    StudySetting("train_precision", ("finetune.precision",), note="fp32 | bf16 autocast (CPU with native bf16) | auto"),
    StudySetting("ground_precision"),
    StudySetting("reference_seeds"),
    StudySetting("signals"),
    StudySetting("tiger_seeds"),
    StudySetting("llm_strategies"),
    StudySetting("tiger_strategies"),
    StudySetting("logging_steps", ("finetune.logging_steps",), 1, summary=False),
    # last parts that a TIGER setting shares with the pruning or generation section: these short
    # names stand for the latter (only a unique last part is a short name by itself)
    StudySetting("weight_decay", ("prune.surrogate.train.weight_decay",), summary=False),
    StudySetting("patience", ("prune.surrogate.train.patience",), summary=False),
    StudySetting("dropout", ("prune.surrogate.train.dropout",), summary=False),
    StudySetting("ks", ("prune.surrogate.train.ks",), summary=False),
    StudySetting("progress", ("generate.progress",), summary=False),
)

STUDY_ALIASES: dict[str, Alias] = {s.name: Alias(s.targets, note=s.note) for s in SETTINGS if s.targets}
SUMMARY_ORDER = tuple(s.name for s in SETTINGS if s.summary)


def _section_defaults(section: str) -> dict[str, Any]:
    """The study's defaults of one section's settings (dotted names inside the section)."""
    out = {}
    for s in SETTINGS:
        if s.default is UNSET:
            continue
        for t in s.targets:
            head, _, rest = t.partition(".")
            if head == section:
                out[rest] = s.default
    return out


STUDY_DEFAULTS: dict[str, dict[str, Any]] = {section: _section_defaults(section) for section in SECTIONS}

# Settings the study sets per run (paths inside <out>): not options of its command line.
PER_RUN: dict[str, tuple[str, ...]] = {
    "prune": ("score_dir", "selected_dir"),
    "finetune": ("train_file", "val_file", "output_dir"),
    "generate": ("test_file", "result_file", "lora_weights"),
    "tiger": ("train_data_path", "val_data_path", "test_data_path", "output_dir", "result_file"),
}
# Settings of a section that the study sets per run from its own (the run's seed, the data set,
# the device; TIGER scores every test user of the data set): not options of its command line either.
FROM_STUDY: dict[str, tuple[str, ...]] = {"tiger": ("seed", "gpu", "data_dir", "data_name", "max_test_users")}
PER_RUN_FLAGS = tuple(f"{section}.{name}" for table in (PER_RUN, FROM_STUDY) for section, names in table.items()
                      for name in names)


def per_run(section: str, cfg: Any, **paths: Any) -> Any:
    """``cfg`` (the study's ``section``) with the run's paths set: exactly the fields that
    :data:`PER_RUN` declares for it, as strings."""
    if set(paths) != set(PER_RUN[section]):
        raise TypeError(f"{section}: the per-run paths are {PER_RUN[section]}, got {tuple(paths)}")
    return dataclasses.replace(cfg, **{k: str(v) for k, v in paths.items()})


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
    # the run records (selections, metrics, per-user hit ranks): None = records/study/<preset> for
    # a named preset (relative to the working directory; the study's command line anchors it at
    # the repository), else <out>/records
    record_dir: str | None = None
    # which signals `--only runs` computes (the report shows every recorded run of the planned
    # signals: llm and sasrec always, tiger where named here)
    signals: tuple[str, ...] = DEFAULT_SIGNALS
    # second signal: SASRec trained on the selection only
    sasrec_seeds: tuple[int, ...] | None = None  # its seeds (None: seeds); cheap, so it may have more
    # the seeds of the full-data reference row (SASRec on every candidate; None: sasrec_seeds)
    reference_seeds: tuple[int, ...] | None = None
    sasrec_epochs: int = 100
    sasrec_eval_every: int = 10
    sasrec_patience: int = 2
    # third signal: TIGER trained on the selection only; its seeds (None: seeds)
    tiger_seeds: tuple[int, ...] | None = None
    # the strategies of the LLM signal, the costly one (None: every strategy)
    llm_strategies: tuple[str, ...] | None = None
    # the strategies of the TIGER signal (None: every strategy)
    tiger_strategies: tuple[str, ...] | None = None
    prune: PruneConfig = field(default_factory=lambda: override(PruneConfig(), STUDY_DEFAULTS["prune"]))
    finetune: FinetuneConfig = field(default_factory=lambda: override(FinetuneConfig(), STUDY_DEFAULTS["finetune"]))
    generate: InferenceConfig = field(default_factory=lambda: override(InferenceConfig(), STUDY_DEFAULTS["generate"]))
    tiger: TigerConfig = field(default_factory=lambda: override(TigerConfig(), STUDY_DEFAULTS["tiger"]))

    @staticmethod
    def _aliases() -> dict[str, Alias]:
        return STUDY_ALIASES

    @classmethod
    def flat(cls, **values: Any) -> StudyConfig:
        """From flat names (:data:`SETTINGS`) or dotted ones."""
        return from_flat(cls, STUDY_ALIASES, **values)

    @classmethod
    def from_preset(cls, preset: str | None, **overrides: Any) -> StudyConfig:
        """The defaults, then the preset's overrides, then ``overrides`` (None values skipped)."""
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown --preset {preset!r}; known: {', '.join(PRESETS)}")
        cfg = from_flat(cls, STUDY_ALIASES, base=cls(preset=preset), **(PRESETS[preset] if preset else {}))
        return from_flat(cls, STUDY_ALIASES, base=cfg, **{k: v for k, v in overrides.items() if v is not None})

    def summary(self) -> dict[str, Any]:
        """The flat view written into ``config.json`` and REPORT.md, in :data:`SETTINGS`' order."""
        return {name: getattr(self, name) for name in SUMMARY_ORDER}

    @property
    def out(self) -> Path:
        return Path(self.out_dir or Path("results") / f"{self.data_name}_{self.n}")

    @property
    def record_folder(self) -> Path:
        """Where the run records live (:mod:`dealrec.study.records`): ``record_dir``, else
        ``records/study/<preset>`` for a named preset, else ``<out>/records``."""
        if self.record_dir:
            return Path(self.record_dir)
        if self.preset:
            return RECORDS_ROOT / self.preset
        return self.out / "records"

    @property
    def signal_seeds(self) -> dict[str, tuple[int, ...]]:
        """The seeds of each signal: the LLM's ``seeds``, SASRec's ``sasrec_seeds`` and TIGER's
        ``tiger_seeds`` (each: or ``seeds``)."""
        return {"llm": tuple(self.seeds), "sasrec": tuple(self.sasrec_seeds or self.seeds),
                "tiger": tuple(self.tiger_seeds or self.seeds)}

    def signal_strategies(self, signal: str) -> tuple[str, ...]:
        """The strategies ``signal`` runs: ``llm_strategies`` for the LLM and ``tiger_strategies``
        for TIGER (each: or every strategy), every strategy for SASRec."""
        chosen = {"llm": self.llm_strategies, "tiger": self.tiger_strategies}.get(signal)
        return tuple(chosen or self.strategies)

    @property
    def planned_signals(self) -> tuple[str, ...]:
        """The signals whose runs the study plans: :data:`DEFAULT_SIGNALS` and those of ``signals``."""
        return tuple(s for s in SIGNALS if s in DEFAULT_SIGNALS or s in self.signals)

    @property
    def reference_row_seeds(self) -> tuple[int, ...]:
        """The seeds of the full-data reference row: ``reference_seeds``, else SASRec's."""
        return tuple(self.signal_seeds["sasrec"] if self.reference_seeds is None else self.reference_seeds)

    @property
    def all_seeds(self) -> tuple[int, ...]:
        """Every seed of a planned signal (a selection per strategy and seed), in order."""
        seeds = self.signal_seeds
        return tuple(dict.fromkeys(s for signal in self.planned_signals for s in seeds[signal]))

    def validate(self) -> None:
        """Fail before any expensive work, naming the argument: the study's own settings here,
        each section's by its own check."""
        self._check_strategies_and_seeds()
        if not self.signals or set(self.signals) - set(SIGNALS):
            raise ValueError(f"--signals: choose from {', '.join(SIGNALS)}, got {list(self.signals)}")
        for name in ("pool_users", "test_users", "max_items"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"--{name} must be > 0 (or omitted), got {v}")
        if self.sasrec_epochs < 1:
            raise ValueError(f"--sasrec_epochs must be ≥ 1, got {self.sasrec_epochs}")
        self._check_tiger()
        models = {self.prune.effort.base_model, self.finetune.base_model, self.generate.base_model,
                  self.tiger.base_model}
        if len(models) > 1:
            raise ValueError(f"--base_model: the sections name different models {sorted(map(str, models))}; set one")
        self.finetune.check_settings()
        self.generate.check_settings()
        self.prune_config().validate()

    def _check_strategies_and_seeds(self) -> None:
        for name in ("llm_strategies", "tiger_strategies"):
            chosen = getattr(self, name)
            if chosen is not None and (not chosen or set(chosen) - set(self.strategies)):
                raise ValueError(f"--{name} must be some of --strategies {list(self.strategies)}, got {list(chosen)}")
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
        for name in ("sasrec_seeds", "tiger_seeds"):
            seeds = getattr(self, name)
            if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
                raise ValueError(f"--{name} must be distinct and non-empty (or omitted), got {list(seeds)}")
        if self.reference_seeds is not None and len(set(self.reference_seeds)) != len(self.reference_seeds):
            raise ValueError(f"--reference_seeds must be distinct, got {list(self.reference_seeds)}")

    def _check_tiger(self) -> None:
        """The TIGER section's settings (its own check, the per-run paths aside), and the cutoffs
        the report reads among its ``ks``."""
        from dealrec.study.report import report_ks

        self.tiger_config(*(Path("-"),) * len(PER_RUN["tiger"]), seed=0).check()
        needed = report_ks(self.data_name)
        missing = sorted(set(needed) - set(self.tiger.ks))
        if missing:
            raise ValueError(f"--tiger.ks must include the report's cutoffs {list(needed)} for {self.data_name}; "
                             f"{missing} missing")

    def prune_config(self, strategy: str = "dealrec") -> PruneConfig:
        """The pruning configuration of ``strategy`` (its registered scoring settings applied).

        A score file given with ``--prune.influence_scores`` / ``--prune.effort_scores`` holds the
        scores of the configured settings, so it is not used for a strategy whose registration
        changes that score's settings (``dealrec-stable``: expected negatives, base-weight effort)."""
        cfg = per_run("prune", self.prune, score_dir=self.out / "scores", selected_dir=self.out / "selected")
        scoring = strategy_spec(strategy).scoring
        given = {}
        for name in ("influence", "effort"):
            if any(k.startswith(f"{name}.") and get(cfg, k) != v for k, v in scoring.items()):
                given[f"{name}_scores"] = None
        return override(cfg, given).for_strategy(strategy) if given else cfg.for_strategy(strategy)

    def finetune_config(self, train_file: Path, val_file: Path, output_dir: Path, seed: int) -> FinetuneConfig:
        cfg = per_run("finetune", self.finetune, train_file=train_file, val_file=val_file, output_dir=output_dir)
        return dataclasses.replace(cfg, seed=seed)

    def inference_config(self, test_file: Path, result_file: Path, lora_weights: Path) -> InferenceConfig:
        return per_run("generate", self.generate, test_file=test_file, result_file=result_file,
                       lora_weights=lora_weights)

    def sasrec_config(self, seed: int) -> SurrogateConfig:
        return SurrogateConfig(
            epochs=self.sasrec_epochs, eval_every=self.sasrec_eval_every, patience=self.sasrec_patience, seed=seed
        )

    def tiger_config(self, train_data_path: Path, val_data_path: Path, test_data_path: Path, output_dir: Path,
                     result_file: Path, seed: int) -> TigerConfig:
        """TIGER's configuration of one run: the section with the run's paths and what the study
        sets from its own (:data:`FROM_STUDY`: the seed, the data set, the device, every test user)."""
        cfg = per_run("tiger", self.tiger, train_data_path=train_data_path, val_data_path=val_data_path,
                      test_data_path=test_data_path, output_dir=output_dir, result_file=result_file)
        return dataclasses.replace(cfg, seed=seed, data_dir=str(self.data_dir), data_name=self.data_name,
                                   base_model=self.base_model, gpu=gpu_id(self.device), max_test_users=None)


def gpu_id(device: str) -> str:
    """The ``--gpu`` value of TIGER's command line for a torch device name (``cpu``, ``cuda``,
    ``cuda:1``): ``cpu`` or the GPU index."""
    kind, _, index = str(device).partition(":")
    return "cpu" if kind != "cuda" else index or "0"


def _check_declaration() -> None:
    """Every own field of :class:`StudyConfig` is declared in :data:`SETTINGS`, once."""
    own = {f.name for f in dataclasses.fields(StudyConfig) if f.name not in SECTIONS}
    declared = [s.name for s in SETTINGS if not s.targets]
    if sorted(declared) != sorted(own):
        raise TypeError(f"SETTINGS declares {sorted(declared)} as StudyConfig fields, which has {sorted(own)}")


_check_declaration()
