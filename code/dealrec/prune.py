"""The pruning pipeline (paper §4, Alg. 1): surrogate → influence → effort → selection.

Each stage writes its output with a JSON manifest into ``score_dir`` and is reused when the
manifest's key (the parameters that determine it) is unchanged; ``stage="all"`` runs what is
missing. Selection only reads the cached scores, so another λ, k or strategy takes seconds.

The surrogate-dependent files carry the surrogate's name unless it is SASRec (whose file names
are the original ones): ``surrogate_BERT4Rec.pt``, ``influence_BERT4Rec.pt``, ``el2n_GRU4Rec.pt``
…, so surrogates share one ``score_dir`` — and its effort scores, which do not depend on the
surrogate — without overwriting each other.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import Alias, FlatView, from_flat, override
from .data import RecData, load_dataset
from .dist import dist_info, init_distributed
from .fewshot import build_examples
from .io import (
    LOG,
    Timer,
    cache_key,
    cached,
    file_hash,
    load_tensor,
    manifest_path,
    read_json,
    save_tensor,
    tensor_hash,
    write_json,
    write_manifest,
)
from .llm import model_id
from .scores.baselines import el2n_scores, grand_scores
from .scores.effort import EffortConfig, EffortModel, effort_scores
from .scores.influence import InfluenceConfig, influence_scores
from .select import STRATEGIES, ScoreSet, SelectConfig, plot_selection, run_strategy, strategy_spec
from .surrogate import SURROGATES, SurrogateConfig, build_surrogate, objective_of, surrogate_spec
from .surrogate.trainer import train_surrogate

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
        scfg = self.surrogate.config()  # raises on an unknown --surrogate_batching
        self.influence_config().validate()
        if self.influence.params:  # names checked on a one-item skeleton of the surrogate (milliseconds)
            named = dict(build_surrogate(self.surrogate.name, 1, scfg).named_parameters())
            unknown = [p for p in self.influence.params if p not in named]
            if unknown:
                raise ValueError(f"--influence_params {unknown} are not parameters of {self.surrogate.name}; "
                                 f"available: {', '.join(sorted(named))}")
        self.effort.validate(self.device)
        if self.effort.resume_from_checkpoint:
            from .llm import check_adapter, lora_config

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


# The original scripts' flat names (utils.py, and this package's earlier flat PruneConfig):
# each sets the dotted setting(s) named; a unique last part (``--lamda``) needs no entry.
_SEEDS = ("surrogate.train.seed", "influence.seed", "effort.seed", "select.seed")
PRUNE_ALIASES: dict[str, Alias] = {
    "data": Alias(("data_name",)),
    "output_dir": Alias(("score_dir",), note="the original's model folder: the stage cache (--score_dir)"),
    "out_dir": Alias(("score_dir",)),
    "no_cuda": Alias(("device",), const="cpu", note="run on the CPU (as --gpu_id cpu)"),
    "seed": Alias(_SEEDS, note="the seed of every stage: surrogate, influence draws, effort LoRA init, selection"),
    "model_name": Alias(("surrogate.name",)),
    "surrogate": Alias(("surrogate.name",), note="registered surrogate: SASRec (default), BERT4Rec or GRU4Rec"),
    "surrogate_checkpoint": Alias(("surrogate.checkpoint",)),
    "hidden_size": Alias(("surrogate.train.hidden_size",)),
    "num_hidden_layers": Alias(("surrogate.train.num_hidden_layers",)),
    "num_attention_heads": Alias(("surrogate.train.num_attention_heads",)),
    "hidden_act": Alias(ignored=True, type=str, note="accepted for the original's command lines; the "
                        "surrogates' activations are fixed (SASRec's feed-forward is ReLU, as the original's)"),
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


def _data_key(cfg: PruneConfig, data: RecData) -> dict:
    return {
        "data_name": cfg.data_name,
        "train_file": file_hash(data.root / "sequential_train.txt"),
        "max_users": cfg.max_users,
    }


def _surrogate_suffix(cfg: PruneConfig) -> str:
    """"" for SASRec (the original file names), "_<name>" for any other surrogate."""
    return "" if cfg.surrogate.name == "SASRec" else f"_{cfg.surrogate.name}"


def surrogate_file(cfg: PruneConfig) -> Path:
    return cfg.scores_path / f"surrogate{_surrogate_suffix(cfg)}.pt"


def influence_file(cfg: PruneConfig) -> Path:
    suffix = "" if cfg.influence.negatives == "sampled" else f"_{cfg.influence.negatives}"
    return cfg.scores_path / f"influence{_surrogate_suffix(cfg)}{suffix}.pt"


def effort_file(cfg: PruneConfig) -> Path:
    suffix = "" if cfg.effort.target == "lora_B" else f"_{cfg.effort.target}"
    return cfg.scores_path / f"effort{suffix}.pt"


def _surrogate_hash(model: torch.nn.Module) -> str:
    """Cache key of the surrogate's weights (influence and baselines depend on them)."""
    return tensor_hash(torch.cat([p.flatten() for p in model.state_dict().values()]))


