"""Selection strategies: DEALRec, its ablations (paper §5.3) and the baselines (§5.1).

Every strategy is ``fn(scores: ScoreSet, n, seed=0, *, lamda, k, hard_prune) -> SelectionResult``
and selects ``n`` distinct eligible samples. The three keyword knobs are shared so that a
caller can pass the same options to any strategy: a strategy ignores the ones it does not use
(``params`` in the result records the ones it did use); any other keyword is a TypeError.
Defaults are the paper's Games values (λ = 0.3, k = 50, hard_prune = 0.1; the original
``utils.py`` defaulted to λ 0.5, k 25), defined once here (:class:`SelectConfig`).

A strategy is registered once, with the scores it needs (``needs``: ``influence``, ``effort``,
``baselines`` = EL2N and GraNd) and the scoring settings it requires (``scoring``: dotted
:class:`dealrec.prune.pipeline.PruneConfig` settings); the pipeline computes exactly those
(:func:`dealrec.prune.pipeline.compute_scores`).

=================  ===================================================================
name               selection
=================  ===================================================================
``dealrec``        coverage selection (§4.3) on minmax(influence) + λ·minmax(effort), Eq. 13
``dealrec-stable`` the same function on the seed-stable scores (expected negatives, effort
                   of the frozen base weight: ``scoring`` of its registration)
``influence``      coverage on minmax(influence) alone (λ = 0: ablation w/o effort)
``effort``         coverage on minmax(effort) alone (ablation w/o influence)
``greedy``         the n highest overall scores (Eq. 13), no hard pruning, no strata
                   (ablation w/o coverage)
``random``         n eligible samples uniformly at random
``el2n``           the n highest EL2N scores (the hardest samples; Paul et al. 2021)
``grand``          the n highest GraNd scores (Paul et al. 2021)
``ccs``            Coverage-centric Coreset Selection (Zheng et al. ICLR 2023): hard-prune
                   the top ``hard_prune`` fraction of EL2N, then the same stratified
                   smallest-stratum-first draw over k strata of EL2N (λ ignored)
=================  ===================================================================

Top-n strategies break ties by the lower sample index.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from dealrec.select.coverage import SelectionResult, check_finite, coverage_select, minmax, overall_score
from dealrec.select.scoreset import ScoreSet, check_count

Strategy = Callable[..., SelectionResult]
SCORE_KINDS = ("influence", "effort", "baselines")


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: its function, the scores it needs, the scoring settings it requires."""

    name: str
    fn: Strategy
    needs: tuple[str, ...]
    scoring: Mapping[str, Any] = field(default_factory=dict)
    hard_prunes: bool = False  # drops the hardest ``hard_prune`` fraction before selecting


STRATEGIES: dict[str, Strategy] = {}
SPECS: dict[str, StrategySpec] = {}

DEFAULT_LAMDA = 0.3
DEFAULT_K = 50
DEFAULT_HARD_PRUNE = 0.1


@dataclass
class SelectConfig:
    """The selection stage's settings (the original's names)."""

    strategy: str = "dealrec"
    n_fewshot: int = 1024
    lamda: float = DEFAULT_LAMDA  # weight of the effort score (Eq. 13)
    k: int = DEFAULT_K  # number of strata
    hard_prune: float = DEFAULT_HARD_PRUNE  # fraction of the hardest samples dropped first
    seed: int = 42


def register_strategy(name: str, needs: Sequence[str] = ("influence", "effort"),
                      scoring: Mapping[str, Any] | None = None, hard_prunes: bool = False
                      ) -> Callable[[Strategy], Strategy]:
    """Decorator: register ``fn`` under ``name`` (once) with the scores it ``needs`` and the
    scoring settings it requires (``scoring``, e.g. ``{"influence.negatives": "expected"}``);
    ``hard_prunes``: it drops the hardest ``hard_prune`` fraction first (checked by the budget)."""
    bad = sorted(set(needs) - set(SCORE_KINDS))
    if bad:
        raise ValueError(f"strategy {name!r}: unknown needs {bad}; known: {SCORE_KINDS}")

    def deco(fn: Strategy) -> Strategy:
        if name in STRATEGIES:
            raise ValueError(f"selection strategy {name!r} is already registered")
        STRATEGIES[name] = fn
        SPECS[name] = StrategySpec(name, fn, tuple(needs), MappingProxyType(dict(scoring or {})), hard_prunes)
        return fn

    return deco


