"""Paired statistics of the study: per-user metrics, bootstrap intervals, seed pairing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dealrec.metrics import hit_ranks, topk_metrics
from dealrec.study.paired import (
    bootstrap_mean,
    metrics_from_ranks,
    paired_difference,
    per_user_metrics,
    power_factor,
    two_level_bootstrap,
    variance_components,
    verdict,
)


def test_per_user_metrics_by_hand_and_their_mean_is_topk_metrics():
    ranked = np.array([[5, 1, 2, 3], [7, 8, 9, 4], [0, 1, 2, 3]])
    targets = [[1, 3], [4], []]
    m = per_user_metrics(ranked, targets, 3)
    # user 0: hit at rank 1 (of 2 targets): recall 1/2, NDCG (1/log2 3) / (1 + 1/log2 3)
    assert m["Recall"][0] == pytest.approx(0.5)
    assert m["NDCG"][0] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["Recall"][1] == 0 and m["NDCG"][1] == 0  # its target is at rank 4 > 3
    assert np.isnan(m["Recall"][2])
    rng = np.random.default_rng(0)
    ranked = np.stack([rng.permutation(50)[:20] for _ in range(200)])
    targets = [list(rng.choice(50, size=rng.integers(0, 4), replace=False)) for _ in range(200)]
    ref = topk_metrics(ranked, targets, [10])
    got = per_user_metrics(ranked, targets, 10)
    assert np.nanmean(got["Recall"]) == pytest.approx(ref["Recall"][0])
    assert np.nanmean(got["NDCG"]) == pytest.approx(ref["NDCG"][0])


def test_bootstrap_of_a_constant_is_that_constant():
    r = bootstrap_mean(np.full(40, 0.25), n_boot=500)
    assert r["mean"] == r["low"] == r["high"] == pytest.approx(0.25) and r["p_one_sided"] == 0


def test_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    d = rng.normal(0.1, 1.0, size=4000)
    r = bootstrap_mean(d, n_boot=4000, seed=3)
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert r["low"] == pytest.approx(d.mean() - 1.96 * se, abs=0.25 * se)
    assert r["high"] == pytest.approx(d.mean() + 1.96 * se, abs=0.25 * se)


def test_pairing_removes_the_test_user_noise():
    """Users differ a lot (shared noise); the strategy adds +0.02 to everyone: paired, the
    interval is tight around 0.02 though the unpaired spread is 50 times larger."""
    rng = np.random.default_rng(2)
    base = {s: rng.random(300) for s in (0, 1, 2)}
    runs = {s: base[s] + 0.02 for s in (0, 1, 2)}
    r = paired_difference(runs, base, n_boot=1000)
    assert r["mean"] == pytest.approx(0.02) and r["low"] == pytest.approx(0.02) and r["seeds"] == 3
    assert r["seed_std"] == pytest.approx(0.0, abs=1e-12)
    assert "beats random" in verdict(r, "dealrec")


def test_two_level_bootstrap_carries_the_seed_noise():
    """Every user gains 0 under seed 0 and 1 under seed 1: given the seeds the mean is exactly 0.5,
    but a replicate that draws seed 0 twice gives 0, seed 1 twice gives 1 (each with chance 1/4),
    so the two-level 95 % interval is [0, 1] and no verdict is drawn."""
    d = np.stack([np.zeros(50), np.ones(50)])
    r = two_level_bootstrap(d, n_boot=4000, seed=1)
    assert r["low"] == 0.0 and r["high"] == 1.0
    runs = {0: d[0], 1: d[1]}
    base = {0: np.zeros(50), 1: np.zeros(50)}
    p = paired_difference(runs, base, n_boot=4000)
    assert p["low_users"] == p["high_users"] == pytest.approx(0.5) and p["mean"] == pytest.approx(0.5)
    assert (p["low_boot"], p["high_boot"]) == (0.0, 1.0)
    # the variance components see two seed means 0 and 1: the t interval with one degree of freedom
    assert p["interval"] == "variance components" and p["df"] == pytest.approx(1.0)
    assert p["low"] < 0 < 1 < p["high"]
    assert "cannot be told apart" in verdict(p, "dealrec")
    one = paired_difference({0: d[1]}, {0: base[0]}, n_boot=500)  # one seed: the users' interval, said so
    assert one["interval"] == "users" and (one["low"], one["high"]) == (one["low_users"], one["high_users"])
    assert "one seed" in verdict(one, "dealrec")


def test_two_level_bootstrap_without_seed_noise_is_the_users_bootstrap():
    """Identical seeds: the two-level interval has the users' bootstrap width (normal approximation)."""
    rng = np.random.default_rng(4)
    u = rng.normal(0.05, 1.0, size=3000)
    r = two_level_bootstrap(np.stack([u, u, u]), n_boot=3000, seed=2)
    se = u.std(ddof=1) / math.sqrt(u.size)
    assert r["low"] == pytest.approx(u.mean() - 1.96 * se, abs=0.25 * se)
    assert r["high"] == pytest.approx(u.mean() + 1.96 * se, abs=0.25 * se)