def surrogate_key(cfg: PruneConfig, data: RecData) -> dict:
    """What determines the trained surrogate (the manifest key of ``surrogate*.pt``)."""
    spec = surrogate_spec(cfg.surrogate.name)
    return {**_data_key(cfg, data), "surrogate": cfg.surrogate.name, "config": cfg.surrogate.config().key(),
            **spec.cache_key()}


def effort_key(cfg: PruneConfig, data: RecData) -> dict:
    """What determines the effort scores (manifest key of ``effort*.pt``; its hash keys the chunks)."""
    ecfg = cfg.effort
    key = {**_data_key(cfg, data), "model": model_id(ecfg.base_model), "config": dataclasses.asdict(ecfg),
           "precision": ecfg.resolved_precision(cfg.device)}
    if cfg.train_data_path:
        key["prompts"] = file_hash(cfg.train_data_path)
    return key


def load_or_train_surrogate(cfg: PruneConfig, data: RecData) -> torch.nn.Module:
    scfg = cfg.surrogate.config()
    model = build_surrogate(cfg.surrogate.name, data.n_items, scfg)
    path = surrogate_file(cfg)
    ckpt = cfg.surrogate.checkpoint
    if ckpt:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"--surrogate_checkpoint {ckpt}: expected a state_dict")
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        have = {k: tuple(v.shape) for k, v in state.items()}
        if want != have:
            missing = sorted(set(want) - set(have))[:5]
            extra = sorted(set(have) - set(want))[:5]
            shapes = [k for k in set(want) & set(have) if want[k] != have[k]][:5]
            raise ValueError(
                f"--surrogate_checkpoint {ckpt} does not match {cfg.surrogate.name} for "
                f"{data.name} ({data.n_items} items): missing {missing}, unexpected {extra}, shape mismatch {shapes}"
            )
        model.load_state_dict(state)
        LOG.info("surrogate loaded from %s (training skipped)", ckpt)
        return model
    key = surrogate_key(cfg, data)
    if cached(path, key):
        model.load_state_dict(load_tensor(path))
        LOG.info("surrogate: reusing %s (test %s)", path, read_json(manifest_path(path)).get("test"))
        return model
    with Timer() as t:
        result = train_surrogate(model, data, scfg, cfg.device)
    model.cpu()
    save_tensor(path, model.state_dict())
    write_manifest(
        path, key, seconds=t.seconds, best_epoch=result.best_epoch, valid=result.best_valid, test=result.test,
        seconds_per_epoch=result.seconds_per_epoch, seconds_per_eval=result.seconds_per_eval, history=result.history,
    )
    return model


def _max_len(model: torch.nn.Module) -> int:
    return model.cfg.max_seq_length if hasattr(model, "cfg") else 50


def compute_influence(cfg: PruneConfig, data: RecData, model: torch.nn.Module) -> torch.Tensor:
    path = influence_file(cfg)
    icfg = cfg.influence_config()
    objective = objective_of(model)
    key = {**_data_key(cfg, data), "surrogate": _surrogate_hash(model),
           "config": dataclasses.asdict(icfg)}
    if objective.key():
        key["objective"] = objective.key()
    if cached(path, key):
        LOG.info("influence: reusing %s", path)
        return load_tensor(path)
    samples = objective.build_samples(data.train, data.n_items, _max_len(model))
    with Timer() as t:
        res = influence_scores(model, samples, icfg)
    save_tensor(path, res.scores)
    write_manifest(path, key, seconds=t.seconds, timing=res.timing, v_norm=res.v_norm, h_norm=res.h_norm,
                   n_eligible=int(res.eligible.sum()))
    return res.scores


