"""The study's report: tables of mean ± std over seeds, the bar chart, and ``REPORT.md``.

Pure rendering of the rows that :func:`dealrec.study.runner.collect` gathered; nothing here runs a
stage. :func:`render_report` returns the Markdown, :func:`write_report` writes ``REPORT.md``,
``results.json`` and ``report.png``.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dealrec.core.files import atomic_path, write_json, write_text
from dealrec.core.hardware import cpu_name
from dealrec.core.logs import LOG
from dealrec.core.model_id import model_id
from dealrec.study.paired import metrics_from_ranks, paired_difference, power_factor, verdict

# The cutoffs of the paper's Table 2 per data set — Games @10/@20, MicroLens-50K and Book @20/@50
# (paper §4.1.2 and its footnote 8) — which the report's tables follow; every run record holds
# the metrics at all of ROW_KS.
PAPER_KS: dict[str, tuple[int, int]] = {"microlens-50k": (20, 50), "book": (20, 50)}
DEFAULT_REPORT_KS = (10, 20)
ROW_KS = (10, 20, 50)


def report_ks(data_name: str) -> tuple[int, int]:
    """The paper's two cutoffs for ``data_name`` (Games' for a data set the paper does not have)."""
    return PAPER_KS.get(data_name, DEFAULT_REPORT_KS)


def report_metrics(data_name: str) -> tuple[str, ...]:
    """The report's columns for ``data_name``: Recall and NDCG at :func:`report_ks`."""
    return tuple(f"{m}@{k}" for m in ("Recall", "NDCG") for k in report_ks(data_name))


METRICS = report_metrics("games")

# Paper Table 2 (BIGRec backend, LLaMA-7B, n = 1024 few-shot samples, 4 GPUs) in the columns of
# report_metrics(data set): Games Recall@10, Recall@20, NDCG@10, NDCG@20; MicroLens-50K Recall@20,
# Recall@50, NDCG@20, NDCG@50. "Full data" is BIGRec fine-tuned on every sample (paper Table 3).
PAPER_TABLE2: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "games": {
        "DEALRec": (0.0181, 0.0276, 0.0115, 0.0142),
        "Random": (0.0163, 0.0241, 0.0100, 0.0122),
        "Full data": (0.0169, 0.0233, 0.0102, 0.0120),
    },
    "microlens-50k": {
        "DEALRec": (0.0124, 0.0160, 0.0055, 0.0064),
        "Random": (0.0108, 0.0151, 0.0044, 0.0054),
        "Full data": (0.0081, 0.0136, 0.0038, 0.0053),
    },
}
# Paper Table 2, the TIGER backend at the same n, in the same columns.
PAPER_TIGER: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "games": {
        "DEALRec": (0.0074, 0.0114, 0.0062, 0.0074),
        "Random": (0.0062, 0.0102, 0.0039, 0.0051),
    },
    "microlens-50k": {
        "DEALRec": (0.0058, 0.0076, 0.0020, 0.0020),
        "Random": (0.0037, 0.0059, 0.0011, 0.0014),
    },
}
PAPER_N = 1024  # the paper's few-shot sample count in Table 2
PAPER_NOTE = f"BIGRec with LLaMA-7B, n = {PAPER_N}, all test users, 4 GPUs (paper Table 2)"
SIGNAL_NAMES = {"llm": "LLM", "sasrec": "SASRec", "tiger": "TIGER"}

