"""Selection stage: coverage-enhanced selection (DEALRec §4.3), Eq. 13, strategies, plot."""

from __future__ import annotations

import json
import logging
import math
import random

import numpy as np
import pytest
import torch

from dealrec.select import (
    STRATEGIES,
    MissingScoreError,
    ScoreSet,
    coverage_select,
    get_strategy,
    minmax,
    overall_score,
    plot_selection,
    register_strategy,
    run_strategy,
    stratum_budgets,
)

# ---------------------------------------------------------------- a small explicit example
# 13 eligible samples + 2 ineligible ones (indices 13, 14). hard_prune = 0.25:
# floor(0.25 * 13) = 3 pruned, the three highest eligible scores (indices 10, 11, 12).
# The 10 kept scores span [0, 1].
HAND = np.array([0.0, 0.1, 0.25, 0.3, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0, 5.0, 4.0, 3.0, 100.0, 0.5])
HAND_ELIGIBLE = np.array([True] * 13 + [False, False])


def test_hand_example_k4() -> None:
    # k = 4: interval 0.25, upper edges 0.25, 0.5, 0.75, 1.0 (a score on an edge goes below it).
    # strata: s0 = {0.0, 0.1, 0.25}, s1 = {0.3}, s2 = {0.6, 0.7, 0.75}, s3 = {0.8, 0.9, 1.0}
    # sizes [3, 1, 3, 3]; n = 6, served by size then index: s1, s0, s2, s3
    #   s1: min(1, floor(6/4) = 1) = 1, m = 5
    #   s0: min(3, floor(5/3) = 1) = 1, m = 4
    #   s2: min(3, floor(4/2) = 2) = 2, m = 2
    #   s3: min(3, floor(2/1) = 2) = 2, m = 0
    r = coverage_select(HAND, HAND_ELIGIBLE, n=6, k=4, hard_prune=0.25, seed=0)
    assert r.n_hard_pruned == 3 and r.hard_pruned == [10, 11, 12]
    assert r.strata_edges == [0.25, 0.5, 0.75, 1.0] and r.score_min == 0.0
    assert r.sizes_per_stratum == [3, 1, 3, 3]
    assert r.stratum_order == [1, 0, 2, 3]
    assert r.counts_per_stratum == [1, 1, 2, 2]
    assert r.stratum_of.tolist() == [0, 0, 0, 1, 2, 2, 2, 3, 3, 3, -1, -1, -1, -1, -1]
    assert len(r.indices) == 6 and r.shortfall == 0
    assert 3 in r.indices  # the only member of s1
    per_stratum = np.bincount(r.stratum_of[r.indices], minlength=4).tolist()
    assert per_stratum == [1, 1, 2, 2]


def test_hand_example_k8_with_empty_stratum() -> None:
    # k = 8: interval 0.125, edges 0.125, 0.25, ..., 1.0
    # s0 = {0.0, 0.1}, s1 = {0.25}, s2 = {0.3}, s3 = {}, s4 = {0.6}, s5 = {0.7, 0.75},
    # s6 = {0.8}, s7 = {0.9, 1.0}: sizes [2, 1, 1, 0, 1, 2, 1, 2]; s3 is dropped, 7 strata left.
    # n = 6, order s1, s2, s4, s6, s0, s5, s7:
    #   s1: min(1, floor(6/7) = 0) = 0, m = 6     <- a member, yet no budget
    #   s2: min(1, floor(6/6) = 1) = 1, m = 5
    #   s4: min(1, floor(5/5) = 1) = 1, m = 4
    #   s6: min(1, floor(4/4) = 1) = 1, m = 3
    #   s0: min(2, floor(3/3) = 1) = 1, m = 2
    #   s5: min(2, floor(2/2) = 1) = 1, m = 1
    #   s7: min(2, floor(1/1) = 1) = 1, m = 0
    r = coverage_select(HAND, HAND_ELIGIBLE, n=6, k=8, hard_prune=0.25, seed=0)
    assert r.sizes_per_stratum == [2, 1, 1, 0, 1, 2, 1, 2]
    assert r.stratum_order == [1, 2, 4, 6, 0, 5, 7]
    assert r.counts_per_stratum == [1, 0, 1, 0, 1, 1, 1, 1]
    assert 2 not in r.indices  # index 2 (score 0.25) is alone in s1, which got no budget
    assert {3, 4, 7} <= set(r.indices)


