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
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import DataError, RecData, load_dataset
from .fewshot import build_examples
from .io import (
    LOG,
    Timer,
    cache_key,
    cached,
    check_writable,
    file_hash,
    load_checked,
    load_tensor,
    save_tensor,
    tensor_hash,
    write_json,
    write_manifest,
)
from .llm import model_id
from .locking import output_lock
from .scores.baselines import el2n_scores, grand_scores
from .scores.effort import EffortConfig, EffortModel, effort_scores
from .scores.influence import InfluenceConfig, influence_scores
from .select import ScoreSet, plot_selection, run_strategy
from .surrogate import SURROGATES, SurrogateConfig, build_surrogate, objective_of, surrogate_spec
from .surrogate.trainer import train_surrogate

STAGES = ("surrogate", "influence", "effort", "baselines", "select", "all")
STABLE = {"negatives": "expected", "effort_target": "base"}


@dataclass
class PruneConfig:
    data_dir: str = "data"
    data_name: str = "games"
    surrogate: str = "SASRec"
    score_dir: str | None = None  # default code/prune/scores/<data_name>
    selected_dir: str = "selected"
    stage: str = "all"
    strategy: str = "dealrec"
    lamda: float = 0.3
    k: int = 50
    hard_prune: float = 0.1
    n_fewshot: int = 1024
    seed: int = 42
    max_users: int | None = None
    device: str = "cpu"
    # surrogate
    surrogate_checkpoint: str | None = None
    epochs: int = 200
    batch_size: int = 500
    lr: float | None = None  # None: the surrogate's registered default (SASRec, BERT4Rec 1e-3; GRU4Rec 3e-3)
    patience: int = 5
    eval_every: int = 5
    surrogate_batching: str = "split"  # exact length buckets; "padded" = the original's full-width batches
    # influence
    influence_params: tuple[str, ...] | None = None  # None: the surrogate's registered parameter(s)
    recursion_depth: int = 5000
    iteration: int = 1
    damp: float = 0.01
    scale: float = 25.0
    solver: str = "lissa"
    negatives: str = "sampled"
    # effort
    base_model: str | None = None
    resume_from_checkpoint: str | None = None
    cutoff_len: int = 512
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    effort_target: str = "lora_B"
    effort_batch_tokens: int = 4096
    effort_precision: str = "auto"  # frozen layers below the target: fp32 | bf16 | int8 | auto (bf16 iff native)
    force_precision: bool = False
    effort_prefix: bool = True  # shared-prompt-prefix reuse (exact)
    quantization: str | None = None
    # given score files
    influence_scores: str | None = None
    effort_scores: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Fail fast, before any expensive work, with messages naming the argument."""
        if self.stage not in STAGES:
            raise ValueError(f"--stage must be one of {STAGES}, got {self.stage!r}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate {self.surrogate!r}; registered: {', '.join(sorted(SURROGATES))}")
        from .select import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown --strategy {self.strategy!r}; registered: {', '.join(sorted(STRATEGIES))}")
        if self.lamda < 0:
            raise ValueError(f"--lamda must be ≥ 0, got {self.lamda}")
        if self.k <= 0:
            raise ValueError(f"--k (number of strata) must be > 0, got {self.k}")
        if not 0 <= self.hard_prune < 1:
            raise ValueError(f"--hard_prune must be in [0, 1), got {self.hard_prune}")
        if self.n_fewshot <= 0:
            raise ValueError(f"--n_fewshot must be > 0, got {self.n_fewshot}")
        if self.max_users is not None and self.max_users <= 0:
            raise ValueError(f"--max_users must be > 0, got {self.max_users}")
        for name in ("surrogate_checkpoint", "influence_scores", "effort_scores"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"--{name} {path}: no such file")
        _check_given_files(self)
        for name, low in (("epochs", 1), ("batch_size", 1), ("patience", 0), ("eval_every", 0), ("cutoff_len", 8),
                          ("lora_r", 1), ("lora_alpha", 1), ("effort_batch_tokens", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"--{name} must be ≥ {low}, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        uses_llm = self.stage == "effort" or (self.stage in ("all", "select") and "effort" in NEEDS.get(self.strategy, ()))
        if uses_llm and not self.effort_scores:
            from .llm import check_model_folder

            check_model_folder(self.base_model)
        self.surrogate_config()  # raises on an unknown --surrogate_batching
        InfluenceConfig(**self._influence_kwargs()).validate()
        if self.influence_params:  # names checked on a one-item skeleton of the surrogate (milliseconds)
            named = dict(build_surrogate(self.surrogate, 1, self.surrogate_config()).named_parameters())
            unknown = [p for p in self.influence_params if p not in named]
            if unknown:
                raise ValueError(f"--influence_params {unknown} are not parameters of {self.surrogate}; "
                                 f"available: {', '.join(sorted(named))}")
        self.effort_config().validate(self.device)
        if self.resume_from_checkpoint:
            from .llm import check_adapter, lora_config

            check_adapter(self.resume_from_checkpoint, lora_config(self.lora_r, self.lora_alpha, 0.0, self.lora_target_modules))

    @property
    def scores_path(self) -> Path:
        return Path(self.score_dir or Path("scores") / self.data_name)

    @property
    def influence_parameters(self) -> tuple[str, ...]:
        """The influence parameter(s): ``--influence_params`` or the surrogate's registered ones."""
        return tuple(self.influence_params or surrogate_spec(self.surrogate).influence_params)

    def surrogate_config(self) -> SurrogateConfig:
        """The surrogate's training configuration (its registered defaults, then these options)."""
        given = {"lr": self.lr} if self.lr is not None else {}
        return surrogate_spec(self.surrogate).config(
            epochs=self.epochs, batch_size=self.batch_size, patience=self.patience,
            eval_every=self.eval_every, seed=self.seed, batching=self.surrogate_batching, **given,
        )

    def _influence_kwargs(self) -> dict:
        return dict(
            params=self.influence_parameters, recursion_depth=self.recursion_depth, iteration=self.iteration,
            damp=self.damp, scale=self.scale, solver=self.solver, negatives=self.negatives, seed=self.seed,
        )

    def effort_config(self) -> EffortConfig:
        return EffortConfig(
            base_model=self.base_model, target=self.effort_target, lora_r=self.lora_r, lora_alpha=self.lora_alpha,
            lora_target_modules=tuple(self.lora_target_modules), resume_from_checkpoint=self.resume_from_checkpoint,
            cutoff_len=self.cutoff_len, max_batch_tokens=self.effort_batch_tokens, seed=self.seed,
            quantization=self.quantization, precision=self.effort_precision, force_precision=self.force_precision,
            prefix_reuse=self.effort_prefix,
        )