REFERENCE = "all candidates"  # SASRec trained on every candidate user (the full-data row)
BASELINE = "random"  # what the paired table compares every strategy with
PAIRED_METRICS = ("Recall@20", "NDCG@20")
N_BOOT = 10_000


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        raise ValueError("mean_std of no values")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def summarize(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS) -> dict[str, dict[str, tuple[float, float]]]:
    """{strategy: {metric: (mean, std)}} over the seeds of each strategy, in first-seen order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["strategy"], []).append(r)
    return {s: {m: mean_std([r[m] for r in rs]) for m in metrics} for s, rs in groups.items()}


def markdown_table(summary: dict[str, dict[str, tuple[float, float]]], n_seeds: dict[str, int],
                   paper: dict[str, tuple[float, ...]] | None = None, metrics: Sequence[str] = METRICS) -> str:
    """A Markdown table of mean ± std per strategy (the best mean per column in bold), then the
    paper's rows, if given."""
    head = "| strategy | seeds | " + " | ".join(metrics) + " |"
    lines = [head, "|" + "---|" * (len(metrics) + 2)]
    best = {m: max((v[m][0] for v in summary.values()), default=0.0) for m in metrics}
    for s, vals in summary.items():
        cells = []
        for m in metrics:
            mu, sd = vals[m]
            cell = f"{mu:.4f} ± {sd:.4f}"
            cells.append(f"**{cell}**" if len(summary) > 1 and mu == best[m] and mu > 0 else cell)
        lines.append(f"| {s} | {n_seeds.get(s, 1)} | " + " | ".join(cells) + " |")
    for name, vals in (paper or {}).items():
        lines.append(f"| paper: {name} | – | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    return "\n".join(lines)


def plot_report(panels: dict[str, dict[str, dict[str, tuple[float, float]]]], path: str | Path, title: str,
                metrics: Sequence[str] = METRICS) -> None:
    """Grouped bars (one group per metric, one bar per strategy) with ±std error bars, one panel
    per signal; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * len(panels), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, summary) in zip(axes, panels.items()):
        strategies = list(summary)
        width = 0.8 / max(len(strategies), 1)
        x = np.arange(len(metrics))
        for i, s in enumerate(strategies):
            mu = [summary[s][m][0] for m in metrics]
            sd = [summary[s][m][1] for m in metrics]
            ax.bar(x + (i - (len(strategies) - 1) / 2) * width, mu, width, yerr=sd, capsize=3, label=s)
        ax.set_xticks(x, metrics)
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def paired_results(per_user: dict[str, dict[int, list[list[int]]]], baseline: str = BASELINE,
                   metrics: Sequence[str] = PAIRED_METRICS, n_boot: int = N_BOOT) -> dict[str, dict[str, Any]]:
    """{strategy: {metric: paired difference to ``baseline``}} from per-user hit ranks
    (``per_user[strategy][seed]``, the same test users in the same order for every run): per seed
    the per-user difference strategy − baseline, averaged over the seeds per user, with a
    bootstrap 95 % interval of the mean, the per-seed means and their spread
    (:func:`dealrec.study.paired.paired_difference`), the difference relative to the baseline's mean
    and :func:`dealrec.study.paired.verdict`'s sentence. Empty without a baseline."""
    if baseline not in per_user:
        return {}

    def values(runs: dict[int, list[list[int]]], metric: str) -> dict[int, np.ndarray]:
        name, k = metric.split("@")
        return {seed: metrics_from_ranks(ranks, int(k))[name] for seed, ranks in runs.items()}

    out: dict[str, dict[str, Any]] = {}
    for strategy, runs in per_user.items():
        if strategy == baseline or not set(runs) & set(per_user[baseline]):
            continue  # nothing to pair (a partial study: no seed in common yet)
        out[strategy] = {}
        for metric in metrics:
            r = paired_difference(values(runs, metric), values(per_user[baseline], metric), n_boot=n_boot)
            base = r["baseline_mean"]
            r["relative"] = r["mean"] / base if base else math.nan
            r["verdict"] = f"{metric}: " + verdict(r, strategy, baseline)
            out[strategy][metric] = r
    return out


def paired_table(results: dict[str, dict[str, Any]], baseline: str = BASELINE) -> str:
    """The Markdown table of :func:`paired_results` (one row per strategy and metric)."""
    lines = [f"| strategy | metric | seeds | {baseline} | difference | 95 % interval | bootstrap | given the seeds | "
             "relative | seed-to-seed std | user SE per seed | per seed | verdict |",
             "|" + "---|" * 13]
    for strategy, by_metric in results.items():
        for metric, r in by_metric.items():
            rel = "–" if math.isnan(r["relative"]) else f"{r['relative']:+.0%}"
            sd = "–" if math.isnan(r["seed_std"]) else f"{r['seed_std']:.4f}"
            boot = f"{r['low_boot']:+.4f} … {r['high_boot']:+.4f}" if "low_boot" in r else "–"
            df = f" (df {r['df']:.1f})" if "df" in r else ""
            per_seed = ", ".join(f"{x:+.4f}" for x in r["seed_means"])
            seed_se = ", ".join(f"{x:.4f}" for x in r.get("seed_se", []))
            lines.append(f"| {strategy} | {metric} | {r['seeds']} | {r['baseline_mean']:.4f} | {r['mean']:+.4f} | "
                         f"{r['low']:+.4f} … {r['high']:+.4f}{df} | {boot} | "
                         f"{r['low_users']:+.4f} … {r['high_users']:+.4f} | {rel} | {sd} | {seed_se} | {per_seed} | "
                         f"{r['verdict']} |")
    return "\n".join(lines)


def power_lines(results: dict[str, dict[str, Any]], paper: dict[str, tuple[float, ...]] | None,
                metrics: Sequence[str] = METRICS) -> list[str]:
    """Per strategy and metric, how many times this study's paired data would detect the paper's
    relative gain of DEALRec over Random with 80 % power (none without the paper's rows)."""
    if not paper or "DEALRec" not in paper or "Random" not in paper:
        return []
    column = {m: i for i, m in enumerate(metrics)}
    out = []
    for strategy, by_metric in results.items():
        for metric, r in by_metric.items():
            i = column[metric]
            gain = paper["DEALRec"][i] / paper["Random"][i] - 1
            effect = gain * r["baseline_mean"]
            out.append(f"- {strategy}, {metric}: the paper's {gain:+.0%} ({effect:+.4f} here) needs "
                       f"{power_factor(r['se'], effect):.1f}× this study's paired data for 80 % power")
    return out


def _pending_section(pending: list[tuple[str, str, int]]) -> list[str]:
    """The planned runs without a record yet (none: nothing); every table below covers the
    recorded runs only, and the paired table pairs the seeds both sides have."""
    if not pending:
        return []
    by: dict[tuple[str, str], list[int]] = {}
    for signal, label, seed in pending:
        by.setdefault((signal, label), []).append(seed)
    runs = "; ".join(f"{SIGNAL_NAMES[sig]} {label} seeds {seeds}" for (sig, label), seeds in by.items())
    return ["## Partial report", "",
            f"{len(pending)} planned run(s) have no record yet ({runs}). The tables below cover the recorded runs "
            "only; the paired table pairs the seeds that both a strategy and `random` have. Rerun the study with "
            "the same settings to add them (recorded runs are reused).", ""]


def _paired_section(title: str, results: dict[str, dict[str, Any]], n_users: int | str) -> list[str]:
    if not results:
        return [f"### {title}", "", f"No `{BASELINE}` runs: nothing to pair with.", ""]
    return [f"### {title}", "", f"{n_users} test users, each seed's runs paired on them.", "",
            paired_table(results), ""]


@dataclass(frozen=True)
class StudyFacts:
    """What the report states about the data and the pruning besides the rows."""

    n_candidates: int  # eligible users in the pool
    pool_users: int  # users in the pool (the first N)
    n_users: int  # users in the data set
    n_items: int
    prune_seconds: dict[str, float]  # seconds of each pruning stage (from the score manifests)
    n_llm_test: int = 0  # the LLM signal's fixed test users
    pending: tuple[tuple[str, str, int], ...] | list[tuple[str, str, int]] = ()  # planned runs without a record
    n_all_test: int = 0  # users with test items in the data set (0: unknown)
    seed_free: tuple[str, ...] = ()  # strategies whose recorded selection is the same for every seed


Rows = dict[str, list[dict[str, Any]]]  # {signal: per-run rows}


def shows_tiger(cfg: Any, rows: Rows) -> bool:
    """Whether the report has TIGER's parts: its runs are planned, or some are recorded."""
    return "tiger" in cfg.planned_signals or bool(rows.get("tiger"))


def _per_run_table(rows: Rows, signals: Sequence[str], metrics: Sequence[str]) -> list[str]:
    """One row per (strategy, seed) of any of ``signals``; – where a signal has no run for that seed."""
    by = {sig: {(r["strategy"], r["seed"]): r for r in rows.get(sig, [])} for sig in signals}
    keys = list(dict.fromkeys(k for sig in signals for k in by[sig]))
    order = [r["strategy"] for sig in signals for r in rows.get(sig, [])]
    keys.sort(key=lambda k: order.index(k[0]))

    def cells(r: dict[str, Any] | None) -> str:
        return " | ".join("–" if r is None else f"{r[m]:.4f}" for m in metrics)

    return ["| strategy | seed | " + " | ".join(f"{SIGNAL_NAMES[sig]} {m}" for sig in signals for m in metrics) + " |",
            "|" + "---|" * (2 + len(signals) * len(metrics)),
            *[f"| {s} | {seed} | " + " | ".join(cells(by[sig].get((s, seed))) for sig in signals) + " |"
              for s, seed in keys]]


def _scale_note(cfg: Any, n_test: int | str, n_all_test: int) -> str:
    """How the study's run differs in scale from the paper's Table 2 rows (from the settings)."""
    parts = [f"the study's LLM is {model_id(cfg.base_model)}"]
    if cfg.n != PAPER_N:
        ratio = PAPER_N / cfg.n
        parts.append(f"{ratio:.0f}× more samples" if ratio >= 1 else f"{1 / ratio:.0f}× fewer samples")
    if isinstance(n_test, int) and n_test < n_all_test:
        parts.append(f"all {n_all_test} test users instead of {n_test}")
    return ", ".join(parts)


def _header(cfg: Any, facts: StudyFacts, tiger: bool) -> list[str]:
    seeds = cfg.signal_seeds
    over = (f"seeds {list(cfg.seeds)} (LLM), {list(seeds['sasrec'])} (SASRec) and {list(seeds['tiger'])} (TIGER)"
            if tiger else f"seeds {list(cfg.seeds)} (LLM) and {list(seeds['sasrec'])} (SASRec)")
    return [
        f"# Reproduction study: {cfg.data_name}, n = {cfg.n}" + (f" (preset `{cfg.preset}`)" if cfg.preset else ""),
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'this machine'} "
        f"({cpu_name()}, {platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only'}); "
        f"LLM: {model_id(cfg.base_model)}. Candidates: {facts.n_candidates} eligible users among the first "
        f"{facts.pool_users} of {facts.n_users}; each run selects n = {cfg.n}. Mean ± sample std over "
        f"{over}; the seed drives the selection and the training.",
        "",
    ]


