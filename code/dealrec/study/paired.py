"""Paired comparison of two recommenders on the same test users (the study's statistics).

Two selection strategies evaluated on the same fixed test users give, per user, a Recall@K and
an NDCG@K each; their per-user differences are paired, so the noise that comes from *which*
users happen to be in the test set cancels. With several seeds (each seed: one selection and
one fine-tuning run per strategy), the difference of user ``u`` is averaged over the seeds, and
the mean over users gets a percentile bootstrap interval (users resampled with replacement).
That interval holds the seeds fixed. With several seeds two intervals carry the seed-to-seed
noise too:

- a variance-component interval (:func:`variance_components`): the differences ``d[s, u]`` as a
  crossed random-effects model ``μ + a_s + b_u + e_su``, the components estimated by two-way ANOVA,
  the variance of the mean ``σ_a²/S + σ_b²/U + σ_e²/(SU)`` and a t interval with Satterthwaite's
  degrees of freedom. Where the seeds differ it tends to the t interval over the seed means (few
  degrees of freedom); where they do not, to the users' interval. The verdict reads this one;
- a two-level bootstrap (:func:`two_level_bootstrap`; seeds and users resampled), shown beside it:
  it counts the seed × user noise more than once (conservative when the seeds barely matter), and
  its percentile interval is narrower than the t interval when they do (three seeds are a small
  sample to resample).

:func:`power_factor` says how many times this study's paired data (seeds × users) a difference
of a given size needs to be detected with 80 % power at the 5 % level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from dealrec.metrics import hit_matrix


def per_user_metrics(ranked: np.ndarray, targets: Sequence[Sequence[int]], k: int) -> dict[str, np.ndarray]:
    """Recall@k and NDCG@k of every user (definitions of :func:`dealrec.metrics.topk_metrics`);
    users without targets get NaN (``topk_metrics`` skips them)."""
    ranked = np.asarray(ranked)[:, :k]
    tg = [sorted({int(i) for i in t}) for t in targets]
    hits = hit_matrix(ranked, tg)
    n_t = np.array([len(t) for t in tg], dtype=np.float64)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = (hits * discount[: hits.shape[1]]).sum(1)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(n_t, k).astype(int)]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(n_t > 0, hits.sum(1) / n_t, np.nan)
        ndcg = np.where(n_t > 0, dcg / ideal, np.nan)
    return {"Recall": recall, "NDCG": ndcg}


def metrics_from_ranks(ranks: Sequence[Sequence[int]], k: int) -> dict[str, np.ndarray]:
    """Recall@k and NDCG@k of every user from its targets' 0-based ranks (-1: not ranked), the
    per-user record of :func:`dealrec.metrics.hit_ranks` (valid for k up to the ranked list's
    length); users without targets get NaN. Same definitions as :func:`per_user_metrics`."""
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    recall = np.full(len(ranks), np.nan)
    ndcg = np.full(len(ranks), np.nan)
    for u, rs in enumerate(ranks):
        if not len(rs):
            continue
        hit = [r for r in rs if 0 <= r < k]
        recall[u] = len(hit) / len(rs)
        ndcg[u] = sum(discount[r] for r in hit) / ideal[min(len(rs), k)]
    return {"Recall": recall, "NDCG": ndcg}


def bootstrap_mean(diff: np.ndarray, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of ``diff`` with a percentile bootstrap interval, and the share of bootstrap means
    on the other side of 0 from the observed mean (a one-sided bootstrap p-value)."""
    diff = np.asarray(diff, dtype=np.float64)
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        raise ValueError("bootstrap_mean: no differences")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for s in range(0, n_boot, 1000):  # in blocks: n × 1000 indices at a time
        m = min(1000, n_boot - s)
        means[s: s + m] = diff[rng.integers(0, diff.size, size=(m, diff.size))].mean(1)
    mean = float(diff.mean())
    return {"mean": mean, **_percentile_interval(means, mean, level), "n_users": int(diff.size)}