def test_stratum_budgets_by_hand() -> None:
    counts, order = stratum_budgets(np.array([5, 0, 2, 2, 9]), 10)
    # order s2, s3 (size 2, lower index first), s0, s4; s1 empty
    # s2: min(2, 10//4=2)=2 m=8; s3: min(2, 8//3=2)=2 m=6; s0: min(5, 6//2=3)=3 m=3; s4: 3
    assert order == [2, 3, 0, 4]
    assert counts.tolist() == [3, 0, 2, 2, 3]


# ---------------------------------------------------------------- properties
def _random_case(rng: np.random.Generator, n_samples: int = 400) -> tuple[np.ndarray, np.ndarray]:
    scores = rng.exponential(size=n_samples) ** rng.uniform(0.5, 3)  # skewed: tiny top strata
    return scores.astype(np.float32), rng.random(n_samples) > 0.15


def test_never_selects_pruned_or_ineligible() -> None:
    rng = np.random.default_rng(0)
    for seed in range(10):
        scores, eligible = _random_case(rng)
        r = coverage_select(scores, eligible, n=100, k=10, hard_prune=0.2, seed=seed)
        sel = np.array(r.indices)
        assert len(set(r.indices)) == 100 and r.shortfall == 0
        assert eligible[sel].all()
        assert not set(r.indices) & set(r.hard_pruned)
        assert r.n_hard_pruned == math.floor(0.2 * eligible.sum())
        # the pruned are the highest eligible scores
        kept = eligible.copy()
        kept[r.hard_pruned] = False
        assert scores[r.hard_pruned].min() >= scores[kept].max()
        assert (r.stratum_of[~kept] == -1).all() and (r.stratum_of[kept] >= 0).all()


def test_seed_determinism() -> None:
    scores, eligible = _random_case(np.random.default_rng(1))
    a = coverage_select(scores, eligible, 80, 12, 0.1, seed=7)
    b = coverage_select(scores, eligible, 80, 12, 0.1, seed=7)
    assert a.indices == b.indices
    others = [coverage_select(scores, eligible, 80, 12, 0.1, seed=s) for s in range(5)]
    assert all(o.counts_per_stratum == a.counts_per_stratum for o in others)
    assert len({tuple(o.indices) for o in others}) > 1


def test_all_equal_scores() -> None:
    scores = np.full(20, 0.5)
    r = coverage_select(scores, None, n=4, k=5, hard_prune=0.1, seed=0)
    assert r.hard_pruned == [0, 1]  # ties: the lower indices are pruned first
    assert r.sizes_per_stratum == [18, 0, 0, 0, 0]
    assert r.counts_per_stratum == [4, 0, 0, 0, 0]
    assert r.strata_edges == [0.5] * 5
    assert len(r.indices) == 4 and min(r.indices) >= 2


def test_k_larger_than_pool() -> None:
    scores = np.array([0.3, 0.1, 0.9, 0.5, 0.2])
    r = coverage_select(scores, None, n=3, k=10, hard_prune=0.0, seed=0)
    assert sum(r.sizes_per_stratum) == 5 and len(r.sizes_per_stratum) == 10
    assert len(r.indices) == 3 and r.shortfall == 0
    assert sum(r.counts_per_stratum) == 3
    full = coverage_select(scores, None, n=5, k=10, hard_prune=0.0, seed=0)
    assert full.indices == [0, 1, 2, 3, 4]