def _seed_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """{strategy: its number of runs (seeds)}."""
    out: dict[str, int] = {}
    for r in rows:
        out[r["strategy"]] = out.get(r["strategy"], 0) + 1
    return out


def _signal_sections(cfg: Any, facts: StudyFacts, rows: Rows) -> list[str]:
    """The mean ± std tables of the LLM and SASRec signals, with the paper's rows beside the LLM's."""
    llm_rows, sas_rows = rows["llm"], rows["sasrec"]
    metrics = report_metrics(cfg.data_name)
    llm_sum, sas_sum = summarize(llm_rows, metrics), summarize(sas_rows, metrics)
    seeds = {s: sum(1 for r in llm_rows if r["strategy"] == s) for s in llm_sum}
    sas_seeds = {s: sum(1 for r in sas_rows if r["strategy"] == s) for s in sas_sum}
    n_test = llm_rows[0]["n_users"] if llm_rows else facts.n_llm_test
    ranked = llm_rows[0]["n_items_ranked"] if llm_rows else (cfg.max_items or facts.n_items)
    n_sas_test = sas_rows[0]["n_test_users"] if sas_rows else "all"
    exact = {s: np.mean(v) for s in cfg.strategies
             if (v := [r["exact_title_share"] for r in llm_rows if r["strategy"] == s])}
    return [
        "## Few-shot BIGRec (LLM signal)",
        "",
        f"{n_test} fixed test users (the same for every run), generations grounded among {ranked} items "
        f"(L2, base-model last-token states). The paper's rows are {PAPER_NOTE}; "
        f"{_scale_note(cfg, n_test, facts.n_all_test or n_test)}: compare the ordering of the rows, not the values.",
        "",
        markdown_table(llm_sum, seeds, PAPER_TABLE2.get(cfg.data_name), metrics) if llm_rows
        else "No LLM run recorded yet.",
        "",
        "Share of generations that are exactly a catalogue title: "
        + (", ".join(f"{s} {v:.2f}" for s, v in exact.items()) or "–") + ".",
        "",
        "## SASRec trained on the selection only (second signal)",
        "",
        f"A fresh SASRec (the surrogate's recipe, {cfg.sasrec_epochs} epochs at most, early stopping on "
        f"validation) trained on the n selected users' sequences and evaluated on the full test set "
        f"({n_sas_test} users, all {facts.n_items} items). `{REFERENCE}` trains on "
        f"every candidate ({facts.n_candidates} users): the full-data reference.",
        "",
        markdown_table(sas_sum, sas_seeds, metrics=metrics) if sas_rows else "No SASRec run recorded yet.",
        "",
    ]


