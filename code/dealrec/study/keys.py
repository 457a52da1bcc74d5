"""What determines each recorded result of the study: the parameters behind a record's key.

A record (:mod:`dealrec.study.records`) is reused only while its key — a hash of these
parameters — is unchanged, so each function lists exactly what changes the result and nothing
that only changes where files go or how fast they are made (each stage configuration's own
``NOT_IN_KEY``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dealrec.core.cache import cache_key
from dealrec.core.model_id import model_id
from dealrec.llm.ground import POOLING
from dealrec.select import strategy_spec
from dealrec.study.config import FROM_STUDY, PER_RUN, StudyConfig
from dealrec.study.records import users_key

# Effort settings that change only speed or memory, never a score.
EFFORT_THROUGHPUT = ("max_batch_tokens", "max_batch_size", "chunk_size", "force_precision", "prefix_reuse")
# TIGER settings outside its key: the per-run paths, what the study sets from its own (the seed,
# the data set and the model are keyed by themselves), and what changes only speed or the log.
TIGER_NOT_IN_KEY = (*PER_RUN["tiger"], *FROM_STUDY["tiger"], "base_model", "progress", "decode_batch_size")


def selection_params(cfg: StudyConfig, train_hash: str, strategy: str, seed: int) -> dict[str, Any]:
    """What determines a selection: the data, the pool, the strategy's scoring settings (not
    where the scores came from), n, the selection knobs and the seed."""
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
        for k in EFFORT_THROUGHPUT:
            eff.pop(k, None)
        eff["base_model"] = model_id(eff["base_model"])
        scoring["effort"] = eff
    return {"data_name": cfg.data_name, "train": train_hash, "pool_users": cfg.pool_users,
            "strategy": strategy, "seed": seed, "n": cfg.n, "lamda": cfg.lamda, "k": cfg.k,
            "hard_prune": cfg.hard_prune, "scoring": scoring}


def llm_params(cfg: StudyConfig, train_hash: str, strategy: str, seed: int, users: list[int],
               test_users: list[int], ground_precision: str) -> dict[str, Any]:
    """What determines an LLM run: the selection, the fine-tuning and generation settings (their
    configurations' own keys without the per-run paths; the study picks the test users itself),
    the test users and the grounding."""
    ft = cfg.finetune.settings_key()
    ft["seed"] = seed
    gen = cfg.generate.settings_key()
    for k in (*PER_RUN["generate"], "max_test_users"):
        gen.pop(k, None)
    ground = {"model": model_id(cfg.base_model), "pooling": POOLING, "distance": "L2"}
    if ground_precision != "fp32":
        ground["precision"] = "bf16-autocast"
    return {"data_name": cfg.data_name, "train": train_hash, "strategy": strategy, "seed": seed,
            "selection": cache_key({"u": users}), "n_selected": len(users), "finetune": ft, "generate": gen,
            "test_users": users_key(test_users), "max_items": cfg.max_items, "ground": ground}


def sasrec_params(cfg: StudyConfig, train_hash: str, seed: int, users: list[int]) -> dict[str, Any]:
    """What determines a SASRec run: the data, the training users, the training settings."""
    return {"data_name": cfg.data_name, "train": train_hash, "users": cache_key({"u": sorted(users)}),
            "config": cfg.sasrec_config(seed).key()}


def tiger_params(cfg: StudyConfig, train_hash: str, seed: int, users: list[int],
                 test_users: list[int]) -> dict[str, Any]:
    """What determines a TIGER run: the data, the training users, TIGER's settings, the seed, the
    base model (its title embeddings are the items' content) and the test users."""
    tiger = dataclasses.asdict(cfg.tiger)
    for k in TIGER_NOT_IN_KEY:
        tiger.pop(k)
    return {"data_name": cfg.data_name, "train": train_hash, "users": cache_key({"u": sorted(users)}),
            "tiger": tiger, "seed": seed, "model": model_id(cfg.base_model), "test_users": users_key(test_users)}
