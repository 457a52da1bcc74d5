"""The study's signals, one run each: what a selection is worth to a recommender.

- :func:`llm_run`: few-shot LoRA fine-tuning of BIGRec on the selection, generation for the
  study's fixed test users, grounding, Recall/NDCG@K (paper §5.1);
- :func:`sasrec_run`: a fresh SASRec trained on the selected users' sequences only, evaluated on
  the full test set (also the full-data reference row, trained on every candidate);
- :func:`tiger_run`: TIGER (:mod:`dealrec.tiger`) trained on the selected users' sequences only,
  every test user of the data set ranked by constrained beam search (the paper's second backend,
  Table 2; also a full-data reference row).

Each returns the run's row (its numbers without the record's bookkeeping) and writes the record
as the run finishes; a run whose record carries the expected key is never recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dealrec.core.cache import cached
from dealrec.core.files import read_json, write_json
from dealrec.core.locking import output_lock
from dealrec.core.logs import Timer
from dealrec.data.fewshot import write_fewshot
from dealrec.llm.finetune import MANIFEST as FINETUNE_MANIFEST
from dealrec.llm.finetune import is_done
from dealrec.llm.finetune import train as finetune
from dealrec.llm.generate import run_inference
from dealrec.llm.ground import evaluate_results
from dealrec.study.report import ROW_KS
from dealrec.surrogate import build_surrogate
from dealrec.surrogate.trainer import SurrogateConfig, train_surrogate
from dealrec.tiger.cli import run as tiger_train_and_rank
from dealrec.tiger.evaluate import hits_path

if TYPE_CHECKING:
    from dealrec.study.runner import Study

RECORD_ONLY = ("key", "params", "written", "machine", "users_key", "metrics", "timings", "finetune_ran")


def row(rec: dict[str, Any]) -> dict[str, Any]:
    """A record's row: its numbers without the bookkeeping (key, params, full metrics, timings)."""
    return {k: v for k, v in rec.items() if k not in RECORD_ONLY}


def metrics_at(metrics: dict[str, Any], ks: Sequence[int]) -> dict[str, float]:
    """{"Recall@10": …, …} at every cutoff of ROW_KS in ``ks``, from a metrics dict with per-k lists
    aligned to ``ks``."""
    out = {}
    for m in ("Recall", "NDCG"):
        for k in (k for k in ROW_KS if k in ks):
            out[f"{m}@{k}"] = float(metrics[m][list(ks).index(k)])
    return out


def _finetune_ran(adapter: Path) -> dict[str, Any]:
    """What the LoRA run did beyond its key (the precision and loss positions that ran, its steps;
    an adapter manifest without ``loss_positions_ran`` comes from a run over every position)."""
    m = read_json(adapter / FINETUNE_MANIFEST)
    return {"precision_ran": m.get("precision_ran"), "loss_positions_ran": m.get("loss_positions_ran", "all"),
            "global_step": m.get("global_step"), "best_eval_loss": m.get("best_eval_loss")}


def _timings(run: Path, **new: float) -> dict[str, float]:
    """The run folder's stage seconds, with ``new`` ones added."""
    path = run / "timings.json"
    t = read_json(path) if path.is_file() else {}
    if new:
        t.update({k: round(v, 1) for k, v in new.items()})
        write_json(path, t)
    return t


def llm_run(study: Study, strategy: str, seed: int, users: list[int]) -> dict[str, Any]:
    """Few-shot fine-tune, generate, ground and score one run (BIGRec, paper §5.1); the record's
    row (metrics, per-user hit ranks, timings) when there is one."""
    name, params = f"{strategy}_s{seed}", study.llm_params(strategy, seed, users)
    rec = study.records.get("llm", name, params)
    if rec is not None:  # recorded: no run folder, no lock
        return {**row(rec), **rec.get("timings", {})}
    with output_lock(study.run_dir(strategy, seed), flag="--out_dir", wait=True):
        rec = study.records.get("llm", name, params)  # another process may have finished it
        if rec is not None:
            return {**row(rec), **rec.get("timings", {})}
        return _llm_train_and_score(study, strategy, seed, users, params)


