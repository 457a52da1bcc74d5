"""The pruning pipeline's configuration: :class:`PruneConfig` and its sections.

``PruneConfig`` holds the settings shared by the stages (data, caches, device) and one section
per stage — ``surrogate`` (:class:`SurrogateSection`: name, checkpoint, and the
:class:`~dealrec.surrogate.trainer.SurrogateConfig` fields given explicitly), ``influence``
(:class:`~dealrec.scores.influence.InfluenceConfig`), ``effort``
(:class:`~dealrec.scores.effort.EffortConfig`) and ``select``
(:class:`~dealrec.select.SelectConfig`) —, each default defined once, in its section's class.
:data:`PRUNE_ALIASES` maps the original ``utils.py`` flags and the short flat names to
them; ``prune.py``'s command line is built from both (:mod:`dealrec.config`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dealrec.config import Alias, FlatView, check_minimums, from_flat, get, override
from dealrec.core.files import load_checked
from dealrec.scores.effort import EffortConfig
from dealrec.scores.influence import InfluenceConfig
from dealrec.select import STRATEGIES, SelectConfig, strategy_spec
from dealrec.surrogate import SURROGATES, SurrogateConfig, build_surrogate, surrogate_spec

STAGES = ("surrogate", "influence", "effort", "baselines", "select", "all")


@dataclass
class SurrogateSection:
    """The surrogate: its registered name, a checkpoint to load instead of training, and the
    training settings given explicitly (``train``: fields of :class:`SurrogateConfig`; the others
    are the surrogate's registered defaults, e.g. GRU4Rec's lr 3e-3)."""

    name: str = "SASRec"
    checkpoint: str | None = None  # a state_dict to load instead of training
    train: dict[str, Any] = field(default_factory=dict, metadata={"schema": SurrogateConfig})

    def config(self) -> SurrogateConfig:
        """The training configuration: SASRec's defaults, the surrogate's registered ones, ``train``."""
        return surrogate_spec(self.name).config(**self.train)


@dataclass
class PruneConfig(FlatView):
    """Every setting of the pruning pipeline: the shared ones here, each stage's in its section.
    A flat name of the original reads its setting (``cfg.lamda`` = ``cfg.select.lamda``)."""

    data_dir: str = "data"
    data_name: str = "games"
    score_dir: str | None = None  # default scores/<data_name> under the working directory (prune.py: code/prune/scores/<data>)
    selected_dir: str = "selected"
    stage: str = "all"
    max_users: int | None = None  # restrict every stage to the first N users
    device: str = "cpu"
    train_data_path: str | None = None  # alpaca JSON of the training prompts scored by effort (default: built)
    influence_scores: str | None = None  # use this influence score file
    effort_scores: str | None = None  # use this effort score file
    surrogate: SurrogateSection = field(default_factory=SurrogateSection)
    influence: InfluenceConfig = field(default_factory=lambda: InfluenceConfig(params=None))
    effort: EffortConfig = field(default_factory=lambda: EffortConfig(precision="auto"))
    select: SelectConfig = field(default_factory=SelectConfig)

    @classmethod
    def flat(cls, **values: Any) -> PruneConfig:
        """From flat names (the original's and :data:`PRUNE_ALIASES`) or dotted ones."""
        return from_flat(cls, PRUNE_ALIASES, **values)

    def set(self, **values: Any) -> PruneConfig:
        """A copy with flat or dotted names set (``cfg.set(lamda=0.5)``)."""
        return from_flat(PruneConfig, PRUNE_ALIASES, base=self, **values)

    def for_strategy(self, strategy: str | None = None) -> PruneConfig:
        """``strategy`` (default: ``select.strategy``) with the scoring settings its registration requires."""
        name = strategy or self.select.strategy
        if name not in STRATEGIES:
            raise ValueError(f"unknown --strategy {name!r}; registered: {', '.join(sorted(STRATEGIES))}")
        spec = strategy_spec(name)
        for section in ("influence", "effort"):
            changed = {k: v for k, v in spec.scoring.items() if k.startswith(f"{section}.") and get(self, k) != v}
            given = getattr(self, f"{section}_scores")
            if changed and given:
                want = ", ".join(f"{k}={v}" for k, v in changed.items())
                raise ValueError(f"--{section}_scores {given}: --strategy {name} scores with {want}, which a given "
                                 f"file cannot be checked for; drop --{section}_scores (they are then computed with "
                                 "those settings)")
        return override(self, {"select.strategy": spec.name, **spec.scoring})

    @staticmethod
    def _aliases() -> dict[str, Alias]:
        return PRUNE_ALIASES

    def validate(self) -> None:
        """Fail fast, before any expensive work, with messages naming the argument."""
        sel = self.select
        if self.stage not in STAGES:
            raise ValueError(f"--stage must be one of {STAGES}, got {self.stage!r}")
        if self.surrogate.name not in SURROGATES:
            raise ValueError(f"unknown surrogate {self.surrogate.name!r}; registered: {', '.join(sorted(SURROGATES))}")
        if sel.strategy not in STRATEGIES:
            raise ValueError(f"unknown --strategy {sel.strategy!r}; registered: {', '.join(sorted(STRATEGIES))}")
        if sel.lamda < 0:
            raise ValueError(f"--lamda must be ≥ 0, got {sel.lamda}")
        if sel.k <= 0:
            raise ValueError(f"--k (number of strata) must be > 0, got {sel.k}")
        if not 0 <= sel.hard_prune < 1:
            raise ValueError(f"--hard_prune must be in [0, 1), got {sel.hard_prune}")
        if sel.n_fewshot <= 0:
            raise ValueError(f"--n_fewshot must be > 0, got {sel.n_fewshot}")
        if self.max_users is not None and self.max_users <= 0:
            raise ValueError(f"--max_users must be > 0, got {self.max_users}")
        for flag, path in (("surrogate_checkpoint", self.surrogate.checkpoint), ("influence_scores", self.influence_scores),
                           ("effort_scores", self.effort_scores), ("train_data_path", self.train_data_path)):
            if path and not Path(path).is_file():
                raise ValueError(f"--{flag} {path}: no such file")
        _check_given_files(self)
        scfg = self.surrogate.config()  # raises on an unknown --surrogate_batching
        check_minimums(scfg, (("epochs", 1), ("batch_size", 1), ("patience", 0), ("eval_every", 0)))
        if not scfg.lr > 0:
            raise ValueError(f"--lr must be > 0, got {scfg.lr}")
        e = self.effort
        check_minimums(e, (("cutoff_len", 8), ("lora_r", 1), ("lora_alpha", 1), ("max_batch_tokens", 1)),
                       flags={"max_batch_tokens": "effort_batch_tokens"})
        uses_llm = self.stage == "effort" or (self.stage in ("all", "select")
                                              and "effort" in strategy_spec(sel.strategy).needs)
        if uses_llm and not self.effort_scores:
            from dealrec.llm.model import check_model_folder

            check_model_folder(e.base_model)
        self.influence_config().validate()
        if self.influence.params:  # names checked on a one-item skeleton of the surrogate (milliseconds)
            named = dict(build_surrogate(self.surrogate.name, 1, scfg).named_parameters())
            unknown = [p for p in self.influence.params if p not in named]
            if unknown:
                raise ValueError(f"--influence_params {unknown} are not parameters of {self.surrogate.name}; "
                                 f"available: {', '.join(sorted(named))}")
        self.effort.validate(self.device)
        if self.effort.resume_from_checkpoint:
            from dealrec.llm.model import check_adapter, lora_config

            e = self.effort
            check_adapter(e.resume_from_checkpoint, lora_config(e.lora_r, e.lora_alpha, 0.0, e.lora_target_modules))

    @property
    def scores_path(self) -> Path:
        return Path(self.score_dir or Path("scores") / self.data_name)

    @property
    def influence_parameters(self) -> tuple[str, ...]:
        """The influence parameter(s): ``--influence_params`` or the surrogate's registered ones."""
        return tuple(self.influence.params or surrogate_spec(self.surrogate.name).influence_params)

    def influence_config(self) -> InfluenceConfig:
        """The influence section with its parameter(s) resolved (what the cache key holds)."""
        return dataclasses.replace(self.influence, params=self.influence_parameters)


# The original scripts' flat names (utils.py) and the short names that scripts use:
# each sets the dotted setting(s) named; a unique last part (``--lamda``) needs no entry.
_SEEDS = ("surrogate.train.seed", "influence.seed", "effort.seed", "select.seed")
PRUNE_ALIASES: dict[str, Alias] = {
    "data": Alias(("data_name",)),
    "output_dir": Alias(("score_dir",), note="the original's model folder: the stage cache (--score_dir)"),
    "out_dir": Alias(("score_dir",)),
    "no_cuda": Alias(("device",), const="cpu", note="run on the CPU (as --gpu_id cpu)"),
    "seed": Alias(_SEEDS, note="the seed of every stage: surrogate, influence draws, effort LoRA init, selection"),
    "model_name": Alias(("surrogate.name",)),
    "surrogate": Alias(("surrogate.name",), note=f"a registered surrogate: {', '.join(SURROGATES)}"),
    "surrogate_checkpoint": Alias(("surrogate.checkpoint",)),
    "hidden_size": Alias(("surrogate.train.hidden_size",)),
    "num_hidden_layers": Alias(("surrogate.train.num_hidden_layers",)),
    "num_attention_heads": Alias(("surrogate.train.num_attention_heads",)),
    "hidden_act": Alias(ignored=True, type=str, note="accepted for the original's command lines; the "
                        "surrogates' activations are fixed (SASRec's feed-forward is ReLU: the original's "
                        "SASRec did not read --hidden_act either)"),
    "hidden_dropout_prob": Alias(("surrogate.train.dropout",)),
    "attention_probs_dropout_prob": Alias(("surrogate.train.attention_dropout",)),
    "initializer_range": Alias(("surrogate.train.initializer_range",)),
    "max_seq_length": Alias(("surrogate.train.max_seq_length",)),
    "do_eval": Alias(("stage",), const="surrogate",
                     note="evaluate the surrogate (trained or reused): --stage surrogate, test metrics in the log"),
    "batch_size": Alias(("surrogate.train.batch_size", "influence.batch_size"),
                        note="the surrogate's batch, also the influence stage's gradient batches"),
    "epochs": Alias(("surrogate.train.epochs",)),
    "topN": Alias(("surrogate.train.ks",), note="the cut-offs of the surrogate's metrics, e.g. '[5, 10, 20, 50]'"),
    "top": Alias(("surrogate.train.ks",), note="= --topN"),
    "lr": Alias(("surrogate.train.lr",)),
    "weight_decay": Alias(("surrogate.train.weight_decay",)),
    "adam_beta1": Alias(("surrogate.train.adam_beta1",)),
    "adam_beta2": Alias(("surrogate.train.adam_beta2",)),
    "patience": Alias(("surrogate.train.patience",)),
    "eval_every": Alias(("surrogate.train.eval_every",)),
    "surrogate_batching": Alias(("surrogate.train.batching",)),
    "base_model": Alias(("effort.base_model",)),
    "resume_from_checkpoint": Alias(("effort.resume_from_checkpoint",)),
    "cutoff_len": Alias(("effort.cutoff_len",)),
    "lora_r": Alias(("effort.lora_r",)),
    "lora_alpha": Alias(("effort.lora_alpha",)),
    "lora_dropout": Alias(ignored=True, type=float, note="accepted for the original's command lines; the effort "
                          "score is a deterministic gradient norm, computed without dropout"),
    "lora_target_modules": Alias(("effort.lora_target_modules",)),
    "quantization": Alias(("effort.quantization",)),
    "effort_target": Alias(("effort.target",)),
    "effort_batch_tokens": Alias(("effort.max_batch_tokens",)),
    "effort_precision": Alias(("effort.precision",)),
    "force_precision": Alias(("effort.force_precision",)),
    "effort_prefix": Alias(("effort.prefix_reuse",)),
    "no_effort_prefix": Alias(("effort.prefix_reuse",), const=False,
                              note="run every prompt's shared prefix again (the exact result either way)"),
    "influence_params": Alias(("influence.params",)),
    "recursion_depth": Alias(("influence.recursion_depth",)),
    "iteration": Alias(("influence.iteration",)),
    "damp": Alias(("influence.damp",)),
    "scale": Alias(("influence.scale",)),
    "solver": Alias(("influence.solver",)),
    "negatives": Alias(("influence.negatives",)),
    "strategy": Alias(("select.strategy",)),
    "n_fewshot": Alias(("select.n_fewshot",)),
    "lamda": Alias(("select.lamda",), note="weight of the effort score (Eq. 13)"),
    "k": Alias(("select.k",), note="number of strata"),
    "hard_prune": Alias(("select.hard_prune",)),
}


def _check_given_files(cfg: PruneConfig) -> None:
    """The files given with --surrogate_checkpoint/--influence_scores/--effort_scores are what they
    should be (one line naming the flag otherwise; their sizes are checked against the data later)."""
    if cfg.surrogate.checkpoint:
        state = load_checked(cfg.surrogate.checkpoint, "--surrogate_checkpoint",
                             "a surrogate checkpoint (a state_dict saved by prune.py, e.g. scores/<data>/surrogate.pt)")
        if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(
                f"--surrogate_checkpoint {cfg.surrogate.checkpoint}: expected a state_dict (a dict of tensors, e.g. "
                f"scores/<data>/surrogate.pt), found a {type(state).__name__}"
            )
    for name in ("influence_scores", "effort_scores"):
        path = getattr(cfg, name)
        if not path:
            continue
        s = load_checked(path, f"--{name}", f"a score file (a 1-D tensor saved by prune.py, e.g. scores/<data>/"
                                            f"{name.split('_')[0]}.pt)")
        if not isinstance(s, torch.Tensor) or s.dim() != 1 or not s.is_floating_point():
            what = f"a {type(s).__name__}" if not isinstance(s, torch.Tensor) else f"a {s.dim()}-D {s.dtype} tensor"
            raise ValueError(f"--{name} {path}: expected a 1-D float tensor of per-user scores, found {what}")
        if not torch.isfinite(s).all():
            raise ValueError(f"--{name} {path}: {int((~torch.isfinite(s)).sum())} score(s) are NaN or infinite; "
                             "compute the scores again")
