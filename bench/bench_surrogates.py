"""SASRec, BERT4Rec, GRU4Rec and DCRec as DEALRec's surrogate, on Games: does the surrogate change what
DEALRec selects, and does it matter?

    # the effort of the first 1,024 users (one file for every surrogate; 4–15 min on one CPU thread):
    cd code/prune && python prune.py --stage effort --max_users 1024 --cutoff_len 256 \
        --effort_precision bf16 --score_dir ../../results/surrogates/effort_first1024 && cd ../..
    OMP_NUM_THREADS=1 python bench/bench_surrogates.py \
        --effort_scores results/surrogates/effort_first1024/effort.pt

1. ``train``: each surrogate on all Games users through the pruning pipeline's own stage
   (:func:`dealrec.prune.pipeline.load_or_train_surrogate`, cached under ``<work>/scores``), the same
   budget for all (``--epochs`` 20, evaluation every 5, best validation Recall@5 kept): test
   Recall/NDCG@10/20, seconds per training epoch and per evaluation; a popularity ranking beside.
2. ``influence``: each surrogate's influence scores on all users (the pipeline's stage, depth
   5000, sampled negatives), again with another seed from the same checkpoint (the seed-to-seed
   agreement each surrogate has with itself), and with expected negatives for the next-item
   surrogates (``--expected``; seed-free).
3. ``select``: Spearman correlations of the influence scores (eligible users), and overlaps of the
   selected users: DEALRec (λ 0.3, k 50, ``--n`` 128) among the first N users with ONE given
   effort score file (effort does not depend on the surrogate; N = its length), and
   influence-only coverage selection (λ 0, ``--n_all`` 1,024) among all users; random
   selections and same-surrogate reruns as references.
4. ``signal``: a fresh SASRec trained on each selection only, evaluated on all test users — the
   reproduction study's second signal (:func:`dealrec.study.signals.sasrec_run`), for each
   surrogate's selections, a random selection and (DEALRec) all N candidates.
5. ``report``: ``<out>/{accuracy,agreement,selections,signal}.json`` (``records/surrogates``) and
   ``--report`` (``docs/surrogates/REPORT.md``).

Every stage is cached (``--work``), so a rerun only reports. Run with ``OMP_NUM_THREADS=1`` on a
shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "code"))

from dealrec.core.files import load_tensor, read_json, write_json, write_text  # noqa: E402
from dealrec.core.hardware import describe  # noqa: E402
from dealrec.core.logs import LOG, setup_logging  # noqa: E402
from dealrec.data.dataset import load_dataset  # noqa: E402
from dealrec.metrics import DEFAULT_KS, topk_from_scores, topk_metrics  # noqa: E402
from dealrec.prune.pipeline import (  # noqa: E402
    PruneConfig,
    compute_influence,
    eligible_mask,
    influence_file,
    load_or_train_surrogate,
    surrogate_file,
)
from dealrec.select import ScoreSet, run_strategy  # noqa: E402
from dealrec.study.config import StudyConfig  # noqa: E402
from dealrec.study.runner import Study  # noqa: E402
from dealrec.study.signals import sasrec_run  # noqa: E402
from dealrec.surrogate import surrogate_spec  # noqa: E402
from dealrec.surrogate.trainer import eval_sets  # noqa: E402

KS = (10, 20)
# The report's name of each objective (Objective.key()["objective"]; None: the next-item BCE).
OBJECTIVE_LABELS = {"cloze": "cloze, full softmax", "dcrec": "fused views, full softmax + debiased contrastive"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data_dir", default=str(REPO / "data"))
    a("--data_name", default="games")
    a("--surrogates", nargs="+", default=["SASRec", "BERT4Rec", "GRU4Rec", "DCRec"])
    a("--max_users", type=int, default=None, help="the first N users only (a quick check of the script)")
    a("--epochs", type=int, default=20)
    a("--eval_every", type=int, default=5)
    a("--seed", type=int, default=42, help="training, influence and selection seed")
    a("--seed2", type=int, default=43, help="the second influence seed (same checkpoint)")
    a("--recursion_depth", type=int, default=5000)
    a("--expected", action=argparse.BooleanOptionalAction, default=True,
      help="also expected-negative influence for the next-item surrogates")
    a("--effort_scores", default=None, help="effort scores of the first N users (one file for every surrogate)")
    a("--n", type=int, default=128, help="DEALRec selection size among the --effort_scores users")
    a("--n_all", type=int, default=1024, help="influence-only selection size among all users")
    a("--lamda", type=float, default=0.3)
    a("--k", type=int, default=50)
    a("--sasrec_seeds", type=int, nargs="+", default=[0, 1])
    a("--work", default=str(REPO / "results" / "surrogates"))
    a("--out", default=str(REPO / "records" / "surrogates"), help="the JSON figures")
    a("--report", default=str(REPO / "docs" / "surrogates" / "REPORT.md"), help="the Markdown report")
    a("--threads", type=int, default=1)
    a("--only", choices=("train", "influence", "select", "signal", "report", "all"), default="all")
    return p.parse_args(argv)


def prune_config(args, name: str, **kw) -> PruneConfig:
    base = dict(data_dir=args.data_dir, data_name=args.data_name, surrogate=name, epochs=args.epochs,
                eval_every=args.eval_every, seed=args.seed, recursion_depth=args.recursion_depth,
                max_users=args.max_users, score_dir=str(Path(args.work) / "scores"))
    return PruneConfig.flat(**{**base, **kw})


def at(metrics: dict, ks=KS, computed=DEFAULT_KS) -> dict:
    """{"Recall@10": …} from per-k lists computed at ``computed`` (the surrogate's default ks)."""
    return {f"{m}@{k}": float(metrics[m][list(computed).index(k)]) for m in ("Recall", "NDCG") for k in ks}


# -- 1. accuracy and time ---------------------------------------------------------------------------


def train(args, data) -> dict:
    out = {}
    for name in args.surrogates:
        cfg = prune_config(args, name)
        load_or_train_surrogate(cfg, data)
        m = read_json(surrogate_file(cfg).with_name(surrogate_file(cfg).name + ".json"))
        out[name] = {
            **at(m["test"]), "best_epoch": m["best_epoch"], "seconds_per_epoch": round(m["seconds_per_epoch"], 1),
            "seconds_per_eval": round(m["seconds_per_eval"], 1), "train_seconds": round(m["seconds"], 1),
            "valid_recall5_by_eval": [r["valid"]["Recall"][0] for r in m["history"] if "valid" in r],
            "influence_params": list(cfg.influence_parameters), "config": m["params"]["config"],
            "objective": m["params"].get("objective", "next-item BCE, one sampled negative"),
        }
        LOG.info("%s: %s", name, out[name])
    return out


def interleaved_timing(args, data, reps: int = 3, batches: int = 20) -> dict:
    """Seconds per training epoch and per validation evaluation, measured interleaved (round robin
    over the surrogates, ``reps`` times; median) so that a change of machine load hits all alike:
    ``batches`` random training batches of 500 (split batching, dropout on) scaled to an epoch."""
    from dealrec.surrogate import build_surrogate, objective_of
    from dealrec.surrogate.trainer import evaluate

    setups = {}
    valid, _ = eval_sets(data)
    for name in args.surrogates:
        cfg = prune_config(args, name).surrogate.config()
        model = build_surrogate(name, data.n_items, cfg).train()
        obj = objective_of(model)
        gen = torch.Generator().manual_seed(0)
        samples = obj.build_samples(data.train, data.n_items, cfg.max_seq_length)
        obj.prepare(model, samples)  # DCRec: its item graphs
        drawn, neg = obj.draw(samples, gen)
        order = torch.randperm(len(drawn), generator=gen)
        setups[name] = (cfg, model, obj, drawn, neg, order, torch.optim.Adam(model.parameters(), lr=cfg.lr))
    per_batch = {n: [] for n in setups}
    per_eval = {n: [] for n in setups}
    for _ in range(reps):
        for name, (cfg, model, obj, drawn, neg, order, optim) in setups.items():
            model.train()
            t0 = time.perf_counter()
            for b in range(batches):
                idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                loss = obj.batch_loss(model, drawn.input_ids[idx], drawn.target_pos[idx],
                                      neg[idx] if neg is not None else None, overhead=cfg.bucket_overhead)
                optim.zero_grad()
                loss.backward()
                optim.step()
            per_batch[name].append((time.perf_counter() - t0) / batches)
            t0 = time.perf_counter()
            evaluate(model, valid, cfg.ks)
            per_eval[name].append(time.perf_counter() - t0)
    n_batches = -(-data.n_users // 500)
    return {name: {"seconds_per_epoch": round(float(np.median(per_batch[name])) * n_batches, 1),
                   "seconds_per_eval": round(float(np.median(per_eval[name])), 1),
                   "batch_seconds": [round(x, 4) for x in per_batch[name]],
                   "eval_seconds": [round(x, 2) for x in per_eval[name]]} for name in setups}


@torch.no_grad()
def popularity(data) -> dict:
    """Test metrics of ranking by training-set popularity (train + valid items masked, as the surrogates)."""
    _, test = eval_sets(data)
    counts = torch.zeros(data.n_items + 1)
    for seq in data.train:
        for i in seq:
            counts[i + 1] += 1
    ks = DEFAULT_KS
    ranked = torch.zeros(len(test.users), max(ks), dtype=torch.long)
    for start in range(0, len(test.users), 1024):
        rows = range(start, min(start + 1024, len(test.users)))
        scores = counts[None].repeat(len(rows), 1)
        exclude = torch.zeros_like(scores, dtype=torch.bool)
        exclude[:, 0] = True
        for r, u in enumerate(rows):
            exclude[r, test.exclude[u]] = True
        ranked[start:start + len(rows)] = topk_from_scores(scores, max(ks), exclude)
    return at(topk_metrics(ranked, test.targets, ks))


# -- 2. influence ---------------------------------------------------------------------------------


def variants(args) -> list[tuple[str, str, dict]]:
    """(label, surrogate, PruneConfig overrides) of every influence score compared."""
    out = [(name, name, {}) for name in args.surrogates]
    for name in args.surrogates:
        ckpt = str(surrogate_file(prune_config(args, name)))
        out.append((f"{name} seed {args.seed2}", name, {
            "seed": args.seed2, "surrogate_checkpoint": ckpt, "score_dir": str(Path(args.work) / f"scores_seed{args.seed2}")}))
    if args.expected:
        out += [(f"{name} expected", name, {"negatives": "expected"}) for name in args.surrogates
                if surrogate_spec(name).objective.uses_negatives]
    return out


def influence(args, data) -> dict[str, torch.Tensor]:
    scores, timing = {}, {}
    for label, name, kw in variants(args):
        cfg = prune_config(args, name, **kw)
        model = load_or_train_surrogate(prune_config(args, name), data) if "surrogate_checkpoint" not in kw \
            else load_or_train_surrogate(cfg, data)
        scores[label] = compute_influence(cfg, data, model)
        m = read_json(influence_file(cfg).with_name(influence_file(cfg).name + ".json"))
        timing[label] = {k: round(v, 1) for k, v in m["timing"].items()} | {"seconds": round(m["seconds"], 1)}
    return scores, timing


# -- 3. agreement ---------------------------------------------------------------------------------


def overlap(a: list[int], b: list[int]) -> float:
    return len(set(a) & set(b)) / max(len(a), 1)


def agreement(args, data, scores: dict[str, torch.Tensor]) -> dict:
    elig = eligible_mask(data).numpy()
    labels = list(scores)
    spear = {}
    for x, y in itertools.combinations(labels, 2):
        spear[f"{x} | {y}"] = float(spearmanr(scores[x].numpy()[elig], scores[y].numpy()[elig]).statistic)
    top = {}
    n_top = int(0.1 * elig.sum())
    tops = {lab: set(np.flatnonzero(elig)[np.argsort(-scores[lab].numpy()[elig], kind="stable")[:n_top]]) for lab in labels}
    for x, y in itertools.combinations(labels, 2):
        top[f"{x} | {y}"] = len(tops[x] & tops[y]) / n_top
    sel = {}
    # (a) DEALRec among the first N users, one effort file for all surrogates
    if args.effort_scores:
        effort = load_tensor(args.effort_scores)
        n_pool = len(effort)
        pool_elig = eligible_mask(data.subset_users(n_pool))
        dealrec = {}
        for lab in labels:
            s = ScoreSet(influence=scores[lab][:n_pool], effort=effort, eligible=pool_elig)
            dealrec[lab] = [int(i) for i in run_strategy("dealrec", s, args.n, seed=args.seed, lamda=args.lamda,
                                                          k=args.k, hard_prune=0.1).indices]
        main = args.surrogates[0]
        s = ScoreSet(influence=scores[main][:n_pool], effort=effort, eligible=pool_elig)
        dealrec[f"{main} selection seed {args.seed2}"] = [int(i) for i in run_strategy(
            "dealrec", s, args.n, seed=args.seed2, lamda=args.lamda, k=args.k, hard_prune=0.1).indices]
        for seed in (args.seed, args.seed2):
            dealrec[f"random seed {seed}"] = [int(i) for i in run_strategy("random", s, args.n, seed=seed).indices]
        sel["dealrec"] = {
            "pool_users": n_pool, "eligible": int(pool_elig.sum()), "n": args.n, "lamda": args.lamda, "k": args.k,
            "effort_scores": str(args.effort_scores), "selections": dealrec,
            "overlap": {f"{x} | {y}": overlap(dealrec[x], dealrec[y]) for x, y in itertools.combinations(dealrec, 2)},
        }
    # (b) influence-only coverage selection among all users (no effort score)
    inf_only = {}
    for lab in labels:
        s = ScoreSet(influence=scores[lab], eligible=elig)
        inf_only[lab] = [int(i) for i in run_strategy("influence", s, args.n_all, seed=args.seed, k=args.k,
                                                      hard_prune=0.1).indices]
    for seed in (args.seed, args.seed2):
        inf_only[f"random seed {seed}"] = [int(i) for i in run_strategy("random", s, args.n_all, seed=seed).indices]
    sel["influence_only"] = {
        "pool_users": data.n_users, "eligible": int(elig.sum()), "n": args.n_all, "k": args.k, "selections": inf_only,
        "overlap": {f"{x} | {y}": overlap(inf_only[x], inf_only[y]) for x, y in itertools.combinations(inf_only, 2)},
    }
    return {"spearman": spear, "top10_overlap": top, "selection": sel, "n_eligible": int(elig.sum())}


# -- 4. SASRec on each selection -----------------------------------------------------------------


def signal(args, kind: str, selections: dict[str, list[int]], n: int, n_pool: int | None) -> dict:
    """SASRec trained on each surrogate's selection and a random one (and, for a pool of the first
    N users, on all its candidates), with the reproduction study's recipe and code."""
    study = Study(StudyConfig.flat(data_dir=args.data_dir, data_name=args.data_name,
                              out_dir=str(Path(args.work) / f"study_{kind}"), n=n, pool_users=n_pool,
                              strategies=("dealrec",), seeds=tuple(args.sasrec_seeds)))
    runs = {lab: users for lab, users in selections.items()
            if lab in args.surrogates or lab == f"random seed {args.seed}"}
    if n_pool is not None:
        runs["all candidates"] = study.candidates
    out = {}
    for lab, users in runs.items():
        rows = [sasrec_run(study, f"sel-{lab}", seed, users) for seed in args.sasrec_seeds]
        out[lab] = {"n_users": len(users), "runs": rows,
                    **{m: float(np.mean([r[m] for r in rows])) for m in ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20")},
                    **{f"{m} std": float(np.std([r[m] for r in rows], ddof=1)) if len(rows) > 1 else 0.0
                       for m in ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20")}}
        LOG.info("SASRec on %s: %s", lab, {k: v for k, v in out[lab].items() if k != "runs"})
    return out


# -- 5. report ------------------------------------------------------------------------------------


def matrix(values: dict[str, float], fmt: str = "{:.3f}") -> list[str]:
    """A Markdown table of pairwise values keyed "x | y" (upper triangle; the diagonal is 1)."""
    labels = []
    for pair in values:
        for lab in pair.split(" | "):
            if lab not in labels:
                labels.append(lab)
    lines = ["| | " + " | ".join(labels[1:]) + " |", "|---" * len(labels) + "|"]
    for i, x in enumerate(labels[:-1]):
        cells = []
        for j, y in enumerate(labels[1:], start=1):
            v = values.get(f"{x} | {y}", values.get(f"{y} | {x}"))
            cells.append(fmt.format(v) if j > i and v is not None else "")
        lines.append(f"| {x} | " + " | ".join(cells) + " |")
    return lines


def report(args, acc: dict, pop: dict, timing: dict, agree: dict, sig: dict | None, machine: str) -> str:
    lines = [f"# Surrogates on {args.data_name}: " + ", ".join(acc), "",
             f"Machine: {machine}. Written {time.strftime('%Y-%m-%d %H:%M')} by `bench/bench_surrogates.py`.", "",
             f"## Accuracy and time ({args.epochs} epochs, evaluation every {args.eval_every}, best validation "
             "Recall@5 kept; trained on all users, full ranking of all items, all test users)", "",
             "| surrogate | objective | Recall@10 | Recall@20 | NDCG@10 | NDCG@20 | best epoch | s / epoch | s / eval "
             "| s / epoch in its run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in acc.items():
        kind = r["objective"].get("objective") if isinstance(r["objective"], dict) else None
        obj = OBJECTIVE_LABELS.get(kind, "next item, BCE")
        t = r.get("interleaved", {})
        lines.append(f"| {name} | {obj} | {r['Recall@10']:.4f} | {r['Recall@20']:.4f} | {r['NDCG@10']:.4f} | "
                     f"{r['NDCG@20']:.4f} | {r['best_epoch']} | {t.get('seconds_per_epoch', float('nan')):.1f} | "
                     f"{t.get('seconds_per_eval', float('nan')):.1f} | {r['seconds_per_epoch']:.1f} |")
    lines.append(f"| popularity | – | {pop['Recall@10']:.4f} | {pop['Recall@20']:.4f} | {pop['NDCG@10']:.4f} | "
                 f"{pop['NDCG@20']:.4f} | – | – | – | – |")
    lines += ["", "s / epoch and s / eval: measured interleaved (round robin over the surrogates, median of 3; "
              "an epoch = 20 timed batches of 500 scaled to all users; an evaluation = the 9,609 validation "
              "users, full ranking); `in its run`: the mean over the 20-epoch run itself, whose machine load "
              "differed between surrogates (a shared 2-core machine)."]
    lines += ["", "Influence stage on all users, seconds (v / LiSSA / scores): " + "; ".join(
        f"{lab} {t['seconds']:.0f} ({t.get('v_s', 0):.0f} / {t.get('lissa_s', 0):.0f} / {t.get('scores_s', 0):.0f})"
        for lab, t in timing.items()) + ".", "",
        f"## Spearman correlation of the influence scores ({agree['n_eligible']} eligible users)", "",
        f"`<name> seed {args.seed2}`: the same checkpoint, another influence seed (negatives or masks, LiSSA "
        "samples); `<name> expected`: expected negatives (seed-free).", "", *matrix(agree["spearman"]), "",
        "Top-10 % overlap (share of the 10 % highest-scored users that both scores put there):", "",
        *matrix(agree["top10_overlap"], "{:.2f}")]
    for key, title in (("dealrec", "DEALRec selections (λ 0.3, effort of the first N users)"),
                       ("influence_only", "Influence-only selections among all users (λ 0, no effort)")):
        sel = agree["selection"].get(key)
        if not sel:
            continue
        lines += ["", f"## {title}: share of the {sel['n']} selected users in common", "",
                  f"Pool: the first {sel['pool_users']} users ({sel['eligible']} eligible); selection seed {args.seed} "
                  f"unless named; `random seed s`: a uniform random selection.", "", *matrix(sel["overlap"])]
    titles = {"dealrec": "DEALRec selections", "influence_only": "influence-only selections"}
    for kind, rows in (sig or {}).items():
        sel = agree["selection"][kind]
        lines += ["", f"## A fresh SASRec trained on the {titles[kind]} only ({sel['n']} users; all test users; "
                  f"mean ± std over seeds {args.sasrec_seeds})", "",
                  "| selection | users | Recall@10 | Recall@20 | NDCG@10 | NDCG@20 |", "|---|---|---|---|---|---|"]
        for lab, r in rows.items():
            cells = " | ".join(f"{r[m]:.4f} ± {r[m + ' std']:.4f}" for m in ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20"))
            lines.append(f"| {lab} | {r['n_users']} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    setup_logging(Path(args.work) / "bench_surrogates.log")
    machine = describe()
    LOG.info("machine: %s", machine)
    data = load_dataset(args.data_dir, args.data_name).subset_users(args.max_users)
    out = Path(args.out)
    work = Path(args.work)
    acc = train(args, data)
    if args.only == "train":
        return 0
    timing_file = work / "timing.json"
    if not timing_file.is_file():
        write_json(timing_file, {"machine": describe(), **interleaved_timing(args, data)})
    for name, t in read_json(timing_file).items():
        if name in acc:
            acc[name]["interleaved"] = t
    pop_file = work / "popularity.json"
    if not pop_file.is_file():
        write_json(pop_file, popularity(data))
    pop = read_json(pop_file)
    scores, timing = influence(args, data)
    if args.only == "influence":
        return 0
    agree = agreement(args, data, scores)
    if args.only == "select":
        write_json(work / "agreement.json", agree)
        return 0
    sig = {}
    for kind, sel in agree["selection"].items():
        sig[kind] = signal(args, kind, sel["selections"], sel["n"],
                           sel["pool_users"] if sel["pool_users"] < data.n_users else None)
    selections = {kind: sel.pop("selections") for kind, sel in agree["selection"].items()}
    write_json(out / "accuracy.json", {"machine": machine, "data": args.data_name, "epochs": args.epochs,
                                       "eval_every": args.eval_every, "seed": args.seed, "surrogates": acc,
                                       "popularity": pop, "influence_timing": timing})
    write_json(out / "agreement.json", {"machine": machine, **agree})
    write_json(out / "selections.json", selections)
    write_json(out / "signal.json", {"machine": machine, "sasrec": dataclasses.asdict(
        StudyConfig.flat(n=args.n).sasrec_config(0)), "rows": sig})
    write_text(args.report, report(args, acc, pop, timing, agree, sig, machine))
    LOG.info("wrote %s", args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