@pytest.mark.parametrize("seed_sd", [0.0, 0.1])
def test_variance_component_interval_covers_at_the_nominal_rate(seed_sd):
    """Simulated differences seed effect + user effect + residual (3 seeds, 2,000 users): the
    variance-component interval covers the true mean 0 about 95 % of the time whether the seeds
    matter or not (the two-level bootstrap over-covers without seed noise and under-covers with)."""
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(300):
        d = rng.normal(0, seed_sd, (3, 1)) + rng.normal(0, 1, (1, 2000)) + rng.normal(0, 0.5, (3, 2000))
        r = variance_components(d)
        covered += r["low"] <= 0 <= r["high"]
    assert 0.91 <= covered / 300 <= 0.985


def test_variance_components_by_hand():
    """Seeds that do not differ: the interval is the users' t interval of the per-user means."""
    u = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    r = variance_components(np.stack([u, u]))
    assert r["var_seed"] == 0 and r["var_resid"] == 0 and r["var_user"] == pytest.approx(u.var(ddof=1))
    assert r["se"] == pytest.approx(u.std(ddof=1) / math.sqrt(5)) and r["df"] == pytest.approx(4)


def test_power_factor():
    """A standard error of half the effect needs (2.80 · 0.5)² ≈ 1.96 times the data."""
    assert power_factor(0.5, 1.0) == pytest.approx((1.959964 + 0.841621) ** 2 / 4, rel=1e-5)
    assert power_factor(0.1, 0.0) == float("inf")


def test_only_common_seeds_are_paired_and_users_must_align():
    a = {0: np.ones(5), 1: np.ones(5), 7: np.ones(5)}
    b = {0: np.zeros(5), 1: np.ones(5)}
    r = paired_difference(a, b, n_boot=200)
    assert r["seeds"] == 2 and r["seed_means"] == [1.0, 0.0] and r["mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="not the same test users"):
        paired_difference({0: np.ones(5)}, {0: np.ones(4)})
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({3: np.ones(2)}, {0: np.ones(2)})
    assert "cannot be told apart" in verdict({"low": -0.1, "high": 0.2}, "x")


def test_hit_ranks_by_hand_and_metrics_from_ranks_equal_the_ranked_lists():
    ranked = np.array([[5, 1, 2, 3], [7, 8, 9, 4], [0, 1, 2, 3]])
    assert hit_ranks(ranked, [[3, 1, 1], [4, 6], []]) == [[1, 3], [3, -1], []]  # distinct targets, ascending ids
    rng = np.random.default_rng(4)
    ranked = np.stack([rng.permutation(60)[:20] for _ in range(300)])
    targets = [list(rng.choice(60, size=rng.integers(0, 5), replace=True)) for _ in range(300)]
    ranks = hit_ranks(ranked, targets)
    for k in (1, 5, 10, 20):
        a, b = metrics_from_ranks(ranks, k), per_user_metrics(ranked, targets, k)
        for m in ("Recall", "NDCG"):
            np.testing.assert_allclose(a[m], b[m], rtol=0, atol=1e-12)
        ref = topk_metrics(ranked, targets, [k])
        assert np.nanmean(a["Recall"]) == pytest.approx(ref["Recall"][0], abs=1e-12)
        assert np.nanmean(a["NDCG"]) == pytest.approx(ref["NDCG"][0], abs=1e-12)
    with pytest.raises(ValueError, match="aligned"):
        hit_ranks(ranked, targets[:3])