def _tiger_section(cfg: Any, facts: StudyFacts, tiger_rows: list[dict[str, Any]]) -> list[str]:
    """The mean ± std table of the TIGER signal, with the paper's TIGER rows beside it."""
    n_test = tiger_rows[0]["n_users"] if tiger_rows else (facts.n_all_test or "all")
    t = cfg.tiger
    metrics = report_metrics(cfg.data_name)
    table = (markdown_table(summarize(tiger_rows, metrics), _seed_counts(tiger_rows), PAPER_TIGER.get(cfg.data_name),
                            metrics) if tiger_rows else "No TIGER run recorded yet.")
    return [
        "## TIGER trained on the selection (third signal)",
        "",
        f"TIGER: semantic IDs by residual k-means ({t.quantizer.levels} levels of {t.quantizer.codebook_size} "
        f"codes) over the base LLM's title embeddings, a T5 ({t.model.num_layers}+{t.model.num_decoder_layers} "
        f"layers, d_model {t.model.d_model}) trained from scratch on the n selected users' sequences, every test "
        f"user ({n_test} users, all {facts.n_items} items) ranked by constrained beam search ({t.num_beams} beams). "
        f"`{REFERENCE}` trains on every candidate ({facts.n_candidates} users): the full-data reference. The "
        f"paper's rows are TIGER at n = {PAPER_N} (paper Table 2): compare the ordering of the rows, not the values.",
        "",
        table,
        "",
    ]


