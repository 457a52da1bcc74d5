"""The pruning pipeline (paper §4, Alg. 1): surrogate → influence → effort → selection.

Each stage writes its output with a JSON manifest into ``score_dir`` and is reused when the
manifest's key (the parameters that determine it) is unchanged; ``stage="all"`` runs what is
missing. Selection only reads the cached scores, so another λ, k or strategy takes seconds.

The surrogate-dependent files carry the surrogate's name unless it is SASRec (whose file names
are the original ones): ``surrogate_BERT4Rec.pt``, ``influence_BERT4Rec.pt``, ``el2n_GRU4Rec.pt``
…, so surrogates share one ``score_dir`` — and its effort scores, which do not depend on the
surrogate — without overwriting each other. The configuration is :class:`PruneConfig`
(:mod:`dealrec.prune.config`); :func:`compute_scores` is the one place where scores are
computed, for :func:`run` and the study alike.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from dealrec.core.cache import cache_key, cached, file_hash, manifest_path, tensor_hash, write_manifest
from dealrec.core.dist import dist_info, init_distributed
from dealrec.core.files import check_writable, load_checked, load_tensor, read_json, save_tensor, write_json
from dealrec.core.locking import output_lock
from dealrec.core.logs import LOG, Timer
from dealrec.core.model_id import model_id
from dealrec.data.dataset import DataError, RecData, load_dataset
from dealrec.data.fewshot import build_examples
from dealrec.prune.config import PRUNE_ALIASES, STAGES, PruneConfig, SurrogateSection
from dealrec.scores.baselines import el2n_scores, grand_scores
from dealrec.scores.effort import EffortModel, effort_scores
from dealrec.scores.influence import influence_scores
from dealrec.select import ScoreSet, plot_selection, run_label, run_strategy, strategy_spec
from dealrec.surrogate import build_surrogate, objective_of, surrogate_spec
from dealrec.surrogate.trainer import train_surrogate


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
    model = build_surrogate(cfg.surrogate.name, data.n_items, scfg, train=data.train)  # DCRec: this data's item graphs
    path = surrogate_file(cfg)
    ckpt = cfg.surrogate.checkpoint
    if ckpt:
        state = load_checked(ckpt, "--surrogate_checkpoint", "a surrogate checkpoint (state_dict)")
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
                f"{data.name} ({data.n_items} items): missing {missing}, unexpected {extra}, shape mismatch {shapes}; "
                f"pass a checkpoint of {cfg.surrogate.name} trained on this data set (--surrogate {cfg.surrogate.name})"
            )
        model.load_state_dict(state)
        LOG.info("surrogate loaded from %s (training skipped)", ckpt)
        return model
    key = surrogate_key(cfg, data)
    if cached(path, key):
        model.load_state_dict(load_tensor(path))
        LOG.info("surrogate: reusing %s (test %s)", path, read_json(manifest_path(path)).get("test"))
        return model
    resume = resume_file(path)
    with Timer() as t:
        result = train_surrogate(model, data, scfg, cfg.device, resume=resume, resume_key=cache_key(key))
    model.cpu()
    save_tensor(path, model.state_dict())
    write_manifest(
        path, key, seconds=t.seconds, best_epoch=result.best_epoch, valid=result.best_valid, test=result.test,
        seconds_per_epoch=result.seconds_per_epoch, seconds_per_eval=result.seconds_per_eval, history=result.history,
    )
    resume.unlink(missing_ok=True)
    return model


def resume_file(surrogate_path: Path) -> Path:
    """Where the surrogate's training keeps its state after every epoch until the model is written
    (``surrogate.pt`` → ``surrogate.resume.pt``): a run stopped by a crash, Ctrl-C or the end of a
    session continues from its last finished epoch."""
    return surrogate_path.with_name(surrogate_path.stem + ".resume.pt")


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
    from dealrec.core.hardware import describe
    from dealrec.scores.effort import chunk_timing

    # seconds: this call (a resumed run computes only the missing chunks); timing: every timed chunk
    timing = chunk_timing(path.with_name(path.stem + ".chunks"))
    rate = timing["prompts_timed"] / timing["compute_seconds"] if timing["compute_seconds"] else None
    write_manifest(path, key, seconds=t.seconds, timing={**timing, "prompts_per_s": rate},
                   precision_ran=em.precision, machine=describe())
    shutil.rmtree(path.with_name(path.stem + ".chunks"), ignore_errors=True)
    return scores


def write_prompt_set(cfg: PruneConfig, path: str | Path) -> int:
    """The full-training prompt set (one per user with a train item, user order) as alpaca JSON
    (``instruction``/``input``/``output``/``user``/``target_ids``): it replaces the original's
    hand-made ``train_49156.json``."""
    from dealrec.llm.model import load_tokenizer

    cfg.validate()
    check_writable(Path(path).parent, "--write_prompts")
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
    short = f"{cfg.data_name}_{run_label(n, sel.strategy)}"  # the name finetune.sh reads
    for name in (short, tag):
        save_tensor(sel_dir / f"{name}.pt", indices)
        write_json(sel_dir / f"{name}.pt.json", manifest)
    if result.scores is not None:  # random ranks nothing: no score histogram to draw
        try:
            plot_selection(result.scores, scores.eligible, result, sel_dir / f"{tag}.png", title=tag)
        except Exception as e:  # noqa: BLE001 - a plot must never lose a selection
            LOG.warning("could not draw the selection plot: %s", e)
    LOG.info("selected %d of %d users (%s) -> %s", len(indices), data.n_users, sel.strategy, sel_dir / f"{short}.pt")
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
    if not dist_info().main:  # several effort processes: rank 0 holds the lock for all
        return _run_stages(cfg, data)
    with output_lock(cfg.scores_path, flag="--score_dir"):
        return _run_stages(cfg, data)


def _run_stages(cfg: PruneConfig, data: RecData) -> dict:
    stage = cfg.stage
    needs = strategy_spec(cfg.select.strategy).needs if stage in ("all", "select") else {stage}
    model = load_or_train_surrogate(cfg, data) if stage == "surrogate" else None
    scores = compute_scores(cfg, data, needs, model)
    if stage in ("all", "select"):
        return select(cfg, data, ScoreSet(**scores, eligible=eligible_mask(data)))
    return {}


__all__ = [
    "PRUNE_ALIASES", "STAGES", "PruneConfig", "SurrogateSection", "compute_scores", "effort_file", "effort_key",
    "influence_file", "load_or_train_surrogate", "run", "surrogate_file", "surrogate_key",
]