def _prompts(cfg: PruneConfig, data: RecData, tokenizer: Any) -> list[dict | None]:
    """One training prompt per user (None: no train item): built, or read from ``--train_data_path``
    (rows with a ``user`` field, or one row per user in user order)."""
    by_user: list[dict | None] = [None] * data.n_users
    if cfg.train_data_path:
        rows = read_json(cfg.train_data_path)
        if rows and all("user" in r for r in rows):
            for r in rows:
                if int(r["user"]) < data.n_users:
                    by_user[int(r["user"])] = r
        elif len(rows) == data.n_users:
            by_user = list(rows)
        else:
            raise ValueError(f"--train_data_path {cfg.train_data_path}: {len(rows)} rows without a 'user' field "
                             f"for {data.n_users} users")
        return by_user
    for ex in build_examples(data, range(data.n_users), "train", tokenizer, cfg.effort.cutoff_len):
        by_user[ex["user"]] = ex
    return by_user


def compute_effort(cfg: PruneConfig, data: RecData) -> torch.Tensor:
    path = effort_file(cfg)
    ecfg = cfg.effort
    key = effort_key(cfg, data)
    if cached(path, key):
        LOG.info("effort: reusing %s", path)
        return load_tensor(path)
    with Timer() as t:
        em = EffortModel.load(ecfg, cfg.device)
        by_user = _prompts(cfg, data, em.tokenizer)
        scores = effort_scores(em, by_user, path.with_name(path.stem + ".chunks"), cache_key(key))
    if not dist_info().main:
        return scores
    save_tensor(path, scores)
    from .hardware import describe

    write_manifest(path, key, seconds=t.seconds, samples_per_s=data.n_users / max(t.seconds, 1e-9),
                   precision_ran=em.precision, machine=describe())
    shutil.rmtree(path.with_name(path.stem + ".chunks"), ignore_errors=True)
    return scores


def write_prompt_set(cfg: PruneConfig, path: str | Path) -> int:
    """The full-training prompt set (one per user with a train item, user order) as alpaca JSON
    (``instruction``/``input``/``output``/``user``/``target_ids``): it replaces the original's
    hand-made ``train_49156.json``."""
    from .llm import load_tokenizer

    data = load_dataset(cfg.data_dir, cfg.data_name).subset_users(cfg.max_users)
    examples = build_examples(data, range(data.n_users), "train", load_tokenizer(cfg.effort.base_model),
                              cfg.effort.cutoff_len)
    write_json(path, examples)
    LOG.info("wrote %d prompts to %s", len(examples), path)
    return len(examples)