def _power_section(name: str, power: list[str]) -> list[str]:
    if not power:
        return []
    return [f"Power ({name}): how much paired data (seeds × test users, in multiples of this study's) a "
            "difference of the paper's relative size needs to be detected at the 5 % level with 80 % power:", "",
            *power, ""]


def _tiger_paired(paired: dict[str, Any], n_test: int | str, data_name: str) -> list[str]:
    """TIGER's paired table and the power to detect the paper's TIGER gain (strategies only)."""
    results = paired.get("tiger", {})
    power = power_lines({s: r for s, r in results.items() if s != REFERENCE}, PAPER_TIGER.get(data_name),
                        report_metrics(data_name))
    return [*_paired_section("TIGER on the selection", results, n_test), *_power_section("TIGER signal", power)]


def _paired_sections(paired: dict[str, Any], n_test: int | str, n_sas_test: int | str,
                     paper: dict[str, tuple[float, ...]] | None, seed_free: Sequence[str],
                     metrics: Sequence[str] = METRICS) -> list[str]:
    power = power_lines(paired.get("llm", {}), paper, metrics)
    same = (f"The selection of {', '.join(f'`{s}`' for s in seed_free)} is the same for every seed that uses "
            "the same scores (it draws nothing at random): those seeds differ in the training only." if seed_free else "")
    return [
        f"## Paired differences to {BASELINE}",
        "",
        f"Per seed, each test user's {' and '.join(PAIRED_METRICS)} under a strategy minus under `{BASELINE}` "
        "with the same seed (same test users, so the test-user noise cancels); the differences are averaged "
        "over the seeds per user. `95 % interval` (the verdict reads it): with several seeds a variance-component "
        "t interval — the differences as seed effect + user effect + residual, each variance estimated, "
        "Satterthwaite's degrees of freedom (`df`) — which tends to the t interval over the seed means where the "
        "seeds differ and to the users' interval where they do not; with one seed the users' bootstrap. "
        f"`bootstrap`: a percentile bootstrap ({N_BOOT:,} resamples) drawing both seeds and users, shown beside "
        "it: it counts the seed × user noise more than once where the seeds barely matter (too wide) and is "
        "narrower than the t interval where they do. `given the seeds`: the users-only bootstrap of the per-user "
        f"seed averages. `relative`: the difference over `{BASELINE}`'s mean. `seed-to-seed std`: the spread of "
        "the per-seed mean differences (`per seed`); `user SE per seed`: each seed's standard error from its "
        "users alone — where it is as large as the seed-to-seed std, the spread between seeds is user-sampling "
        "noise, not an effect of the seed.",
        "",
        *([same, ""] if same else []),
        *_paired_section("Few-shot BIGRec (LLM signal)", paired.get("llm", {}), n_test),
        *_power_section("LLM signal", power),
        *_paired_section("SASRec on the selection", paired.get("sasrec", {}), n_sas_test),
    ]