def test_tiny_strata() -> None:
    # one outlier far above the rest: most strata are empty, the top one has a single member
    scores = np.concatenate([np.linspace(0, 1, 50), [100.0]])
    r = coverage_select(scores, None, n=10, k=20, hard_prune=0.0, seed=3)
    assert r.sizes_per_stratum[0] == 50 and r.sizes_per_stratum[-1] == 1
    assert sum(r.sizes_per_stratum) == 51
    assert r.counts_per_stratum[-1] == 1 and r.counts_per_stratum[0] == 9
    assert 50 in r.indices


def test_float32_max_lands_in_last_stratum() -> None:
    # in float32, s_min + k * interval rounds below s_max here; the original would leave the
    # maximum in no stratum. The last edge is s_max, so every kept sample has a stratum.
    lo, hi, k = np.float32(0.052021302), np.float32(0.23064221), 47
    interval = (hi - lo) / np.float32(k)
    assert lo + interval * np.float32(k) < hi
    scores = np.array([lo, hi, (lo + hi) / 2], dtype=np.float32)
    r = coverage_select(scores, None, n=3, k=k, hard_prune=0.0)
    assert r.stratum_of[1] == k - 1
    assert r.indices == [0, 1, 2]


def test_shortfall_reported(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(
        ValueError, match=r"n=11 is larger than the pool of 10 .*13 eligible, 3 of them hard-pruned"
    ):
        coverage_select(HAND, HAND_ELIGIBLE, n=11, k=4, hard_prune=0.25)
    with caplog.at_level(logging.WARNING, logger="dealrec"):
        r = coverage_select(HAND, HAND_ELIGIBLE, n=12, k=4, hard_prune=0.25, allow_shortfall=True)
    assert r.shortfall == 2 and len(r.indices) == 10
    assert r.to_dict()["shortfall"] == 2
    assert "shortfall 2" in caplog.text


def test_no_shortfall_when_pool_suffices() -> None:
    # the smallest-first rule never rounds short when n <= pool (the largest stratum comes last)
    rng = np.random.default_rng(2)
    for _ in range(200):
        sizes = rng.integers(0, 6, size=int(rng.integers(1, 12)))
        if sizes.sum() == 0:
            continue
        n = int(rng.integers(1, sizes.sum() + 1))
        counts, _ = stratum_budgets(sizes, n)
        assert counts.sum() == n and (counts <= sizes).all()


# ---------------------------------------------------------------- the original loop, literally
def reference_select(scores: np.ndarray, eligible: np.ndarray, n: int, k: int, hard_prune: float, seed: int):
    """``code/prune/prune.py`` as written (torch, list of dicts per stratum, ``random.sample``).

    One deviation, as in the package: the last edge is s_max (see test_float32_max_...).
    Returns (sizes per stratum, selected count per stratum, hard-pruned indices, selected indices).
    """
    elig = np.flatnonzero(eligible)
    overall = torch.from_numpy(scores[elig])
    scores_sorted, indices = torch.sort(overall, descending=True)
    n_prune = math.floor(hard_prune * len(scores_sorted))
    pruned = sorted(int(elig[i]) for i in indices[:n_prune])
    scores_sorted, indices = scores_sorted[n_prune:], indices[n_prune:]
    s_max, s_min = torch.max(scores_sorted), torch.min(scores_sorted)
    interval = (s_max - s_min) / k
    s_split = [min(s_min + (interval * _), s_max) for _ in range(1, k + 1)]
    s_split[-1] = s_max
    refs = [float(r) for r in s_split]
    score_split: list[list[dict]] = [[] for _ in range(k)]
    for idxx, s in enumerate(scores_sorted.tolist()):
        for idx, ref in enumerate(refs):
            if s <= ref:
                score_split[idx].append({int(elig[indices[idxx]]): s})
                break
    stratum_id = {id(g): i for i, g in enumerate(score_split)}
    sizes = [len(g) for g in score_split]
    counts = [0] * k
    coreset: list[int] = []
    rand = random.Random(seed)
    m = n
    while len(score_split):
        group = sorted(score_split, key=lambda x: len(x))
        group = [strat for strat in group if len(strat)]
        if not group:
            break
        budget = min(len(group[0]), math.floor(m / len(group)))
        fewest = group[0]
        selected_idx = rand.sample([list(_.keys())[0] for _ in fewest], budget)
        coreset.extend(selected_idx)
        counts[stratum_id[id(fewest)]] = len(selected_idx)
        score_split = group[1:]
        m = m - len(selected_idx)
    return sizes, counts, pruned, coreset


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference_loop(dtype: type) -> None:
    rng = np.random.default_rng(123)
    for trial in range(40):
        n_samples = int(rng.integers(20, 300))
        scores, eligible = _random_case(rng, n_samples)
        scores = scores.astype(dtype)
        k = int(rng.choice([1, 2, 3, 7, 25, 50, 400]))
        hard_prune = float(rng.choice([0.0, 0.1, 0.3]))
        pool = int(eligible.sum()) - math.floor(hard_prune * eligible.sum())
        n = int(rng.integers(1, pool + 1))
        sizes, counts, pruned, coreset = reference_select(scores, eligible, n, k, hard_prune, trial)
        r = coverage_select(scores, eligible, n, k, hard_prune, seed=trial)
        assert r.sizes_per_stratum == sizes, trial
        assert r.counts_per_stratum == counts, trial
        assert r.hard_pruned == pruned, trial
        assert len(r.indices) == len(coreset) == n


# ---------------------------------------------------------------- argument errors
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be a positive integer"),
        ({"n": -3}, "n must be a positive integer"),
        ({"n": 2.5}, "n must be a positive integer"),
        ({"k": 0}, "k must be a positive integer"),
        ({"hard_prune": 1.0}, r"hard_prune must be a fraction in \[0, 1\)"),
        ({"hard_prune": -0.1}, "hard_prune must be a fraction"),
        ({"eligible": np.ones(3, bool)}, "length mismatch: eligible has 3"),
        ({"n": 16}, "larger than the pool of 15"),
    ],
)
def test_coverage_errors(kwargs: dict, message: str) -> None:
    args = {"scores": HAND, "eligible": None, "n": 3, "k": 4, "hard_prune": 0.0} | kwargs
    with pytest.raises(ValueError, match=message):
        coverage_select(**args)


