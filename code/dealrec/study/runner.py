"""Reproduction study: does DEALRec's selection beat random and the baselines at equal cost?

One data set, one sample count n, strategies × seeds (the paper's Table 2 setting, §5.2):

1. the pruning scores once: surrogate, influence (Eq. 9–11), effort (Eq. 12) and the EL2N/GraNd
   baselines are computed once and cached under ``<out>/scores``; every strategy then selects
   from them (:func:`dealrec.select.run_strategy`) with the run's seed;
2. per strategy and seed, the signals of :mod:`dealrec.study.signals`: few-shot BIGRec on one
   fixed set of test users, a fresh SASRec trained on the selection only and, where ``signals``
   names it, TIGER trained on the selection only (plus reference rows: SASRec and TIGER on every
   candidate user);
3. ``<out>/REPORT.md`` (mean ± sample std over seeds, the paper's Table 2 rows beside them, the
   paired differences to ``random`` per test user with bootstrap intervals, wall-clock time per
   stage, the configuration) and ``<out>/report.png``, rendered by :mod:`dealrec.study.report`.

Each finished run leaves its small result files in the record folder
(:attr:`~dealrec.study.config.StudyConfig.record_folder`; :mod:`dealrec.study.records`): the
selection's indices, the metrics and timings, and per test user the ranks of its targets. A run
whose record carries the expected key (:mod:`dealrec.study.keys`) is never recomputed, and the
report is made from the records alone, so a study resumes from them on a machine without
``<out>`` (scores, adapters, generations and title embeddings are rebuilt only for runs still
missing). The SASRec and TIGER signals may have more seeds than the LLM signal (``sasrec_seeds``,
``tiger_seeds``).

Every heavy output is cached with a manifest too, so an interrupted run resumes where it stopped,
and several processes can share the work when given disjoint ``strategies`` (``only="runs"``).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import torch

from dealrec.core import faults
from dealrec.core.cache import cache_key, cached, file_hash, tensor_hash, write_manifest
from dealrec.core.files import check_writable, read_json, write_json
from dealrec.core.hardware import cpu_precision
from dealrec.core.locking import output_lock
from dealrec.core.logs import LOG, Timer
from dealrec.core.model_id import model_id
from dealrec.data.dataset import load_dataset
from dealrec.data.fewshot import build_examples
from dealrec.llm.ground import GROUND_AUTO
from dealrec.prune.pipeline import compute_scores, effort_file, eligible_mask, influence_file, surrogate_file
from dealrec.select import ScoreSet, run_strategy, strategy_spec
from dealrec.study import keys
from dealrec.study.config import SIGNALS, StudyConfig
from dealrec.study.records import Records
from dealrec.study.report import REFERENCE, StudyFacts, write_report
from dealrec.study.signals import llm_run, row, sasrec_run, tiger_run

Run = tuple[str, str, int]  # (signal, strategy or REFERENCE, seed)


class Study:
    """The runs of one :class:`StudyConfig`: the shared pieces (data, candidates, test users, the
    base model, the pruning scores), the selections, the plan of runs and what the records hold;
    every method reuses what is on disk."""

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
        self.train_hash = file_hash(self.data.root / "sequential_train.txt")
        self.records = Records(cfg.record_folder)
        self._scores: dict[str, ScoreSet] = {}
        self._tokenizer: Any = None
        self._base: Any = None

    # -- shared pieces ------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from dealrec.llm.model import load_tokenizer

            self._tokenizer = load_tokenizer(self.cfg.base_model)
        return self._tokenizer

    @property
    def base(self) -> Any:
        """The base LLM without adapter (grounding embeds with it), loaded once."""
        if self._base is None:
            from dealrec.llm.model import load_base_model

            self._base = load_base_model(self.cfg.base_model, self.cfg.device)
        return self._base

    def test_user_ids(self) -> list[int]:
        """The LLM signal's test users: a fixed random sample of ``test_users`` (user order), or all."""
        cfg = self.cfg
        users = self.data.test_users
        if cfg.test_users is not None and cfg.test_users < len(users):
            users = sorted(random.Random(cfg.test_seed).sample(users, cfg.test_users))
        return users

    def test_file(self) -> Path:
        """One test file for every LLM run: :meth:`test_user_ids`' examples, in that order."""
        return test_examples(self, self.out / "test.json", self.test_user_ids())

    def tiger_test_file(self) -> Path:
        """One test file for every TIGER run: every test user of the data set, in user order."""
        return test_examples(self, self.out / "tiger_test.json", self.data.test_users)

    def scores(self, strategy: str) -> ScoreSet:
        """The scores ``strategy`` needs (:func:`dealrec.prune.pipeline.compute_scores`, cached in
        ``<out>/scores``)."""
        pcfg = self.cfg.prune_config(strategy)
        needs = strategy_spec(strategy).needs
        tag = f"{pcfg.influence.negatives}-{pcfg.effort.target}-{'-'.join(sorted(needs))}"
        if tag not in self._scores:
            # shared by parallel study processes (--only prune / runs): one computes, the others wait and reuse
            with output_lock(pcfg.scores_path, flag="--out_dir", wait=True):
                self._scores[tag] = ScoreSet(**compute_scores(pcfg, self.pool, needs), eligible=self.eligible)
        return self._scores[tag]

    def compute_scores(self) -> None:
        """The scores of every strategy that still has a selection to make (none when every
        selection is in the records)."""
        for s in self.cfg.strategies:
            if any(self.records.get("selection", f"{s}_s{seed}", self.selection_params(s, seed)) is None
                   for seed in self.cfg.all_seeds):
                self.scores(s)

    def embed(self) -> None:
        """The item-title embeddings grounding needs (cached per model and catalogue), ahead of the runs."""
        from dealrec.llm.ground import item_embeddings

        items = None
        if self.cfg.max_items is not None and self.cfg.max_items < self.data.n_items:
            targets = {i for r in read_json(self.test_file()) for i in r["target_ids"]}
            items = sorted(set(range(self.cfg.max_items)) | targets)
        item_embeddings(self.cfg.base_model, self.data, self.base, self.tokenizer, items, device=self.cfg.device,
                        precision=self.ground_precision())  # the cache evaluate_results will look for

    def ground_precision(self) -> str:
        """What ``--ground_precision`` runs on this device (``fp32`` or ``bf16``)."""
        return cpu_precision(self.cfg.ground_precision, self.cfg.device, "--ground_precision", auto=GROUND_AUTO,
                             warn=False)

    # -- the keys of the records (:mod:`dealrec.study.keys`) -----------------------------------

    def selection_params(self, strategy: str, seed: int) -> dict[str, Any]:
        return keys.selection_params(self.cfg, self.train_hash, strategy, seed)

    def llm_params(self, strategy: str, seed: int, users: list[int]) -> dict[str, Any]:
        return keys.llm_params(self.cfg, self.train_hash, strategy, seed, users, self.test_user_ids(),
                               self.ground_precision())

    def sasrec_params(self, seed: int, users: list[int]) -> dict[str, Any]:
        return keys.sasrec_params(self.cfg, self.train_hash, seed, users)

    def tiger_params(self, seed: int, users: list[int]) -> dict[str, Any]:
        return keys.tiger_params(self.cfg, self.train_hash, seed, users, self.data.test_users)

    # -- selections and runs ------------------------------------------------------------------

    def run_dir(self, strategy: str, seed: int) -> Path:
        return self.out / "runs" / f"{strategy}_s{seed}"

    def selection(self, strategy: str, seed: int, compute: bool = True) -> list[int]:
        """The selected users of ``strategy`` with ``seed``: from the record, else selected from
        the scores (computed or reused from ``<out>/scores``) and recorded."""
        cfg = self.cfg
        name = f"{strategy}_s{seed}"
        params = self.selection_params(strategy, seed)
        rec = self.records.get("selection", name, params)
        if rec is not None:
            return [int(u) for u in rec["indices"]]
        if not compute:
            raise FileNotFoundError(f"no record of the selection {name} in {self.records.root}; run the study first")
        scores = self.scores(strategy)
        with Timer() as t:
            res = run_strategy(strategy, scores, cfg.n, seed=seed, lamda=cfg.lamda, k=cfg.k,
                               hard_prune=cfg.hard_prune)
        users = [int(i) for i in res.indices]
        if res.shortfall:
            LOG.warning("%s seed %d: selection is %d short of n=%d", strategy, seed, res.shortfall, cfg.n)
        summary = {k: v for k, v in res.to_dict().items() if k not in ("indices", "hard_pruned")}
        used = {k: tensor_hash(torch.as_tensor(getattr(scores, k))) for k in ("influence", "effort", "el2n", "grand")
                if getattr(scores, k, None) is not None}
        self.records.put("selection", name, params, {"indices": users, "selection": summary,
                                                     "scores": used, "seconds": round(t.seconds, 3)})
        return users

    def planned(self) -> list[Run]:
        """Every (signal, label, seed) run of the study: per strategy its seeds of each planned
        signal, then the full-data reference rows (SASRec, and TIGER where planned) with the
        reference seeds."""
        seeds, signals = self.cfg.signal_seeds, self.cfg.planned_signals
        out = [(signal, strategy, seed) for strategy in self.cfg.strategies for seed in self.cfg.all_seeds
               for signal in signals if seed in seeds[signal] and strategy in self.cfg.signal_strategies(signal)]
        return out + [(signal, REFERENCE, seed) for signal in signals if signal != "llm"
                      for seed in self.cfg.reference_row_seeds]

    def run_params(self, signal: str, label: str, seed: int, users: list[int]) -> dict[str, Any]:
        """The parameters behind the record of one run of ``signal`` on ``users``."""
        if signal == "llm":
            return self.llm_params(label, seed, users)
        return self.sasrec_params(seed, users) if signal == "sasrec" else self.tiger_params(seed, users)

    def run_record(self, signal: str, label: str, seed: int) -> dict[str, Any] | None:
        """The record of one planned run under the current settings (None: not run yet, or stale)."""
        if label == REFERENCE:
            users = self.candidates
        else:
            try:
                users = self.selection(label, seed, compute=False)
            except FileNotFoundError:
                return None
        return self.records.get(signal, f"{label}_s{seed}", self.run_params(signal, label, seed, users))

    def pending(self, signals: tuple[str, ...] | None = None) -> list[Run]:
        """The planned runs of ``signals`` (default: the configured ``signals``) without a record (a
        missing selection counts as pending runs of every signal)."""
        wanted = set(self.cfg.signals if signals is None else signals)
        return [(sig, label, seed) for sig, label, seed in self.planned()
                if sig in wanted and self.run_record(sig, label, seed) is None]

    def runs(self) -> None:
        """Every pending run of the configured ``signals``, strategy by strategy (per seed the cheap
        SASRec run, then TIGER, then the LLM run); each run's record is written as it finishes."""
        seeds, signals = self.cfg.signal_seeds, self.cfg.signals
        if "llm" in signals:
            self.records.write_users("llm", self.test_user_ids())
        pending = self.pending()
        LOG.info("%d run(s) without a record in %s: %s", len(pending), self.records.root,
                 ", ".join(f"{sig} {s} s{seed}" for sig, s, seed in pending) or "none")
        for strategy in self.cfg.strategies:
            for seed in self.cfg.all_seeds:
                if not any(seed in seeds[signal] for signal in signals):
                    continue  # a seed of a signal not run in this call: its selection waits for that signal
                LOG.info("== run %s seed %d", strategy, seed)
                users = self.selection(strategy, seed)
                for signal, run in (("sasrec", sasrec_run), ("tiger", tiger_run), ("llm", llm_run)):
                    if seed in seeds[signal] and signal in signals and strategy in self.cfg.signal_strategies(signal):
                        run(self, strategy, seed, users)
                faults.step("study")
        for signal, run in (("sasrec", sasrec_run), ("tiger", tiger_run)):
            if signal in signals:
                for seed in self.cfg.reference_row_seeds:
                    run(self, REFERENCE, seed, self.candidates)