def stage_seconds(cfg: Any, rows: Rows, prune_t: dict[str, float],
                  tiger: bool = False) -> tuple[list[str], float]:
    """The table rows of mean seconds per stage and strategy (with ``tiger``, TIGER's train +
    decode seconds as the last column), and the sum of all stage times."""
    llm_rows, sas_rows, tiger_rows = rows["llm"], rows["sasrec"], rows.get("tiger", [])
    stage_rows = []
    for s in cfg.strategies:
        rs = [r for r in llm_rows if r["strategy"] == s]
        sr = [r for r in sas_rows if r["strategy"] == s]
        cells = [float(np.mean([r.get(k, math.nan) for r in rs])) if rs else math.nan
                 for k in ("finetune", "generate", "ground")]
        cells.append(float(np.mean([r["seconds"] for r in sr])) if sr else math.nan)
        if tiger:
            tr = [r["train_seconds"] + r["decode_seconds"] for r in tiger_rows if r["strategy"] == s]
            cells.append(float(np.mean(tr)) if tr else math.nan)
        stage_rows.append(f"| {s} | " + " | ".join("–" if math.isnan(c) else f"{c:.0f}" for c in cells) + " |")
    total = sum(prune_t.values()) + sum(r.get(k, 0.0) for r in llm_rows for k in ("finetune", "generate", "ground"))
    total += sum(r["seconds"] for r in sas_rows)
    total += sum(r["train_seconds"] + r["decode_seconds"] for r in tiger_rows)
    return stage_rows, total


def machines_line(rows: Rows) -> str:
    """Which machines the run times come from: per machine named in the records, its runs per
    signal (records made without a ``machine`` count as "machine not recorded")."""
    runs: dict[str, dict[str, int]] = {}
    for signal, signal_rows in rows.items():
        for r in signal_rows:
            per = runs.setdefault(r.get("machine") or "machine not recorded", {})
            per[signal] = per.get(signal, 0) + 1
    return "Run times measured on: " + "; ".join(
        f"{m} ({', '.join(f'{n} {signal}' for signal, n in per.items())})" for m, per in runs.items()) + "."


def _timing_section(stage_rows: list[str], total: float, prune_t: dict[str, float],
                    wall_seconds: float | None, tiger: bool, machines: str) -> list[str]:
    head = "| strategy | fine-tune | generate | ground | SASRec on selection |"
    return [
        "## Wall-clock time per stage (seconds)",
        "",
        "Pruning (once, cached): " + (", ".join(f"{k} {v:.0f}" for k, v in prune_t.items()) or "–")
        + f"; sum of all stage times {total:.0f}"
        + (f"; wall clock of this call {wall_seconds:.0f}" if wall_seconds else "") + ".",
        "",
        head + " TIGER on selection (train + decode) |" if tiger else head,
        "|---|---|---|---|---|" + ("---|" if tiger else ""),
        *stage_rows,
        "",
        "Means over seeds; a stage reused from disk keeps the time of the run that made it. " + machines,
        "",
    ]