def test_nan_scores() -> None:
    scores = HAND.copy()
    scores[13] = np.nan  # ineligible: ignored
    coverage_select(scores, HAND_ELIGIBLE, 3, 4, 0.25)
    scores[2] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*first indices: \[2\]"):
        coverage_select(scores, HAND_ELIGIBLE, 3, 4, 0.25)


# ---------------------------------------------------------------- Eq. 13
def test_minmax() -> None:
    x = np.array([2.0, 4.0, 3.0, 100.0, np.nan])
    elig = np.array([True, True, True, False, False])
    assert minmax(x, elig).tolist() == [0.0, 1.0, 0.5, 0.0, 0.0]
    assert minmax(np.full(4, 7.0)).tolist() == [0.0] * 4
    assert minmax(np.array([1.0, 2.0]), np.array([False, False])).tolist() == [0.0, 0.0]
    assert minmax(torch.tensor([1.0, 3.0])).dtype == np.float32


def test_overall_score() -> None:
    inf = np.array([0.0, 10.0, 5.0])
    eff = np.array([4.0, 2.0, 3.0])
    assert overall_score(inf, eff, 0.5).tolist() == [0.5, 1.0, 0.75]
    assert overall_score(inf, None, 0).tolist() == [0.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="lamda"):
        overall_score(inf, eff, -0.1)


