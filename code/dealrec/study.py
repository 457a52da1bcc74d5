"""Reproduction study: does DEALRec's selection beat random and the baselines at equal cost?

One data set, one sample count n, strategies × seeds (the paper's Table 2 setting, §5.2):

1. prune once: surrogate, influence (Eq. 9–11), effort (Eq. 12) and the EL2N/GraNd baselines
   are computed once and cached under ``<out>/scores``; every strategy then selects from them
   (:func:`dealrec.select.run_strategy`) with the run's seed;
2. per strategy and seed, the LLM signal: few-shot LoRA fine-tuning of BIGRec on the selection,
   generation for one fixed set of test users (the same users for every run), grounding over the
   catalogue, Recall/NDCG@K;
3. per strategy and seed, a cheap second signal: a fresh SASRec trained only on the selected
   users' sequences, evaluated on the full test set (plus a reference row: SASRec on every
   candidate user);
4. ``<out>/REPORT.md`` (mean ± sample std over seeds, the paper's Table 2 rows beside them,
   wall-clock time per stage, the configuration) and ``<out>/report.png`` (bars with error bars).

Every output is cached with a manifest, so an interrupted study resumes where it stopped, and
several processes can share the work when given disjoint ``strategies`` (``only="runs"``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import faults
from .data import load_dataset
from .fewshot import build_examples, write_fewshot
from .finetune import FinetuneConfig, is_done
from .finetune import train as finetune
from .generate import InferenceConfig, run_inference
from .ground import evaluate_results, metrics_path
from .io import (
    LOG,
    Timer,
    atomic_path,
    cache_key,
    cached,
    check_writable,
    file_hash,
    read_json,
    save_tensor,
    write_json,
    write_manifest,
    write_text,
)
from .llm import model_id
from .locking import output_lock
from .prune import (
    NEEDS,
    STABLE,
    PruneConfig,
    _effort_file,
    _influence_file,
    _surrogate_file,
    compute_baselines,
    compute_effort,
    compute_influence,
    eligible_mask,
    load_or_train_surrogate,
)
from .select import STRATEGIES, ScoreSet, run_strategy
from .surrogate import build_surrogate
from .surrogate.trainer import SurrogateConfig, train_surrogate

REPORT_KS = (10, 20)
METRICS = tuple(f"{m}@{k}" for m in ("Recall", "NDCG") for k in REPORT_KS)

# Paper Table 2 (BIGRec backend, LLaMA-7B, n = 1024 few-shot samples, 4 GPUs):
# Recall@10, Recall@20, NDCG@10, NDCG@20.
PAPER_TABLE2: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "games": {
        "DEALRec": (0.0181, 0.0276, 0.0115, 0.0142),
        "Random": (0.0163, 0.0241, 0.0100, 0.0122),
        "Full data": (0.0169, 0.0233, 0.0102, 0.0120),
    },
}
PAPER_NOTE = "BIGRec with LLaMA-7B, n = 1024, all test users, 4 GPUs (paper Table 2)"

DEFAULT_STRATEGIES = ("dealrec", "random", "influence", "effort", "greedy", "el2n", "grand", "ccs")
REFERENCE = "all candidates"  # SASRec trained on every candidate user (the full-data row)

PRESETS: dict[str, dict[str, Any]] = {
    # ~90 min on 2 CPU cores with the embedded SmolLM2-135M: pruning among the first 1,000 users,
    # n = 128, 300 fixed test users, greedy 24-token generations, two LoRA epochs (32 steps).
    # The loss is on the response only, with a high learning rate: with the paper's whole-prompt
    # loss, 16 steps at 3e-4 left the model echoing its input (296 of 300 generations identical
    # across two different selections), so every strategy would have scored the same.
    "cpu": dict(
        n=128, strategies=("dealrec", "random", "influence", "greedy"), seeds=(0, 1), pool_users=1000,
        test_users=300, cutoff_len=256, batch_size=8, micro_batch_size=4, num_epochs=2.0, learning_rate=2e-3,
        warmup_steps=2, train_on_inputs=False, val_set_size=8, eval_steps=8, num_beams=1, max_new_tokens=24,
        gen_batch_size=8,
    ),
    # The paper's scale: all users are candidates, n = 1024, every test user, 4 beams, 3 seeds.
    "gpu": dict(
        n=1024, strategies=DEFAULT_STRATEGIES, seeds=(0, 1, 2), pool_users=None, test_users=None,
        cutoff_len=512, batch_size=128, micro_batch_size=32, num_epochs=5.0, learning_rate=3e-4,
        warmup_steps=5, train_on_inputs=True, val_set_size=None, eval_steps=8, num_beams=4, max_new_tokens=64, gen_batch_size=64,
    ),
}


@dataclass
class StudyConfig:
    data_dir: str = "data"
    data_name: str = "games"
    preset: str | None = None
    out_dir: str | None = None  # default results/<data_name>_<n>
    n: int = 128
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    pool_users: int | None = None  # candidates = the first N users (None: all)
    test_users: int | None = None  # a fixed random sample of N test users (None: all)
    test_seed: int = 0
    base_model: str | None = None
    device: str = "cpu"
    # selection (the paper's Games values)
    lamda: float = 0.3
    k: int = 50
    hard_prune: float = 0.1
    # pruning scores (computed once, seed prune_seed)
    prune_seed: int = 42
    surrogate_epochs: int = 200
    recursion_depth: int = 5000
    cutoff_len: int = 256
    # few-shot LoRA fine-tuning
    batch_size: int = 8
    micro_batch_size: int = 4
    num_epochs: float = 1.0
    learning_rate: float = 3e-4
    warmup_steps: int = 2
    train_on_inputs: bool = True  # the paper's loss on the whole prompt; False: the response only
    max_steps: int = -1
    val_set_size: int | None = 8
    eval_steps: int = 8
    # generation and grounding
    num_beams: int = 1
    max_new_tokens: int = 24
    gen_batch_size: int = 8
    max_items: int | None = None  # rank among the first N items + targets (None: the whole catalogue)
    # second signal: SASRec trained on the selection only
    sasrec_epochs: int = 100
    sasrec_eval_every: int = 10
    sasrec_patience: int = 2

    @classmethod
    def from_preset(cls, preset: str | None, **overrides: Any) -> StudyConfig:
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown --preset {preset!r}; known: {', '.join(PRESETS)}")
        values = {**(PRESETS[preset] if preset else {}), **{k: v for k, v in overrides.items() if v is not None}}
        return cls(preset=preset, **values)

    @property
    def out(self) -> Path:
        return Path(self.out_dir or Path("results") / f"{self.data_name}_{self.n}")

    def validate(self) -> None:
        """Fail before any expensive work, naming the argument."""
        if self.n <= 0:
            raise ValueError(f"--n must be > 0, got {self.n}")
        if not self.strategies:
            raise ValueError("--strategies: give at least one strategy")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"--strategies: unknown {unknown}; registered: {', '.join(sorted(STRATEGIES))}")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"--strategies lists a strategy twice: {list(self.strategies)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct and non-empty, got {list(self.seeds)}")
        for name in ("pool_users", "test_users", "max_items"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"--{name} must be > 0 (or omitted), got {v}")
        if self.micro_batch_size <= 0 or self.batch_size < self.micro_batch_size:
            raise ValueError(f"--batch_size {self.batch_size} must be ≥ --micro_batch_size {self.micro_batch_size} > 0")
        for name in ("num_beams", "max_new_tokens", "gen_batch_size", "sasrec_epochs", "surrogate_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("num_epochs", "learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"--max_steps must be -1 (off) or ≥ 1, got {self.max_steps}")
        self.prune_config().validate()

    def prune_config(self, strategy: str = "dealrec") -> PruneConfig:
        cfg = PruneConfig(
            data_dir=self.data_dir, data_name=self.data_name, score_dir=str(self.out / "scores"),
            selected_dir=str(self.out / "selected"), strategy=strategy, lamda=self.lamda, k=self.k,
            hard_prune=self.hard_prune, n_fewshot=self.n, seed=self.prune_seed, max_users=self.pool_users,
            device=self.device, epochs=self.surrogate_epochs, recursion_depth=self.recursion_depth,
            base_model=self.base_model, cutoff_len=self.cutoff_len,
        )
        return dataclasses.replace(cfg, **STABLE) if strategy == "dealrec-stable" else cfg

    def finetune_config(self, train_file: Path, val_file: Path, output_dir: Path, seed: int) -> FinetuneConfig:
        return FinetuneConfig(
            train_file=str(train_file), val_file=str(val_file), output_dir=str(output_dir),
            base_model=self.base_model, batch_size=self.batch_size, micro_batch_size=self.micro_batch_size,
            num_epochs=self.num_epochs, learning_rate=self.learning_rate, warmup_steps=self.warmup_steps,
            cutoff_len=self.cutoff_len, val_set_size=self.val_set_size, eval_steps=self.eval_steps,
            train_on_inputs=self.train_on_inputs, seed=seed, max_steps=self.max_steps, logging_steps=1,
        )

    def sasrec_config(self, seed: int) -> SurrogateConfig:
        return SurrogateConfig(
            epochs=self.sasrec_epochs, eval_every=self.sasrec_eval_every, patience=self.sasrec_patience, seed=seed
        )


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------


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


def plot_report(panels: dict[str, dict[str, dict[str, tuple[float, float]]]], path: str | Path, title: str) -> None:
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
        x = np.arange(len(METRICS))
        for i, s in enumerate(strategies):
            mu = [summary[s][m][0] for m in METRICS]
            sd = [summary[s][m][1] for m in METRICS]
            ax.bar(x + (i - (len(strategies) - 1) / 2) * width, mu, width, yerr=sd, capsize=3, label=s)
        ax.set_xticks(x, METRICS)
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


# ------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------


def _at(metrics: dict[str, Any], ks: Sequence[int]) -> dict[str, float]:
    """{"Recall@10": …, …} from a metrics dict with per-k lists aligned to ``ks``."""
    out = {}
    for m in ("Recall", "NDCG"):
        for k in REPORT_KS:
            out[f"{m}@{k}"] = float(metrics[m][list(ks).index(k)])
    return out


class Study:
    """The study of one :class:`StudyConfig`; every method reuses what is on disk."""

    def __init__(self, cfg: StudyConfig):
        cfg.validate()
        self.cfg = cfg
        self.out = cfg.out
        self.data = load_dataset(cfg.data_dir, cfg.data_name)
        self.pool = self.data.subset_users(cfg.pool_users)
        self.eligible = eligible_mask(self.pool)
        self.candidates = [int(u) for u in torch.nonzero(self.eligible).flatten()]
        if cfg.n > len(self.candidates):
            raise ValueError(
                f"--n {cfg.n} exceeds the {len(self.candidates)} eligible candidates (users with ≥ 3 train items among "
                f"the first {self.pool.n_users}); lower --n or raise --pool_users"
            )
        self._scores: dict[str, ScoreSet] = {}
        self._tokenizer: Any = None
        self._base: Any = None

    # -- shared pieces ------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from .llm import load_tokenizer

            self._tokenizer = load_tokenizer(self.cfg.base_model)
        return self._tokenizer

    @property
    def base(self) -> Any:
        """The base LLM without adapter (grounding embeds with it), loaded once."""
        if self._base is None:
            from .llm import load_base_model

            self._base = load_base_model(self.cfg.base_model, self.cfg.device)
        return self._base

    def test_file(self) -> Path:
        """One test file for every run: a fixed random sample of test users (user order)."""
        cfg = self.cfg
        path = self.out / "test.json"
        users = self.data.test_users
        if cfg.test_users is not None and cfg.test_users < len(users):
            users = sorted(random.Random(cfg.test_seed).sample(users, cfg.test_users))
        key = {"data_name": cfg.data_name, "train": file_hash(self.data.root / "sequential_train.txt"),
               "users": cache_key({"u": users}), "cutoff_len": cfg.cutoff_len, "model": model_id(cfg.base_model)}
        if not cached(path, key):
            write_json(path, build_examples(self.data, users, "test", self.tokenizer, cfg.cutoff_len))
            write_manifest(path, key, data_name=cfg.data_name, n_users=len(users))
        return path

    def scores(self, strategy: str) -> ScoreSet:
        """The scores ``strategy`` needs (computed once, cached in ``<out>/scores``)."""
        pcfg = self.cfg.prune_config(strategy)
        needs = set(NEEDS.get(strategy, ("influence", "effort", "baselines")))
        tag = f"{pcfg.negatives}-{pcfg.effort_target}-{'-'.join(sorted(needs))}"
        if tag not in self._scores:
            # shared by parallel study processes (--only prune / runs): one computes, the others wait and reuse
            with output_lock(pcfg.scores_path, flag="--out_dir", wait=True):
                model = load_or_train_surrogate(pcfg, self.pool) if needs & {"influence", "baselines"} else None
                s: dict[str, torch.Tensor] = {}
                if "influence" in needs:
                    s["influence"] = compute_influence(pcfg, self.pool, model)
                if "effort" in needs:
                    s["effort"] = compute_effort(pcfg, self.pool)
                if "baselines" in needs:
                    s.update(compute_baselines(pcfg, self.pool, model))
            self._scores[tag] = ScoreSet(**s, eligible=self.eligible)
        return self._scores[tag]

    def prune(self) -> None:
        for s in self.cfg.strategies:
            self.scores(s)

    def embed(self) -> None:
        """The item-title embeddings grounding needs (cached per model and catalogue), ahead of the runs."""
        from .ground import item_embeddings

        items = None
        if self.cfg.max_items is not None and self.cfg.max_items < self.data.n_items:
            targets = {i for r in read_json(self.test_file()) for i in r["target_ids"]}
            items = sorted(set(range(self.cfg.max_items)) | targets)
        item_embeddings(self.cfg.base_model, self.data, self.base, self.tokenizer, items, device=self.cfg.device)

    def prune_timings(self) -> dict[str, float]:
        """Seconds of each pruning stage, read from the score manifests."""
        pcfg = self.cfg.prune_config()
        files = {"surrogate": _surrogate_file(pcfg), "influence": _influence_file(pcfg),
                 "effort": _effort_file(pcfg)}
        out = {}
        for name, f in files.items():
            m = f.with_name(f.name + ".json")
            if m.is_file():
                sec = read_json(m).get("seconds")
                if sec is not None:
                    out[name] = round(float(sec), 1)
        return out

    # -- one run ------------------------------------------------------------------------------

    def run_dir(self, strategy: str, seed: int) -> Path:
        return self.out / "runs" / f"{strategy}_s{seed}"

    def selection(self, strategy: str, seed: int) -> list[int]:
        cfg = self.cfg
        with Timer() as t:
            res = run_strategy(strategy, self.scores(strategy), cfg.n, seed=seed, lamda=cfg.lamda, k=cfg.k,
                               hard_prune=cfg.hard_prune)
        users = [int(i) for i in res.indices]
        path = self.run_dir(strategy, seed) / "selection.pt"
        key = {"strategy": strategy, "seed": seed, "n": cfg.n, "users": cache_key({"u": users})}
        if not cached(path, key):
            save_tensor(path, users)
            write_manifest(path, key, data_name=cfg.data_name, selection=res.to_dict(), seconds=t.seconds,
                           pool_users=cfg.pool_users, indices=users)
        if res.shortfall:
            LOG.warning("%s seed %d: selection is %d short of n=%d", strategy, seed, res.shortfall, cfg.n)
        return users

    def _timings(self, run: Path, **new: float) -> dict[str, float]:
        path = run / "timings.json"
        t = read_json(path) if path.is_file() else {}
        if new:
            t.update({k: round(v, 1) for k, v in new.items()})
            write_json(path, t)
        return t

    def llm_run(self, strategy: str, seed: int, users: list[int]) -> dict[str, Any]:
        """Few-shot fine-tune, generate, ground and score one run (BIGRec, paper §5.1)."""
        with output_lock(self.run_dir(strategy, seed), flag="--out_dir", wait=True):
            return self._llm_run(strategy, seed, users)

    def _llm_run(self, strategy: str, seed: int, users: list[int]) -> dict[str, Any]:
        cfg = self.cfg
        run = self.run_dir(strategy, seed)
        paths = write_fewshot(self.data, users, run / "fewshot", self.tokenizer, cfg.cutoff_len, n_label=cfg.n,
                              base_model=cfg.base_model, splits=("train", "valid"), progress=False)
        ft = cfg.finetune_config(paths["train"], paths["valid"], run / "adapter", seed)
        if not is_done(ft):
            with Timer() as t:
                result = finetune(ft)
            self._timings(run, finetune=t.seconds)
            del result
        icfg = InferenceConfig(
            test_file=str(self.test_file()), result_file=str(run / "result.json"), base_model=cfg.base_model,
            lora_weights=str(run / "adapter"), num_beams=cfg.num_beams, max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.gen_batch_size, cutoff_len=cfg.cutoff_len,
        )
        if not cached(icfg.result_file, icfg.key()):
            with Timer() as t:
                run_inference(icfg)
            self._timings(run, generate=t.seconds)
        mfile = metrics_path(icfg.result_file)
        key = {"result": file_hash(icfg.result_file), "max_items": cfg.max_items, "model": model_id(cfg.base_model)}
        if cached(mfile, key):
            report = read_json(mfile)
        else:
            with Timer() as t:
                report = evaluate_results(icfg.result_file, self.data, cfg.base_model, device=cfg.device,
                                          max_items=cfg.max_items, model=self.base, tokenizer=self.tokenizer)
            write_manifest(mfile, key)
            self._timings(run, ground=t.seconds)
        return {**_at(report, report["ks"]), "exact_title_share": report["exact_title_share"],
                "n_users": report["n_users"], "n_items_ranked": report["n_items_ranked"]}

    def sasrec_run(self, label: str, seed: int, users: list[int]) -> dict[str, Any]:
        """Second signal: a fresh SASRec trained on ``users``' sequences only, full test set."""
        cfg = self.cfg
        path = self.out / "sasrec" / f"{label.replace(' ', '-')}_s{seed}.json"
        scfg = cfg.sasrec_config(seed)
        key = {"data_name": cfg.data_name, "train": file_hash(self.data.root / "sequential_train.txt"),
               "users": cache_key({"u": sorted(users)}), "config": dataclasses.asdict(scfg)}
        if cached(path, key):
            return read_json(path)
        with output_lock(path, flag="--out_dir", wait=True):  # the reference row is run by every --only runs process
            if cached(path, key):
                return read_json(path)
            return self._sasrec_train(path, key, scfg, users)

    def _sasrec_train(self, path: Path, key: dict, scfg: SurrogateConfig, users: list[int]) -> dict[str, Any]:
        cfg = self.cfg
        model = build_surrogate("SASRec", self.data.n_items, scfg)
        with Timer() as t:
            res = train_surrogate(model, self.data, scfg, cfg.device, train_users=sorted(users))
        out = {**_at(res.test, scfg.ks), "best_epoch": res.best_epoch, "n_test_users": res.test["n_users"],
               "seconds": round(t.seconds, 1)}
        write_json(path, out)
        write_manifest(path, key)
        return out

    def runs(self) -> None:
        for strategy in self.cfg.strategies:
            for seed in self.cfg.seeds:
                LOG.info("== run %s seed %d", strategy, seed)
                users = self.selection(strategy, seed)
                self.sasrec_run(strategy, seed, users)
                self.llm_run(strategy, seed, users)
                faults.step("study")
        for seed in self.cfg.seeds:
            self.sasrec_run(REFERENCE, seed, self.candidates)

    # -- report -------------------------------------------------------------------------------

    def collect(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Per-run rows of both signals (runs missing on disk raise)."""
        llm_rows, sas_rows = [], []
        for strategy in self.cfg.strategies:
            for seed in self.cfg.seeds:
                users = self.selection(strategy, seed)
                run = self.run_dir(strategy, seed)
                if not metrics_path(run / "result.json").is_file():
                    raise FileNotFoundError(f"run {run} is not finished; run the study with --only runs first")
                llm = self.llm_run(strategy, seed, users)
                llm_rows.append({"strategy": strategy, "seed": seed, **llm, **self._timings(run)})
                sas_rows.append({"strategy": strategy, "seed": seed, **self.sasrec_run(strategy, seed, users)})
        for seed in self.cfg.seeds:
            sas_rows.append({"strategy": REFERENCE, "seed": seed, **self.sasrec_run(REFERENCE, seed, self.candidates)})
        return llm_rows, sas_rows

    def report(self, wall_seconds: float | None = None) -> Path:
        cfg = self.cfg
        llm_rows, sas_rows = self.collect()
        llm_sum, sas_sum = summarize(llm_rows), summarize(sas_rows)
        seeds = {s: sum(1 for r in llm_rows if r["strategy"] == s) for s in llm_sum}
        seeds[REFERENCE] = len(cfg.seeds)
        paper = PAPER_TABLE2.get(cfg.data_name)
        n_candidates = len(self.candidates)
        n_test = llm_rows[0]["n_users"]
        ranked = llm_rows[0]["n_items_ranked"]
        prune_t = self.prune_timings()
        stage_rows = []
        for s in cfg.strategies:
            rs = [r for r in llm_rows if r["strategy"] == s]
            sr = [r for r in sas_rows if r["strategy"] == s]
            cells = [np.mean([r.get(k, math.nan) for r in rs]) for k in ("finetune", "generate", "ground")]
            cells.append(np.mean([r["seconds"] for r in sr]))
            stage_rows.append(f"| {s} | " + " | ".join("–" if math.isnan(c) else f"{c:.0f}" for c in cells) + " |")
        total = sum(prune_t.values()) + sum(r.get(k, 0.0) for r in llm_rows for k in ("finetune", "generate", "ground"))
        total += sum(r["seconds"] for r in sas_rows)
        exact = {s: np.mean([r["exact_title_share"] for r in llm_rows if r["strategy"] == s]) for s in cfg.strategies}
        lines = [
            f"# Reproduction study: {cfg.data_name}, n = {cfg.n}" + (f" (preset `{cfg.preset}`)" if cfg.preset else ""),
            "",
            f"Written {time.strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'this machine'} "
            f"({platform.machine()}, {torch.get_num_threads()} torch thread(s), "
            f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only'}); "
            f"LLM: {model_id(cfg.base_model)}. Candidates: {n_candidates} eligible users among the first "
            f"{self.pool.n_users} of {self.data.n_users}; each run selects n = {cfg.n}. Mean ± sample std over "
            f"seeds {list(cfg.seeds)} (the seed drives both the selection and the fine-tuning).",
            "",
            "## Few-shot BIGRec (LLM signal)",
            "",
            f"{n_test} fixed test users (the same for every run), generations grounded among {ranked} items "
            f"(L2, base-model last-token states). The paper's rows are {PAPER_NOTE}: a 50× larger model, "
            "8× more samples and all test users, so compare the ordering of the rows, not the values.",
            "",
            markdown_table(llm_sum, seeds, paper),
            "",
            "Share of generations that are exactly a catalogue title: "
            + ", ".join(f"{s} {v:.2f}" for s, v in exact.items()) + ".",
            "",
            "## SASRec trained on the selection only (second signal)",
            "",
            f"A fresh SASRec (the surrogate's recipe, {cfg.sasrec_epochs} epochs at most, early stopping on "
            f"validation) trained on the n selected users' sequences and evaluated on the full test set "
            f"({sas_rows[0]['n_test_users']} users, all {self.data.n_items} items). `{REFERENCE}` trains on "
            f"every candidate ({n_candidates} users): the full-data reference.",
            "",
            markdown_table(sas_sum, seeds),
            "",
            "## Wall-clock time per stage (seconds)",
            "",
            "Pruning (once, cached): " + (", ".join(f"{k} {v:.0f}" for k, v in prune_t.items()) or "–")
            + f"; sum of all stage times {total:.0f}"
            + (f"; wall clock of this call {wall_seconds:.0f}" if wall_seconds else "") + ".",
            "",
            "| strategy | fine-tune | generate | ground | SASRec on selection |",
            "|---|---|---|---|---|",
            *stage_rows,
            "",
            "Means over seeds; a stage reused from disk keeps the time of the run that made it.",
            "",
            "## Per run",
            "",
            "| strategy | seed | " + " | ".join(f"LLM {m}" for m in METRICS) + " | "
            + " | ".join(f"SASRec {m}" for m in METRICS) + " |",
            "|" + "---|" * (2 + 2 * len(METRICS)),
            *[f"| {a['strategy']} | {a['seed']} | " + " | ".join(f"{a[m]:.4f}" for m in METRICS) + " | "
              + " | ".join(f"{b[m]:.4f}" for m in METRICS) + " |" for a, b in zip(llm_rows, sas_rows)],
            "",
            "## Configuration",
            "",
            "```json",
            json.dumps(dataclasses.asdict(cfg), indent=1, default=str),
            "```",
            "",
            "![results](report.png)",
            "",
        ]
        path = self.out / "REPORT.md"
        write_text(path, "\n".join(lines))
        write_json(self.out / "results.json", {"config": dataclasses.asdict(cfg), "llm": llm_rows, "sasrec": sas_rows,
                                                 "prune_seconds": prune_t, "stage_seconds_total": total,
                                                 "wall_seconds": wall_seconds})
        try:
            plot_report({"few-shot BIGRec (LLM)": llm_sum, "SASRec on the selection": sas_sum},
                        self.out / "report.png", f"{cfg.data_name}, n = {cfg.n}, {len(cfg.seeds)} seed(s)")
        except Exception as e:  # noqa: BLE001 - the chart must never lose the report
            LOG.warning("could not draw report.png: %s", e)
        LOG.info("report: %s", path)
        return path


ONLY = ("prune", "embed", "runs", "report", "all")


def run_study(cfg: StudyConfig, only: str = "all") -> Path | None:
    """Run the study (``only``: prune | embed | runs | report | all); returns the report path if written."""
    if only not in ONLY:
        raise ValueError(f"--only must be one of {', '.join(ONLY)}; got {only!r}")
    start = time.time()
    study = Study(cfg)
    check_writable(cfg.out, "--out_dir")
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json(cfg.out / "config.json", dataclasses.asdict(cfg))
    if only == "embed":
        study.embed()
    if only in ("prune", "runs", "all"):
        study.prune()
    if only in ("runs", "all"):
        study.runs()
    if only in ("report", "all"):
        return study.report(time.time() - start if only == "all" else None)
    return None


__all__ = [
    "PAPER_TABLE2", "PRESETS", "Study", "StudyConfig", "markdown_table", "mean_std", "plot_report", "run_study",
    "summarize",
]