def strategy_spec(name: str) -> StrategySpec:
    """The registration of ``name``; a ValueError listing the registered names otherwise."""
    get_strategy(name)
    return SPECS[name]


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``; a ValueError listing the registered names otherwise."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown selection strategy {name!r}; registered: {', '.join(sorted(STRATEGIES))}"
        ) from None


DEFAULT_STRATEGY = "dealrec"


def run_label(n: int, strategy: str = DEFAULT_STRATEGY) -> str:
    """The label of a selection's outputs (selection file, few-shot files, adapter, results): the
    original's ``<n>`` for DEALRec, ``<n>_<strategy>`` for any other strategy, so that runs of two
    strategies never overwrite each other."""
    return str(n) if strategy == DEFAULT_STRATEGY else f"{n}_{strategy}"


def run_strategy(name: str, scores: ScoreSet, n: int, seed: int = 0, **params: float) -> SelectionResult:
    """Look up ``name``, run it, and record ``name`` as the result's method."""
    result = get_strategy(name)(scores, n, seed, **params)
    result.method = name
    return result


def _coverage(
    method: str,
    values: np.ndarray,
    scores: ScoreSet,
    n: int,
    seed: int,
    k: int,
    hard_prune: float,
    **params: float,
) -> SelectionResult:
    result = coverage_select(values, scores.eligible, n, k, hard_prune, seed)
    result.method = method
    result.params.update(params)
    return result


def top_n_select(
    values: np.ndarray, eligible: np.ndarray, n: int, method: str, seed: int = 0
) -> SelectionResult:
    """The ``n`` eligible samples with the highest ``values`` (ties: lower index first)."""
    n = check_count(n, "n")
    check_finite(values, eligible, method)
    elig = np.flatnonzero(eligible)
    if n > len(elig):
        raise ValueError(f"n={n} is larger than the pool of {len(elig)} eligible samples; lower n")
    top = elig[np.argsort(-values[elig], kind="stable")[:n]]
    return SelectionResult(
        method=method,
        indices=np.sort(top).tolist(),
        n_requested=n,
        n_total=len(values),
        n_eligible=len(elig),
        seed=seed,
        stratum_of=np.full(len(values), -1, dtype=np.int64),
        scores=values,
    )


@register_strategy("dealrec", hard_prunes=True)
def dealrec(
    scores: ScoreSet,
    n: int,
    seed: int = 0,
    *,
    lamda: float = DEFAULT_LAMDA,
    k: int = DEFAULT_K,
    hard_prune: float = DEFAULT_HARD_PRUNE,
) -> SelectionResult:
    """DEALRec: coverage selection (§4.3) on the overall score of Eq. 13."""
    overall = overall_score(scores.require("influence"), scores.require("effort"), lamda, scores.eligible)
    return _coverage("dealrec", overall, scores, n, seed, k, hard_prune, lamda=float(lamda))


# The seed-stable variant: the same selection on scores without a random draw (expected
# negatives in the influence loss; effort of the frozen base weight instead of a fresh lora_B).
register_strategy("dealrec-stable", scoring={"influence.negatives": "expected", "effort.target": "base"},
                  hard_prunes=True)(dealrec)


@register_strategy("influence", needs=("influence",), hard_prunes=True)
def influence_only(
    scores: ScoreSet,
    n: int,
    seed: int = 0,
    *,
    lamda: float = DEFAULT_LAMDA,
    k: int = DEFAULT_K,
    hard_prune: float = DEFAULT_HARD_PRUNE,
) -> SelectionResult:
    """Ablation w/o effort score: coverage selection on minmax(influence) (λ = 0)."""
    values = minmax(scores.require("influence"), scores.eligible)
    return _coverage("influence", values, scores, n, seed, k, hard_prune, lamda=0.0)