# ---------------------------------------------------------------- strategies
def _score_set(n_samples: int = 300, seed: int = 0, **drop: bool) -> ScoreSet:
    rng = np.random.default_rng(seed)
    scores = {name: rng.gamma(2.0, size=n_samples) for name in ("influence", "effort", "el2n", "grand")}
    for name in drop:
        scores[name] = None
    return ScoreSet(**scores, eligible=torch.from_numpy(rng.random(n_samples) > 0.2))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_strategy_returns_n_unique_eligible(name: str) -> None:
    scores = _score_set()
    for seed in range(3):
        r = run_strategy(name, scores, 50, seed, lamda=0.3, k=10, hard_prune=0.1)
        assert r.method == name
        assert len(r.indices) == len(set(r.indices)) == 50 and r.shortfall == 0
        assert scores.eligible[r.indices].all()
        json.dumps(r.to_dict(per_sample=True))


def test_strategy_semantics() -> None:
    s = _score_set()
    elig = s.eligible
    overall = overall_score(s.influence, s.effort, 0.3, elig)
    greedy = get_strategy("greedy")(s, 40, lamda=0.3)
    assert set(greedy.indices) == set(np.flatnonzero(elig)[np.argsort(-overall[elig])[:40]].tolist())
    el2n = get_strategy("el2n")(s, 40)
    assert s.el2n[el2n.indices].min() >= s.el2n[elig & ~np.isin(np.arange(len(s)), el2n.indices)].max()
    a = run_strategy("dealrec", s, 40, 5, lamda=0.3, k=8)
    b = run_strategy("dealrec-stable", s, 40, 5, lamda=0.3, k=8)
    assert a.indices == b.indices and b.method == "dealrec-stable"
    assert a.indices == coverage_select(overall, elig, 40, 8, 0.1, 5).indices
    ccs = get_strategy("ccs")(s, 40, 1, k=8, hard_prune=0.2)
    assert ccs.indices == coverage_select(s.el2n, elig, 40, 8, 0.2, 1).indices
    infl = get_strategy("influence")(s, 40, 2, lamda=0.9, k=8)
    assert infl.counts_per_stratum == coverage_select(s.influence, elig, 40, 8, 0.1, 2).counts_per_stratum
    assert infl.params["lamda"] == 0.0
    rnd = get_strategy("random")
    assert rnd(s, 40, 1).indices == rnd(s, 40, 1).indices != rnd(s, 40, 2).indices


def test_strategy_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown selection strategy 'nope'; registered: .*dealrec"):
        get_strategy("nope")
    with pytest.raises(MissingScoreError, match=r"'effort' score, which is missing.*scores stage"):
        run_strategy("dealrec", _score_set(effort=True), 10)
    with pytest.raises(MissingScoreError, match="'el2n'"):
        run_strategy("ccs", _score_set(el2n=True), 10)
    with pytest.raises(TypeError):
        run_strategy("dealrec", _score_set(), 10, lamdba=0.3)
    with pytest.raises(ValueError, match="larger than the pool of"):
        run_strategy("el2n", _score_set(20), 100)
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("dealrec")(lambda *a, **kw: None)
    with pytest.raises(ValueError, match="different lengths"):
        ScoreSet(influence=np.ones(3), effort=np.ones(4))
    with pytest.raises(ValueError, match="length mismatch"):
        ScoreSet(influence=np.ones(3), eligible=np.ones(4, bool))


# ---------------------------------------------------------------- plot
def test_plot_selection(tmp_path) -> None:
    s = _score_set()
    r = run_strategy("dealrec", s, 50, 0, lamda=0.3, k=10, hard_prune=0.1)
    out = tmp_path / "fig" / "selection.png"
    plot_selection(r.scores, s.eligible, r, out, "dealrec test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    greedy = run_strategy("greedy", s, 50)
    plot_selection(greedy.scores, s.eligible, greedy, tmp_path / "greedy.png", "")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["greedy.png", "selection.png"]