def compute_baselines(cfg: PruneConfig, data: RecData, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    objective = objective_of(model)
    seed = cfg.influence.seed  # the same draw of negatives (or masks) as the influence stage
    key = {**_data_key(cfg, data), "surrogate": _surrogate_hash(model),
           "seed": seed, "param": cfg.influence_parameters[0]}
    if objective.key():
        key["objective"] = objective.key()
    sfx = _surrogate_suffix(cfg)
    paths = {"el2n": cfg.scores_path / f"el2n{sfx}.pt", "grand": cfg.scores_path / f"grand{sfx}.pt"}
    if all(cached(p, key) for p in paths.values()):
        return {k: load_tensor(p) for k, p in paths.items()}
    samples = objective.build_samples(data.train, data.n_items, _max_len(model))
    samples, neg = objective.draw(samples, torch.Generator().manual_seed(seed))
    out = {"el2n": el2n_scores(model, samples, neg), "grand": grand_scores(model, samples, neg, cfg.influence_parameters[0])}
    for k, p in paths.items():
        save_tensor(p, out[k])
        write_manifest(p, key)
    return out


def compute_scores(cfg: PruneConfig, data: RecData, needs: Iterable[str],
                   model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The scores named in ``needs`` (``influence``, ``effort``, ``baselines``), each computed or
    reused from ``score_dir`` (or read from ``--influence_scores`` / ``--effort_scores``); the
    surrogate is trained (or reused) only when one of them needs it. The one place both
    :func:`run` and the study compute scores."""
    needs = set(needs)
    if model is None and ("baselines" in needs or ("influence" in needs and not cfg.influence_scores)):
        model = load_or_train_surrogate(cfg, data)
    scores: dict[str, torch.Tensor] = {}
    if "influence" in needs:
        scores["influence"] = load_tensor(cfg.influence_scores) if cfg.influence_scores else compute_influence(cfg, data, model)
    if "effort" in needs:
        scores["effort"] = load_tensor(cfg.effort_scores) if cfg.effort_scores else compute_effort(cfg, data)
    if "baselines" in needs:
        scores.update(compute_baselines(cfg, data, model))
    for name, s in scores.items():
        if len(s) != data.n_users:
            raise ValueError(f"{name} scores have {len(s)} entries but {cfg.data_name} has {data.n_users} users "
                             "(made with another --max_users or data set?)")
    return scores


def eligible_mask(data: RecData) -> torch.Tensor:
    """A sample can be selected when the surrogate has a target for it (≥ 3 train items)."""
    return torch.tensor([len(s) >= 3 for s in data.train])


def check_budget(cfg: PruneConfig, data: RecData) -> None:
    """Refuse an ``n_fewshot`` that no selection can meet, before any stage is computed."""
    sel = cfg.select
    n_elig = int(eligible_mask(data).sum())
    pool = n_elig - (math.floor(sel.hard_prune * n_elig) if strategy_spec(sel.strategy).hard_prunes else 0)
    if sel.n_fewshot > pool:
        scope = f"the first {cfg.max_users} users of {cfg.data_name}" if cfg.max_users else cfg.data_name
        pruned = (f", {n_elig - pool} of them hard-pruned with --hard_prune {sel.hard_prune}"
                  if pool < n_elig else "")
        raise ValueError(
            f"--n_fewshot {sel.n_fewshot} exceeds the {pool} users that {sel.strategy} can select from "
            f"({n_elig} of {data.n_users} users in {scope} have ≥ 3 training items{pruned}); "
            f"lower --n_fewshot to at most {pool}"
        )


def select(cfg: PruneConfig, data: RecData, scores: ScoreSet) -> dict:
    sel = cfg.select
    n = sel.n_fewshot
    with Timer() as t:
        result = run_strategy(sel.strategy, scores, n, seed=sel.seed, lamda=sel.lamda, k=sel.k, hard_prune=sel.hard_prune)
    sel_dir = Path(cfg.selected_dir)
    indices = [int(i) for i in result.indices]
    tag = (f"{cfg.data_name}_{n}_{sel.strategy}{_surrogate_suffix(cfg)}_lam{sel.lamda}_k{sel.k}"
           f"_hp{sel.hard_prune}_seed{sel.seed}")
    manifest = {
        "data_name": cfg.data_name,
        "n_users": data.n_users,
        "n_fewshot": n,
        "strategy": sel.strategy,
        "lamda": sel.lamda,
        "k": sel.k,
        "hard_prune": sel.hard_prune,
        "seed": sel.seed,
        "surrogate": cfg.surrogate.name,
        "base_model": model_id(cfg.effort.base_model),
        "negatives": cfg.influence.negatives,
        "effort_target": cfg.effort.target,
        "max_users": cfg.max_users,
        "score_files": {"influence": str(cfg.influence_scores or influence_file(cfg)),
                        "effort": str(cfg.effort_scores or effort_file(cfg))},
        "selection": result.to_dict(),
        "seconds": t.seconds,
        "indices": indices,
    }
    for name in (f"{cfg.data_name}_{n}", tag):
        save_tensor(sel_dir / f"{name}.pt", indices)
        write_json(sel_dir / f"{name}.pt.json", manifest)
    try:
        plot_selection(result.scores, scores.eligible, result, sel_dir / f"{tag}.png", title=tag)
    except Exception as e:  # noqa: BLE001 - a plot must never lose a selection
        LOG.warning("could not draw the selection plot: %s", e)
    LOG.info("selected %d of %d users (%s) -> %s", len(indices), data.n_users, sel.strategy, sel_dir / f"{cfg.data_name}_{n}.pt")
    if result.shortfall:
        LOG.warning("selection is %d short of n=%d (budget rounding)", result.shortfall, n)
    return manifest


def run(cfg: PruneConfig) -> dict:
    """Run ``cfg.stage`` (computing whatever it needs that is not cached)."""
    cfg = cfg.for_strategy()
    cfg.validate()
    if dist_info().world_size > 1:
        # `accelerate launch` / `torchrun`: ranks share the effort chunks, rank 0 assembles.
        if cfg.stage != "effort":
            raise ValueError("several processes are supported for --stage effort only; run the other stages in one process")
        _, device, _ = init_distributed()
        cfg = dataclasses.replace(cfg, device=str(device))
    data = load_dataset(cfg.data_dir, cfg.data_name).subset_users(cfg.max_users)
    LOG.info("data %s: %s", cfg.data_name, data.summary())
    stage = cfg.stage
    if stage in ("all", "select"):
        check_budget(cfg, data)
    needs = strategy_spec(cfg.select.strategy).needs if stage in ("all", "select") else {stage}
    model = load_or_train_surrogate(cfg, data) if stage == "surrogate" else None
    scores = compute_scores(cfg, data, needs, model)
    if stage in ("all", "select"):
        return select(cfg, data, ScoreSet(**scores, eligible=eligible_mask(data)))
    return {}
