"""What the surrogate changes: DEALRec with one surrogate's influence against another's, read from
two study record folders of the same data and settings (the paper's Table 4 question).

    python bench/surrogate_choice.py                      # SASRec (`full`) against DCRec (`dcrec`)
    python bench/surrogate_choice.py --a records/study/full --b records/study/dcrec \\
        --a_scores records/study/full/scores/influence.pt --b_scores records/study/dcrec/scores/influence_DCRec.pt

Recomputes nothing; prints Markdown tables and writes ``--out`` (JSON):

1. **Scores**: Spearman correlation of the two influence scores over the eligible users, and the
   share of the top 10 % (and of the top 1,024) that both put there.
2. **Selections**: users in common between two selections of 1,024, averaged over seed pairs —
   within A (same scores, another selection seed), within B, across A and B, and two random
   selections (the chance level).
3. **Signal**: per test user, the B run minus the A run of the same strategy and seed on a signal
   (default SASRec), seeds paired, with the study's variance-component interval
   (:func:`dealrec.study.paired.paired_difference`); each folder's own ``random`` runs beside it.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "code"))

from dealrec.core.files import load_tensor, read_json, write_json  # noqa: E402
from dealrec.data.dataset import load_dataset  # noqa: E402
from dealrec.prune.pipeline import eligible_mask  # noqa: E402
from dealrec.study.paired import metrics_from_ranks, paired_difference  # noqa: E402
from dealrec.study.records import Records  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--a", default=str(REPO / "records/study/full"), help="record folder of surrogate A")
    a("--b", default=str(REPO / "records/study/dcrec"), help="record folder of surrogate B")
    a("--a_name", default="SASRec")
    a("--b_name", default="DCRec")
    a("--a_scores", default=str(REPO / "records/study/full/scores/influence.pt"), help="A's influence scores")
    a("--b_scores", default=str(REPO / "records/study/dcrec/scores/influence_DCRec.pt"), help="B's influence scores")
    a("--data_dir", default=str(REPO / "data"))
    a("--data_name", default="games")
    a("--strategies", nargs="+", default=["dealrec", "influence"])
    a("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    a("--signal", default="sasrec")
    a("--ks", type=int, nargs="+", default=[10, 20])
    a("--out", default=str(REPO / "records/study/dcrec/surrogate_choice.json"))
    return p.parse_args(argv)


def selection(records: Records, strategy: str, seed: int) -> set[int] | None:
    path = records.path("selection", f"{strategy}_s{seed}")
    return set(read_json(path)["indices"]) if path.is_file() else None


def mean_overlap(pairs: list[tuple[set[int], set[int]]]) -> dict:
    shared = [len(x & y) for x, y in pairs]
    return {"pairs": len(pairs), "mean": float(np.mean(shared)) if shared else float("nan"),
            "min": min(shared, default=0), "max": max(shared, default=0)}


def score_agreement(a: np.ndarray, b: np.ndarray, top_n: int) -> dict:
    rho = float(spearmanr(a, b).statistic)
    out = {"spearman": rho, "n_users": len(a)}
    for label, m in (("top10pct", max(1, len(a) // 10)), (f"top{top_n}", top_n)):
        ta, tb = set(np.argsort(-a)[:m].tolist()), set(np.argsort(-b)[:m].tolist())
        out[label] = {"size": m, "shared": len(ta & tb), "chance": m * m / len(a)}
    return out


def signal_values(records: Records, signal: str, strategy: str, seeds, k: int) -> dict[int, dict[str, np.ndarray]]:
    out = {}
    for s in seeds:
        name = f"{strategy}_s{s}"
        path = records.path(signal, name)
        if path.is_file():
            out[s] = metrics_from_ranks(records.hit_ranks(signal, name, read_json(path)), k)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    for flag in ("a", "b", "a_scores", "b_scores"):
        path = Path(getattr(args, flag))
        if not (path.is_dir() if flag in ("a", "b") else path.is_file()):
            raise SystemExit(f"--{flag}: {path} does not exist (a study record folder for --a/--b, "
                             "an influence score file for --a_scores/--b_scores)")
    ra, rb = Records(args.a), Records(args.b)
    names = (args.a_name, args.b_name)
    data = load_dataset(args.data_dir, args.data_name)
    elig = eligible_mask(data).numpy()
    sa, sb = (load_tensor(f).numpy()[elig] for f in (args.a_scores, args.b_scores))
    result: dict = {"a": {"name": names[0], "records": args.a, "scores": args.a_scores},
                    "b": {"name": names[1], "records": args.b, "scores": args.b_scores},
                    "scores": score_agreement(sa, sb, 1024), "selections": {}, "signal": {}}
    sc = result["scores"]
    print(f"## Influence scores, {names[0]} vs {names[1]} ({sc['n_users']:,} eligible users)\n")
    print(f"Spearman {sc['spearman']:.3f}; top 10 %: {sc['top10pct']['shared']} of {sc['top10pct']['size']} shared "
          f"(chance {sc['top10pct']['chance']:.0f}); top 1,024: {sc['top1024']['shared']} (chance "
          f"{sc['top1024']['chance']:.0f})\n")

    print("## Selections of 1,024: users in common (mean over seed pairs; min–max)\n")
    print(f"| strategy | within {names[0]} | within {names[1]} | {names[0]} × {names[1]} | random × random |")
    print("|---|---|---|---|---|")
    rand = [x for x in (selection(ra, "random", s) for s in args.seeds) if x is not None]
    chance = mean_overlap(list(itertools.combinations(rand, 2)))
    for strategy in args.strategies:
        sel_a = {s: x for s in args.seeds if (x := selection(ra, strategy, s)) is not None}
        sel_b = {s: x for s in args.seeds if (x := selection(rb, strategy, s)) is not None}
        row = {"within_a": mean_overlap(list(itertools.combinations(sel_a.values(), 2))),
               "within_b": mean_overlap(list(itertools.combinations(sel_b.values(), 2))),
               "across": mean_overlap([(x, y) for x in sel_a.values() for y in sel_b.values()]),
               "random": chance}
        result["selections"][strategy] = row
        cells = " | ".join(f"{r['mean']:.0f} ({r['min']}–{r['max']})" for r in row.values())
        print(f"| {strategy} | {cells} |")

    print(f"\n## {args.signal} signal: {names[1]} minus {names[0]}, seeds {args.seeds} paired, per test user\n")
    print("| strategy | metric | " + names[0] + " | " + names[1] + " | difference (95 % interval) | seed std |")
    print("|---|---|---|---|---|---|")
    users = [read_json(r.root / "users" / f"{args.signal}.json")["users_key"] for r in (ra, rb)]
    if users[0] != users[1]:
        raise SystemExit(f"{args.a} and {args.b} evaluated the {args.signal} signal on different test users; "
                         "nothing to pair")
    for strategy in [*args.strategies, "random"]:
        for k in args.ks:
            va = signal_values(ra, args.signal, strategy, args.seeds, k)
            vb = signal_values(rb, args.signal, strategy, args.seeds, k)
            if not (set(va) & set(vb)):
                continue
            for metric in ("Recall", "NDCG"):
                r = paired_difference({s: v[metric] for s, v in vb.items()}, {s: v[metric] for s, v in va.items()})
                mean_b = r["baseline_mean"] + r["mean"]
                result["signal"][f"{strategy} {metric}@{k}"] = r
                print(f"| {strategy} | {metric}@{k} | {r['baseline_mean']:.4f} | {mean_b:.4f} | "
                      f"{r['mean']:+.4f} ({r['low']:+.4f} … {r['high']:+.4f}) | {r['seed_std']:.4f} |")
    write_json(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