def _check_given_files(cfg: PruneConfig) -> None:
    """The files given with --surrogate_checkpoint/--influence_scores/--effort_scores are what they
    should be (one line naming the flag otherwise; their sizes are checked against the data later)."""
    if cfg.surrogate_checkpoint:
        state = load_checked(cfg.surrogate_checkpoint, "--surrogate_checkpoint",
                             "a surrogate checkpoint (a state_dict saved by prune.py, e.g. scores/<data>/surrogate.pt)")
        if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(
                f"--surrogate_checkpoint {cfg.surrogate_checkpoint}: expected a state_dict (a dict of tensors, e.g. "
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


def _data_key(cfg: PruneConfig, data: RecData) -> dict:
    return {
        "data_name": cfg.data_name,
        "train_file": file_hash(data.root / "sequential_train.txt"),
        "max_users": cfg.max_users,
    }


def _surrogate_suffix(cfg: PruneConfig) -> str:
    """"" for SASRec (the original file names), "_<name>" for any other surrogate."""
    return "" if cfg.surrogate == "SASRec" else f"_{cfg.surrogate}"


def _surrogate_file(cfg: PruneConfig) -> Path:
    return cfg.scores_path / f"surrogate{_surrogate_suffix(cfg)}.pt"


def _influence_file(cfg: PruneConfig) -> Path:
    suffix = "" if cfg.negatives == "sampled" else f"_{cfg.negatives}"
    return cfg.scores_path / f"influence{_surrogate_suffix(cfg)}{suffix}.pt"


def _effort_file(cfg: PruneConfig) -> Path:
    suffix = "" if cfg.effort_target == "lora_B" else f"_{cfg.effort_target}"
    return cfg.scores_path / f"effort{suffix}.pt"


def _surrogate_hash(model: torch.nn.Module) -> str:
    """Cache key of the surrogate's weights (influence and baselines depend on them)."""
    return tensor_hash(torch.cat([p.flatten() for p in model.state_dict().values()]))


def load_or_train_surrogate(cfg: PruneConfig, data: RecData) -> torch.nn.Module:
    scfg = cfg.surrogate_config()
    spec = surrogate_spec(cfg.surrogate)
    model = build_surrogate(cfg.surrogate, data.n_items, scfg)
    path = _surrogate_file(cfg)
    if cfg.surrogate_checkpoint:
        state = load_checked(cfg.surrogate_checkpoint, "--surrogate_checkpoint", "a surrogate checkpoint (state_dict)")
        if not isinstance(state, dict):
            raise ValueError(f"--surrogate_checkpoint {cfg.surrogate_checkpoint}: expected a state_dict")
        want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        have = {k: tuple(v.shape) for k, v in state.items()}
        if want != have:
            missing = sorted(set(want) - set(have))[:5]
            extra = sorted(set(have) - set(want))[:5]
            shapes = [k for k in set(want) & set(have) if want[k] != have[k]][:5]
            raise ValueError(
                f"--surrogate_checkpoint {cfg.surrogate_checkpoint} does not match {cfg.surrogate} for "
                f"{data.name} ({data.n_items} items): missing {missing}, unexpected {extra}, shape mismatch {shapes}; "
                f"pass a checkpoint of {cfg.surrogate} trained on this data set (--surrogate {cfg.surrogate})"
            )
        model.load_state_dict(state)
        LOG.info("surrogate loaded from %s (training skipped)", cfg.surrogate_checkpoint)
        return model
    key = {**_data_key(cfg, data), "surrogate": cfg.surrogate, "config": dataclasses.asdict(scfg), **spec.cache_key()}
    if cached(path, key):
        model.load_state_dict(load_tensor(path))
        LOG.info("surrogate: reusing %s", path)
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


def compute_influence(cfg: PruneConfig, data: RecData, model: torch.nn.Module) -> torch.Tensor:
    path = _influence_file(cfg)
    icfg = InfluenceConfig(**cfg._influence_kwargs())
    objective = objective_of(model)
    key = {**_data_key(cfg, data), "surrogate": _surrogate_hash(model),
           "config": dataclasses.asdict(icfg)}
    if objective.key():
        key["objective"] = objective.key()
    if cached(path, key):
        LOG.info("influence: reusing %s", path)
        return load_tensor(path)
    samples = objective.build_samples(data.train, data.n_items, model.cfg.max_seq_length if hasattr(model, "cfg") else 50)
    with Timer() as t:
        res = influence_scores(model, samples, icfg)
    save_tensor(path, res.scores)
    write_manifest(path, key, seconds=t.seconds, timing=res.timing, v_norm=res.v_norm, h_norm=res.h_norm,
                   n_eligible=int(res.eligible.sum()))
    return res.scores


def compute_effort(cfg: PruneConfig, data: RecData) -> torch.Tensor:
    path = _effort_file(cfg)
    ecfg = cfg.effort_config()
    key = {**_data_key(cfg, data), "model": model_id(cfg.base_model), "config": dataclasses.asdict(ecfg),
           "precision": ecfg.resolved_precision(cfg.device)}
    if cached(path, key):
        LOG.info("effort: reusing %s", path)
        return load_tensor(path)
    with Timer() as t:
        em = EffortModel.load(ecfg, cfg.device)
        examples = build_examples(data, range(data.n_users), "train", em.tokenizer, ecfg.cutoff_len)
        by_user: list[dict | None] = [None] * data.n_users
        for ex in examples:
            by_user[ex["user"]] = ex
        scores = effort_scores(em, by_user, path.with_name(path.stem + ".chunks"), cache_key(key))
    if int(os.environ.get("RANK", 0)) != 0:
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

    cfg.validate()
    check_writable(Path(path).parent, "--write_prompts")
    data = load_dataset(cfg.data_dir, cfg.data_name).subset_users(cfg.max_users)
    examples = build_examples(data, range(data.n_users), "train", load_tokenizer(cfg.base_model), cfg.cutoff_len)
    write_json(path, examples)
    LOG.info("wrote %d prompts to %s", len(examples), path)
    return len(examples)


def compute_baselines(cfg: PruneConfig, data: RecData, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    objective = objective_of(model)
    key = {**_data_key(cfg, data), "surrogate": _surrogate_hash(model),
           "seed": cfg.seed, "param": cfg.influence_parameters[0]}
    if objective.key():
        key["objective"] = objective.key()
    sfx = _surrogate_suffix(cfg)
    paths = {"el2n": cfg.scores_path / f"el2n{sfx}.pt", "grand": cfg.scores_path / f"grand{sfx}.pt"}
    if all(cached(p, key) for p in paths.values()):
        return {k: load_tensor(p) for k, p in paths.items()}
    samples = objective.build_samples(data.train, data.n_items, model.cfg.max_seq_length if hasattr(model, "cfg") else 50)
    samples, neg = objective.draw(samples, torch.Generator().manual_seed(cfg.seed))
    out = {"el2n": el2n_scores(model, samples, neg), "grand": grand_scores(model, samples, neg, cfg.influence_parameters[0])}
    for k, p in paths.items():
        save_tensor(p, out[k])
        write_manifest(p, key)
    return out


def eligible_mask(data: RecData) -> torch.Tensor:
    """A sample can be selected when the surrogate has a target for it (≥ 3 train items)."""
    return torch.tensor([len(s) >= 3 for s in data.train])


HARD_PRUNING = ("dealrec", "dealrec-stable", "influence", "effort", "ccs")  # drop the top hard_prune first


def check_budget(cfg: PruneConfig, data: RecData) -> None:
    """Refuse an ``n_fewshot`` that no selection can meet, before any stage is computed."""
    n_elig = int(eligible_mask(data).sum())
    pool = n_elig - (math.floor(cfg.hard_prune * n_elig) if cfg.strategy in HARD_PRUNING else 0)
    if cfg.n_fewshot > pool:
        scope = f"the first {cfg.max_users} users of {cfg.data_name}" if cfg.max_users else cfg.data_name
        pruned = (f", {n_elig - pool} of them hard-pruned with --hard_prune {cfg.hard_prune}"
                  if pool < n_elig else "")
        raise ValueError(
            f"--n_fewshot {cfg.n_fewshot} exceeds the {pool} users that {cfg.strategy} can select from "
            f"({n_elig} of {data.n_users} users in {scope} have ≥ 3 training items{pruned}); "
            f"lower --n_fewshot to at most {pool}"
        )


def select(cfg: PruneConfig, data: RecData, scores: ScoreSet) -> dict:
    n = cfg.n_fewshot
    with Timer() as t:
        result = run_strategy(cfg.strategy, scores, n, seed=cfg.seed, lamda=cfg.lamda, k=cfg.k, hard_prune=cfg.hard_prune)
    sel_dir = Path(cfg.selected_dir)
    indices = [int(i) for i in result.indices]
    tag = (f"{cfg.data_name}_{n}_{cfg.strategy}{_surrogate_suffix(cfg)}_lam{cfg.lamda}_k{cfg.k}"
           f"_hp{cfg.hard_prune}_seed{cfg.seed}")
    manifest = {
        "data_name": cfg.data_name,
        "n_users": data.n_users,
        "n_fewshot": n,
        "strategy": cfg.strategy,
        "lamda": cfg.lamda,
        "k": cfg.k,
        "hard_prune": cfg.hard_prune,
        "seed": cfg.seed,
        "surrogate": cfg.surrogate,
        "base_model": model_id(cfg.base_model),
        "negatives": cfg.negatives,
        "effort_target": cfg.effort_target,
        "max_users": cfg.max_users,
        "score_files": {"influence": str(cfg.influence_scores or _influence_file(cfg)),
                        "effort": str(cfg.effort_scores or _effort_file(cfg))},
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
    LOG.info("selected %d of %d users (%s) -> %s", len(indices), data.n_users, cfg.strategy, sel_dir / f"{cfg.data_name}_{n}.pt")
    if result.shortfall:
        LOG.warning("selection is %d short of n=%d (budget rounding)", result.shortfall, n)
    return manifest


NEEDS = {
    "dealrec": ("influence", "effort"), "dealrec-stable": ("influence", "effort"), "influence": ("influence",),
    "effort": ("effort",), "greedy": ("influence", "effort"), "random": (), "el2n": ("baselines",),
    "grand": ("baselines",), "ccs": ("baselines",),
}


def _init_distributed(cfg: PruneConfig) -> PruneConfig:
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        cfg = dataclasses.replace(cfg, device=f"cuda:{local}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return cfg


def run(cfg: PruneConfig) -> dict:
    """Run ``cfg.stage`` (computing whatever it needs that is not cached)."""
    if cfg.strategy == "dealrec-stable":
        cfg = dataclasses.replace(cfg, **STABLE)
    cfg.validate()
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        # `accelerate launch` / `torchrun`: ranks share the effort chunks, rank 0 assembles.
        if cfg.stage != "effort":
            raise ValueError("several processes are supported for --stage effort only; run the other stages in one process")
        cfg = _init_distributed(cfg)
    data = load_dataset(cfg.data_dir, cfg.data_name).subset_users(cfg.max_users)
    LOG.info("data %s: %s", cfg.data_name, data.summary())
    stage = cfg.stage
    if not int(eligible_mask(data).sum()) and stage != "effort":
        scope = f"the first {cfg.max_users} users of " if cfg.max_users else ""
        raise DataError(f"no user of {scope}{data.root / 'sequential_train.txt'} has ≥ 3 training items: the surrogate "
                        "has no target to learn or score and nobody can be selected (check the file, or raise "
                        "--max_users)")
    if stage in ("all", "select"):
        check_budget(cfg, data)
    check_writable(cfg.scores_path, "--score_dir")
    if stage in ("all", "select"):
        check_writable(cfg.selected_dir, "--selected_dir")
    if int(os.environ.get("RANK", 0)) != 0:  # several effort processes: rank 0 holds the lock for all
        return _run_stages(cfg, data)
    with output_lock(cfg.scores_path, flag="--score_dir"):
        return _run_stages(cfg, data)


def _run_stages(cfg: PruneConfig, data: RecData) -> dict:
    stage = cfg.stage
    needs = set(NEEDS.get(cfg.strategy, ())) if stage in ("all", "select") else {stage}
    model = None
    if "baselines" in needs or ("influence" in needs and not cfg.influence_scores) or stage == "surrogate":
        model = load_or_train_surrogate(cfg, data)
    out: dict[str, Any] = {}
    scores = {}
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
    if stage in ("all", "select"):
        out = select(cfg, data, ScoreSet(**scores, eligible=eligible_mask(data)))
    return out