def _llm_train_and_score(study: Study, strategy: str, seed: int, users: list[int],
                         params: dict[str, Any]) -> dict[str, Any]:
    cfg, run = study.cfg, study.run_dir(strategy, seed)
    paths = write_fewshot(study.data, users, run / "fewshot", study.tokenizer, cfg.cutoff_len, n_label=cfg.n,
                          base_model=cfg.base_model, splits=("train", "valid"), progress=False)
    ft = cfg.finetune_config(paths["train"], paths["valid"], run / "adapter", seed)
    if not is_done(ft):
        with Timer() as t:
            # the returned model is dropped at once: generation loads the saved adapter
            resumed = finetune(ft).manifest.get("resumed") or {}
        _timings(run, finetune=t.seconds + resumed.get("seconds_before", 0.0))
    icfg = cfg.inference_config(study.test_file(), run / "result.json", run / "adapter")
    if not cached(icfg.result_file, icfg.key()):
        with Timer() as t:
            run_inference(icfg)
        _timings(run, generate=t.seconds)
    with Timer() as t:
        report = evaluate_results(icfg.result_file, study.data, cfg.base_model, device=cfg.device,
                                  max_items=cfg.max_items, model=study.base, tokenizer=study.tokenizer,
                                  precision=cfg.ground_precision)
    timings = _timings(run, ground=t.seconds)
    per_user = report.pop("per_user")
    if per_user["users"] != study.test_user_ids():
        raise ValueError(f"{icfg.result_file}: its users are not the study's fixed test users")
    record = {"strategy": strategy, "seed": seed, **metrics_at(report, report["ks"]),
              "exact_title_share": report["exact_title_share"], "n_users": report["n_users"],
              "n_items_ranked": report["n_items_ranked"], "timings": timings,
              "finetune_ran": _finetune_ran(Path(ft.output_dir)),
              "metrics": {k: report[k] for k in ("ks", "Recall", "NDCG", "Precision", "MRR", "n_empty",
                                                 "catalogue", "precision")}}
    rec = study.records.put("llm", f"{strategy}_s{seed}", params, record, per_user["hit_ranks"], per_user["users"])
    return {**row(rec), **timings}


def _recorded_or_run(study: Study, signal: str, name: str, params: dict[str, Any],
                     compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The row of the record ``signal``/``name`` when it carries ``params``' key, else ``compute()``
    under the run's lock (the reference row is run by every ``--only runs`` process: the record is
    looked up again once the lock is held)."""
    rec = study.records.get(signal, name, params)
    if rec is not None:
        return row(rec)
    lock = study.out / signal / f"{name.replace(' ', '-')}.json"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(lock, flag="--out_dir", wait=True):
        rec = study.records.get(signal, name, params)
        return row(rec) if rec is not None else compute()


def sasrec_run(study: Study, label: str, seed: int, users: list[int]) -> dict[str, Any]:
    """A fresh SASRec trained on ``users``' sequences only, full test set; the record's row
    (metrics, per-user hit ranks) when there is one."""
    params = study.sasrec_params(seed, users)
    return _recorded_or_run(study, "sasrec", f"{label}_s{seed}", params, lambda: _sasrec_train(
        study, label, seed, users, params, study.cfg.sasrec_config(seed)))


def _sasrec_train(study: Study, label: str, seed: int, users: list[int], params: dict[str, Any],
                  scfg: SurrogateConfig) -> dict[str, Any]:
    model = build_surrogate("SASRec", study.data.n_items, scfg)
    with Timer() as t:
        res = train_surrogate(model, study.data, scfg, study.cfg.device, train_users=sorted(users))
    record = {"strategy": label, "seed": seed, **metrics_at(res.test, scfg.ks), "best_epoch": res.best_epoch,
              "n_test_users": res.test["n_users"], "seconds": round(t.seconds, 1),
              "metrics": {"ks": list(scfg.ks), **{k: res.test[k] for k in ("Recall", "NDCG", "Precision", "MRR")}}}
    study.records.write_users("sasrec", res.test_users)
    return row(study.records.put("sasrec", f"{label}_s{seed}", params, record, res.test_hit_ranks, res.test_users))


def tiger_run(study: Study, label: str, seed: int, users: list[int]) -> dict[str, Any]:
    """TIGER trained on ``users``' sequences only, every test user ranked; the record's row
    (metrics, per-user hit ranks, train and decode seconds) when there is one."""
    params = study.tiger_params(seed, users)
    return _recorded_or_run(study, "tiger", f"{label}_s{seed}", params,
                            lambda: _tiger_train_and_score(study, label, seed, users, params))


def _tiger_train_and_score(study: Study, label: str, seed: int, users: list[int],
                           params: dict[str, Any]) -> dict[str, Any]:
    cfg = study.cfg
    run = study.out / "runs" / f"tiger_{label.replace(' ', '-')}_s{seed}"
    paths = write_fewshot(study.data, users, run / "fewshot", study.tokenizer, cfg.cutoff_len, n_label=len(users),
                          base_model=cfg.base_model, splits=("train", "valid"), progress=False)
    tcfg = cfg.tiger_config(paths["train"], paths["valid"], study.tiger_test_file(), run / "model",
                            run / "result.json", seed)
    report = tiger_train_and_rank(tcfg)
    per_user = read_json(hits_path(tcfg.result_file))
    if per_user["users"] != study.data.test_users:
        raise ValueError(f"{hits_path(tcfg.result_file)}: its users are not every test user of {cfg.data_name}")
    record = {"strategy": label, "seed": seed, **metrics_at(report, report["ks"]), "n_users": report["n_users"],
              "train_seconds": report["train_seconds"], "decode_seconds": report["decode_seconds"],
              "metrics": {k: report[k] for k in ("ks", "Recall", "NDCG", "Precision", "MRR", "n_users", "short_lists",
                                                 "n_items_ranked", "catalogue", "ranking", "semantic_ids")}}
    study.records.write_users("tiger", per_user["users"])
    return row(study.records.put("tiger", f"{label}_s{seed}", params, record, per_user["hit_ranks"],
                                 per_user["users"]))