def test_examples(study: Study, path: Path, users: list[int]) -> Path:
    """``path``: the test examples of ``users`` in that order (BIGRec's test prompts), written once
    and kept while its key (data, users, cutoff, model) is unchanged."""
    cfg = study.cfg
    key = {"data_name": cfg.data_name, "train": study.train_hash,
           "users": cache_key({"u": users}), "cutoff_len": cfg.cutoff_len, "model": model_id(cfg.base_model)}
    if not cached(path, key):
        write_json(path, build_examples(study.data, users, "test", study.tokenizer, cfg.cutoff_len))
        write_manifest(path, key, data_name=cfg.data_name, n_users=len(users))
    return path


def collect(study: Study) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], list[Run]]:
    """Per signal (:data:`SIGNALS`) the per-run rows and their per-user hit ranks, and the planned
    runs without a record yet, from the records only (a study run in parts reports what it has)."""
    rows: dict[str, list[dict[str, Any]]] = {signal: [] for signal in SIGNALS}
    per_user: dict[str, dict[str, dict[int, Any]]] = {signal: {} for signal in SIGNALS}
    users_keys: dict[str, set[str]] = {signal: set() for signal in SIGNALS}
    missing = []
    planned = study.planned()
    order = {label: i for i, label in enumerate([*study.cfg.strategies, REFERENCE])}
    for signal, label, seed in sorted(planned, key=lambda r: (order[r[1]], SIGNALS.index(r[0]), r[2])):
        rec = study.run_record(signal, label, seed)
        if rec is None:
            missing.append((signal, label, seed))
            continue
        rows[signal].append({**row(rec), "strategy": label, "seed": seed, **rec.get("timings", {}),
                             "machine": rec.get("machine")})
        users_keys[signal].add(rec["users_key"])
        per_user[signal].setdefault(label, {})[seed] = study.records.hit_ranks(signal, f"{label}_s{seed}", rec)
    for signal, found in users_keys.items():
        if len(found) > 1:
            raise ValueError(f"the {signal} records were made on different test users; rerun the stale ones")
    if not any(rows.values()):
        raise FileNotFoundError(f"no run of this study has a record in {study.records.root}; "
                                "run the study with --only runs first")
    return rows, per_user, [r for r in planned if r in missing]