def render_report(cfg: Any, rows: Rows, facts: StudyFacts, paired: dict[str, Any],
                  wall_seconds: float | None = None) -> str:
    """The Markdown of ``REPORT.md``: header, every signal's table, the paired differences, the
    stage times, every run, the configuration and the chart. TIGER's parts appear where
    :func:`shows_tiger`."""
    llm_rows, sas_rows, tiger_rows = rows["llm"], rows["sasrec"], rows.get("tiger", [])
    tiger = shows_tiger(cfg, rows)
    n_test = llm_rows[0]["n_users"] if llm_rows else facts.n_llm_test
    n_sas_test = sas_rows[0]["n_test_users"] if sas_rows else "all"
    n_tiger_test = tiger_rows[0]["n_users"] if tiger_rows else (facts.n_all_test or "all")
    prune_t = dict(facts.prune_seconds)
    stage_rows, total = stage_seconds(cfg, rows, prune_t, tiger)
    lines = [
        *_header(cfg, facts, tiger),
        *_pending_section(list(facts.pending)),
        *_signal_sections(cfg, facts, rows),
        *(_tiger_section(cfg, facts, tiger_rows) if tiger else []),
        *_paired_sections(paired, n_test, n_sas_test, PAPER_TABLE2.get(cfg.data_name), facts.seed_free,
                          report_metrics(cfg.data_name)),
        *(_tiger_paired(paired, n_tiger_test, cfg.data_name) if tiger else []),
        *_timing_section(stage_rows, total, prune_t, wall_seconds, tiger, machines_line(rows)),
        "## Per run",
        "",
        *_per_run_table(rows, ("llm", "sasrec", "tiger") if tiger else ("llm", "sasrec"), report_metrics(cfg.data_name)),
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(cfg.summary(), indent=1, default=str),
        "```",
        "",
        "![results](report.png)",
        "",
    ]
    return "\n".join(lines)


def write_report(out: Path, cfg: Any, rows: Rows, facts: StudyFacts, wall_seconds: float | None = None,
                 per_user: dict[str, dict[str, dict[int, list[list[int]]]]] | None = None) -> Path:
    """``REPORT.md`` (:func:`render_report`), ``results.json`` and ``report.png`` under ``out`` from
    the per-run rows of every signal (``rows[signal]``); ``cfg``: the
    :class:`dealrec.study.config.StudyConfig` (its flat names, ``summary()`` and planned signals);
    ``per_user``: {signal: {strategy: {seed: hit ranks}}} for the paired table (:func:`paired_results`)."""
    paired = {signal: paired_results(runs) for signal, runs in (per_user or {}).items()}
    path = out / "REPORT.md"
    write_text(path, render_report(cfg, rows, facts, paired, wall_seconds))
    prune_t = dict(facts.prune_seconds)
    write_json(out / "results.json", {"config": cfg.summary(), "llm": rows["llm"], "sasrec": rows["sasrec"],
                                      "tiger": rows.get("tiger", []),
                                      "pending": [list(r) for r in facts.pending],
                                      "paired": {"baseline": BASELINE, "metrics": list(PAIRED_METRICS),
                                                 "n_boot": N_BOOT, **paired},
                                      "prune_seconds": prune_t,
                                      "stage_seconds_total": stage_seconds(cfg, rows, prune_t)[1],
                                      "wall_seconds": wall_seconds})
    try:
        metrics = report_metrics(cfg.data_name)
        panels = {"few-shot BIGRec (LLM)": summarize(rows["llm"], metrics),
                  "SASRec on the selection": summarize(rows["sasrec"], metrics),
                  "TIGER on the selection": summarize(rows.get("tiger", []), metrics)}
        seeds = cfg.signal_seeds
        plot_report({k: v for k, v in panels.items() if v}, out / "report.png", f"{cfg.data_name}, n = {cfg.n}, "
                    f"seeds: {len(cfg.seeds)} LLM, {len(seeds['sasrec'])} SASRec"
                    + (f", {len(seeds['tiger'])} TIGER" if shows_tiger(cfg, rows) else ""), metrics)
    except Exception as e:  # noqa: BLE001 - the chart must never lose the report
        LOG.warning("could not draw report.png: %s", e)
    LOG.info("report: %s", path)
    return path