def _percentile_interval(means: np.ndarray, mean: float, level: float) -> dict[str, float]:
    """The percentile interval of bootstrap ``means`` and the share of them on the other side of 0
    from the observed ``mean`` (a one-sided bootstrap p-value)."""
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    other = float(np.mean(means <= 0)) if mean > 0 else float(np.mean(means >= 0))
    return {"low": float(lo), "high": float(hi), "p_one_sided": other}


def two_level_bootstrap(d: np.ndarray, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Interval of the mean of ``d`` [seeds, users] when both the seeds and the users are samples:
    each replicate draws the seeds with replacement and the users with replacement (the same users
    for every seed: they are paired across seeds too) and averages. Unlike :func:`bootstrap_mean`
    of the per-user seed averages, it includes the seed-to-seed noise, so it is the interval to
    judge a strategy by when there are several seeds."""
    d = np.asarray(d, dtype=np.float64)
    keep = ~np.isnan(d).all(0)
    d = d[:, keep]
    s_n, u_n = d.shape
    if u_n == 0:
        raise ValueError("two_level_bootstrap: no differences")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    block = max(1, min(1000, 4_000_000 // (s_n * u_n)))  # [seeds, block, users] floats at a time
    for start in range(0, n_boot, block):
        m = min(block, n_boot - start)
        users = rng.integers(0, u_n, size=(m, u_n))
        seeds = rng.integers(0, s_n, size=(m, s_n))
        per_seed = np.nanmean(d[:, users], -1).T  # [m, seeds]
        means[start: start + m] = np.take_along_axis(per_seed, seeds, 1).mean(1)
    return _percentile_interval(means, float(np.nanmean(np.nanmean(d, 1))), level)


def variance_components(d: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """The crossed random-effects interval of the mean of ``d`` [seeds, users] (≥ 2 seeds; users
    with no value under any seed dropped): method-of-moments components of a two-way ANOVA without
    replication, ``Var(mean) = (MS_seed + MS_user − MS_resid) / (S·U)`` (each component truncated
    at 0), and a t interval with Satterthwaite's degrees of freedom."""
    d = np.asarray(d, dtype=np.float64)
    d = d[:, ~np.isnan(d).any(0)]
    s_n, u_n = d.shape
    if s_n < 2 or u_n < 2:
        raise ValueError("variance_components: needs at least 2 seeds and 2 users")
    grand = d.mean()
    seed_means, user_means = d.mean(1), d.mean(0)
    ms_seed = u_n * np.sum((seed_means - grand) ** 2) / (s_n - 1)
    ms_user = s_n * np.sum((user_means - grand) ** 2) / (u_n - 1)
    resid = d - seed_means[:, None] - user_means[None, :] + grand
    ms_resid = np.sum(resid**2) / ((s_n - 1) * (u_n - 1))
    var_seed = max(0.0, (ms_seed - ms_resid) / u_n)
    var_user = max(0.0, (ms_user - ms_resid) / s_n)
    var_mean = var_seed / s_n + var_user / u_n + ms_resid / (s_n * u_n)
    # Satterthwaite: S·U·Var(mean) = a_s·MS_seed + a_u·MS_user + a_e·MS_resid, a_s (a_u) = 1 where
    # that component is positive, a_e = 1 − a_s − a_u
    terms = [(ms_seed if var_seed > 0 else 0.0, s_n - 1), (ms_user if var_user > 0 else 0.0, u_n - 1),
             (ms_resid * (1 - (var_seed > 0) - (var_user > 0)), (s_n - 1) * (u_n - 1))]
    num = sum(c for c, _ in terms) ** 2
    den = sum(c**2 / df for c, df in terms if c)
    df = float(num / den) if den > 0 else float("inf")
    se = float(np.sqrt(var_mean))
    t = float(stats.t.ppf(1 - (1 - level) / 2, df)) if np.isfinite(df) else float(stats.norm.ppf(1 - (1 - level) / 2))
    return {"mean": float(grand), "se": se, "df": df, "low": float(grand - t * se), "high": float(grand + t * se),
            "var_seed": float(var_seed), "var_user": float(var_user), "var_resid": float(ms_resid)}


def power_factor(se: float, effect: float, level: float = 0.95, power: float = 0.8) -> float:
    """How many times the paired data behind a standard error ``se`` a two-sided test at ``level``
    needs to detect a true difference ``effect`` with probability ``power`` (the standard error
    shrinks with the square root of the data): ``((z_{1-α/2} + z_power) · se / effect)²``."""
    if effect == 0:
        return float("inf")
    z = stats.norm.ppf(1 - (1 - level) / 2) + stats.norm.ppf(power)
    return float((z * se / abs(effect)) ** 2)


def paired_difference(
    runs: Mapping[int, np.ndarray],
    baseline: Mapping[int, np.ndarray],
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Strategy minus baseline for one metric: ``runs[seed]`` and ``baseline[seed]`` are per-user
    values on the same users in the same order. Only the seeds both have are paired.

    ``low``/``high``: the interval the verdict uses, named by ``interval`` — with several seeds the
    variance-component t interval (:func:`variance_components`; ``se``, ``df`` and the components
    beside it), with one seed the users' bootstrap; ``low_boot``/``high_boot``: the two-level
    bootstrap (several seeds); ``low_users``/``high_users``: the users' bootstrap of the per-user
    seed averages, i.e. given these seeds. ``seed_se``: per seed, the standard error of that seed's
    mean difference over its users (user-sampling noise, to compare with ``seed_std``)."""
    seeds = sorted(set(runs) & set(baseline))
    if not seeds:
        raise ValueError("paired_difference: no seed in common with the baseline")
    per_seed = []
    for s in seeds:
        a, b = np.asarray(runs[s], dtype=np.float64), np.asarray(baseline[s], dtype=np.float64)
        if a.shape != b.shape:
            raise ValueError(f"seed {s}: {a.shape[0]} users vs the baseline's {b.shape[0]}; not the same test users")
        per_seed.append(a - b)
    d = np.stack(per_seed)  # [seeds, users]
    out = bootstrap_mean(np.nanmean(d, 0), n_boot, seed, level)
    out["low_users"], out["high_users"], out["p_users"] = out["low"], out["high"], out["p_one_sided"]
    out["interval"] = "users"
    out["se"] = float(np.nanstd(np.nanmean(d, 0), ddof=1) / np.sqrt(out["n_users"]))
    if len(seeds) > 1:
        boot = two_level_bootstrap(d, n_boot, seed, level)
        out["low_boot"], out["high_boot"], out["p_boot"] = boot["low"], boot["high"], boot["p_one_sided"]
        vc = variance_components(d, level)
        out.update({k: vc[k] for k in ("low", "high", "se", "df", "var_seed", "var_user", "var_resid")},
                   interval="variance components")
    seed_means = np.nanmean(d, 1)
    out["seed_se"] = [float(np.nanstd(row, ddof=1) / np.sqrt(np.sum(~np.isnan(row)))) for row in d]
    out["seeds"] = len(seeds)
    out["seed_means"] = [float(x) for x in seed_means]
    out["seed_std"] = float(seed_means.std(ddof=1)) if len(seeds) > 1 else float("nan")
    out["baseline_mean"] = float(np.nanmean(np.stack([np.asarray(baseline[s], dtype=np.float64) for s in seeds])))
    return out


def verdict(r: Mapping[str, float], name: str, baseline: str = "random") -> str:
    """One plain sentence about a :func:`paired_difference` result (by ``low``/``high``; with one
    seed it says that the interval leaves out the seed-to-seed noise)."""
    lo, hi = r["low"], r["high"]
    caveat = " over test users, one seed" if r.get("seeds", 2) == 1 else ""
    if lo > 0:
        return f"{name} beats {baseline} (95 % interval of the difference {lo:+.4f} … {hi:+.4f}{caveat} excludes 0)"
    if hi < 0:
        return f"{name} is worse than {baseline} (95 % interval {lo:+.4f} … {hi:+.4f}{caveat} excludes 0)"
    return f"{name} and {baseline} cannot be told apart (95 % interval {lo:+.4f} … {hi:+.4f}{caveat} contains 0)"