def record_prune_timings(study: Study) -> dict[str, float]:
    """The pruning stages' seconds in the record folder's ``prune.json``, so that a report made
    from the records alone still has them: a stage's first recorded time stays (the scores that made
    the first selections); the score manifests in ``<out>/scores`` add the stages it lacks."""
    path = study.records.root / "prune.json"
    t = read_json(path) if path.is_file() else {}
    merged = {**prune_timings(study.cfg), **t}
    if merged != t:
        write_json(path, merged)
    return merged


def report(study: Study, wall_seconds: float | None = None) -> Path:
    """Collect the rows and write REPORT.md, results.json and report.png (:func:`write_report`)."""
    rows, per_user, missing = collect(study)
    facts = StudyFacts(len(study.candidates), study.pool.n_users, study.data.n_users, study.data.n_items,
                       record_prune_timings(study), len(study.test_user_ids()), missing,
                       n_all_test=len(study.data.test_users), seed_free=seed_free_strategies(study))
    return write_report(study.out, study.cfg, rows, facts, wall_seconds, per_user=per_user)


def seed_free_strategies(study: Study) -> tuple[str, ...]:
    """The strategies whose recorded selections are identical for every seed that used the same
    scores (the score hashes of the record), with ≥ 2 seeds recorded on one score set."""
    out = []
    for s in study.cfg.strategies:
        by_scores: dict[str, list[list[int]]] = {}
        for seed in study.cfg.all_seeds:
            rec = study.records.get("selection", f"{s}_s{seed}", study.selection_params(s, seed))
            if rec is not None:
                by_scores.setdefault(cache_key({"scores": rec.get("scores")}), []).append(rec["indices"])
        groups = by_scores.values()
        if any(len(g) > 1 for g in groups) and all(all(p == g[0] for p in g) for g in groups):
            out.append(s)
    return tuple(out)