@register_strategy("effort", needs=("effort",), hard_prunes=True)
def effort_only(
    scores: ScoreSet,
    n: int,
    seed: int = 0,
    *,
    lamda: float = DEFAULT_LAMDA,
    k: int = DEFAULT_K,
    hard_prune: float = DEFAULT_HARD_PRUNE,
) -> SelectionResult:
    """Ablation w/o influence score: coverage selection on minmax(effort)."""
    values = minmax(scores.require("effort"), scores.eligible)
    return _coverage("effort", values, scores, n, seed, k, hard_prune)


@register_strategy("greedy")
def greedy(
    scores: ScoreSet,
    n: int,
    seed: int = 0,
    *,
    lamda: float = DEFAULT_LAMDA,
    k: int = DEFAULT_K,
    hard_prune: float = DEFAULT_HARD_PRUNE,
) -> SelectionResult:
    """Ablation w/o coverage: the n highest overall scores (Eq. 13); hard_prune and k unused."""
    overall = overall_score(scores.require("influence"), scores.require("effort"), lamda, scores.eligible)
    result = top_n_select(overall, scores.eligible, n, "greedy", seed)
    result.params = {"lamda": float(lamda)}
    return result


@register_strategy("random", needs=())
def random_select(
    scores: ScoreSet,
    n: int,
    seed: int = 0,
    *,
    lamda: float = DEFAULT_LAMDA,
    k: int = DEFAULT_K,
    hard_prune: float = DEFAULT_HARD_PRUNE,
) -> SelectionResult:
    """Random baseline: n eligible samples uniformly without replacement (``default_rng(seed)``)."""
    n = check_count(n, "n")
    elig = np.flatnonzero(scores.eligible)
    if n > len(elig):
        raise ValueError(f"n={n} is larger than the pool of {len(elig)} eligible samples; lower n")
    picked = np.random.default_rng(seed).choice(elig, size=n, replace=False)
    return SelectionResult(
        method="random",
        indices=np.sort(picked).tolist(),
        n_requested=n,
        n_total=len(scores),
        n_eligible=len(elig),
        seed=seed,
        stratum_of=np.full(len(scores), -1, dtype=np.int64),
    )


@register_strategy("el2n", needs=("baselines",))
def el2n_top(
    scores: ScoreSet,
    n: int,
    seed: int = 0,
    *,
    lamda: float = DEFAULT_LAMDA,
    k: int = DEFAULT_K,
    hard_prune: float = DEFAULT_HARD_PRUNE,
) -> SelectionResult:
    """EL2N baseline (Paul et al. 2021): keep the n samples with the highest EL2N (hardest)."""
    return top_n_select(scores.require("el2n"), scores.eligible, n, "el2n", seed)


@register_strategy("grand", needs=("baselines",))
def grand_top(
    scores: ScoreSet,
    n: int,
    seed: int = 0,
    *,
    lamda: float = DEFAULT_LAMDA,
    k: int = DEFAULT_K,
    hard_prune: float = DEFAULT_HARD_PRUNE,
) -> SelectionResult:
    """GraNd baseline (Paul et al. 2021): keep the n samples with the highest GraNd."""
    return top_n_select(scores.require("grand"), scores.eligible, n, "grand", seed)


@register_strategy("ccs", needs=("baselines",), hard_prunes=True)
def ccs(
    scores: ScoreSet,
    n: int,
    seed: int = 0,
    *,
    lamda: float = DEFAULT_LAMDA,
    k: int = DEFAULT_K,
    hard_prune: float = DEFAULT_HARD_PRUNE,
) -> SelectionResult:
    """CCS (Zheng et al. ICLR 2023): hard-prune the top β = hard_prune of EL2N, stratify the rest."""
    return _coverage("ccs", scores.require("el2n"), scores, n, seed, k, hard_prune)