def prune_timings(cfg: StudyConfig) -> dict[str, float]:
    """Seconds of each pruning stage, read from the score manifests in ``<out>/scores``."""
    pcfg = cfg.prune_config()
    files = {"surrogate": surrogate_file(pcfg), "influence": influence_file(pcfg), "effort": effort_file(pcfg)}
    out = {}
    for name, f in files.items():
        m = f.with_name(f.name + ".json")
        if m.is_file():
            sec = read_json(m).get("seconds")
            if sec is not None:
                out[name] = round(float(sec), 1)
    return out


ONLY = ("prune", "embed", "runs", "report", "all")


def run_study(cfg: StudyConfig, only: str = "all") -> Path | None:
    """Run the study (``only``: prune | embed | runs | report | all); returns the report path if
    written. ``prune`` computes the pruning scores every pending selection needs."""
    if only not in ONLY:
        raise ValueError(f"--only must be one of {', '.join(ONLY)}; got {only!r}")
    start = time.time()
    study = Study(cfg)
    check_writable(cfg.out, "--out_dir")
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json(cfg.out / "config.json", cfg.summary())
    LOG.info("records: %s", cfg.record_folder)
    if only == "embed":
        study.embed()
    if only in ("prune", "runs", "all"):
        study.compute_scores()
        record_prune_timings(study)
    if only in ("runs", "all"):
        study.runs()
    if only in ("report", "all"):
        return report(study, time.time() - start if only == "all" else None)
    return None
