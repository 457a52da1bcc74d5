"""Surrogate-training benchmark on Games: the original padded epoch vs exact length-split batches.

    python bench/bench_surrogate.py [--batches 30] [--epochs20] [--compile]

Prints, in one process, on the same model and the same random batches: seconds per epoch of the
padded path (every batch of 500 users at 50 positions, the original) and of the split path
(length buckets trimmed to their own longest row, one normalisation, one optimiser step), their
ratio, the gradient agreement of both paths with dropout off, negative sampling (reference vs
fast, identical draws), full-ranking evaluation (padded vs trimmed), and the bucket-overhead
sweep. ``--epochs20``: 20 epochs with 4 evaluations of the new trainer on all users, and the
validation Recall@20 (the accuracy check). ``--compile``: the split step under torch.compile.
``--dcrec_views``: DCRec's training step with the item graph views computed once per batch
(:meth:`DCRecObjective.batch_terms`) against once per length bucket (the per-sample loss's own
views), alternating batch by batch on one model, and their loss and gradient agreement with graph
dropout off.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dealrec.core.hardware import describe
from dealrec.data.dataset import load_dataset
from dealrec.surrogate import DCREC, SurrogateConfig, build_surrogate
from dealrec.surrogate.dcrec_loss import dcrec_loss_terms
from dealrec.surrogate.loss import batch_loss, split_batch_loss
from dealrec.surrogate.samples import build_samples, sample_negatives, sample_negatives_reference
from dealrec.surrogate.trainer import eval_sets, evaluate, train_surrogate

REPO = Path(__file__).resolve().parents[1]


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def max_relative_difference(ga, gb) -> float:
    """max over tensors of ‖a − b‖ / ‖a‖ (tensors with ‖a‖ ≤ 1e-9, or no gradient, left out)."""
    return max(float((x - y).norm() / x.norm().clamp(min=1e-30)) for x, y in zip(ga, gb)
               if x is not None and x.norm() > 1e-9)


def print_rows(rows: list[tuple[str, object, str]]) -> None:
    print(f"\n{describe()}")
    for name, value, unit in rows:
        v = f"{value:.3g}" if isinstance(value, float) else str(value)
        print(f"{name:<70s} {v:>16s} {unit}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data_dir", default=str(REPO / "data"))
    p.add_argument("--batches", type=int, default=30, help="batches of 500 timed per path (scaled to an epoch)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--epochs20", action="store_true", help="also train 20 epochs (4 evaluations) with the new path")
    p.add_argument("--seeds", default="0", help="seeds for --epochs20, comma-separated")
    p.add_argument("--batching", default="split", help="paths for --epochs20: split,padded")
    p.add_argument("--only_epochs20", action="store_true", help="skip the per-step comparisons")
    p.add_argument("--compile", action="store_true", help="also time the split step under torch.compile")
    p.add_argument("--dcrec_views", type=int, default=0, metavar="N",
                   help="only time DCRec's step with graph views per batch vs per bucket on N batches each")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    data = load_dataset(a.data_dir, "games")
    samples = build_samples(data.train, data.n_items)
    n_batches_epoch = -(-len(samples) // 500)
    rows: list[tuple[str, object, str]] = []
    if a.dcrec_views:  # this comparison alone
        print_rows(dcrec_views(data, samples, a.dcrec_views, n_batches_epoch))
        return

    if not a.only_epochs20:
        ref, t_ref = timed(sample_negatives_reference, samples, torch.Generator().manual_seed(0))
        neg, t_new = timed(sample_negatives, samples, torch.Generator().manual_seed(0))
        rows += [("negatives for all users, reference / fast", f"{t_ref:.2f} / {t_new:.2f}", "s"),
                 ("  speed-up; identical draws", f"{t_ref / t_new:.1f}x; {torch.equal(ref, neg)}", "")]

        # Gradient agreement, dropout off, on one real batch of mixed lengths.
        model = build_surrogate("SASRec", data.n_items, SurrogateConfig()).eval()
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(1))
        idx = order[:500]
        batch = (samples.input_ids[idx], samples.target_pos[idx], neg[idx])
        params = list(model.parameters())
        g_pad = torch.autograd.grad(batch_loss(model, *batch), params)
        g_split = torch.autograd.grad(split_batch_loss(model, *batch), params)
        worst = max_relative_difference(g_pad, g_split)
        rows.append(("gradient, split vs padded batch: max relative L2 difference", f"{worst:.2e}", ""))

        def epoch_time(step, n: int) -> float:
            m = build_surrogate("SASRec", data.n_items, SurrogateConfig()).train()
            opt = torch.optim.Adam(m.parameters(), lr=1e-3)
            for warm in range(2):  # warm-up (allocator, oneDNN primitives)
                i = order[warm * 500:(warm + 1) * 500]
                step(m, opt, i)
            t = time.perf_counter()
            for b in range(n):
                step(m, opt, order[b * 500:(b + 1) * 500])
            return (time.perf_counter() - t) / n * n_batches_epoch + t_new

        def padded_step(m, opt, i):
            loss = batch_loss(m, samples.input_ids[i], samples.target_pos[i], neg[i])
            opt.zero_grad()
            loss.backward()
            opt.step()

        def split_step(m, opt, i, overhead=None):
            kw = {} if overhead is None else {"overhead": overhead}
            loss = split_batch_loss(m, samples.input_ids[i], samples.target_pos[i], neg[i], **kw)
            opt.zero_grad()
            loss.backward()
            opt.step()

        e_pad = epoch_time(padded_step, a.batches)
        e_split = epoch_time(split_step, a.batches)
        rows += [(f"epoch, padded batches (original; {a.batches} batches scaled to {n_batches_epoch})", e_pad, "s"),
                 ("epoch, exact length-split batches", e_split, "s"),
                 ("  speed-up", e_pad / e_split, "x")]
        for ov in (64, 256, 4096):
            def step_ov(m, o, i, ov=ov):
                split_step(m, o, i, ov)

            rows.append((f"  split epoch with bucket overhead {ov}", epoch_time(step_ov, a.batches), "s"))
        if a.compile:
            m = build_surrogate("SASRec", data.n_items, SurrogateConfig()).train()
            cm = torch.compile(m, dynamic=True)
            opt = torch.optim.Adam(m.parameters(), lr=1e-3)
            t = time.perf_counter()
            loss = split_batch_loss(cm, samples.input_ids[idx], samples.target_pos[idx], neg[idx])
            loss.backward()
            rows.append(("  torch.compile: first step (compilation)", time.perf_counter() - t, "s"))
            rows.append(("  torch.compile: split epoch", epoch_time(
                lambda m_, o, i: split_step(cm, opt, i), a.batches), "s"))

        valid, _ = eval_sets(data)
        r_pad, t_pad = timed(evaluate, model, valid, trim=False)
        r_trim, t_trim = timed(evaluate, model, valid)
        rows += [(f"full-ranking evaluation ({len(valid.users):,} valid users), padded / trimmed",
                  f"{t_pad:.2f} / {t_trim:.2f}", "s"),
                 ("  same Recall@5/10/20/50", str(r_pad["Recall"] == r_trim["Recall"]), "")]

    if a.epochs20 or a.only_epochs20:
        for seed in [int(s) for s in a.seeds.split(",")]:
            for batching in a.batching.split(","):
                cfg = SurrogateConfig(epochs=20, eval_every=5, patience=0, seed=seed, batching=batching)
                m = build_surrogate("SASRec", data.n_items, cfg)
                res, t = timed(train_surrogate, m, data, cfg)
                r20 = [h["valid"]["Recall"][2] for h in res.history if "valid" in h]
                rows.append((f"20 epochs + 4 evaluations ({batching}, seed {seed})", t, "s"))
                rows.append(("  valid Recall@20 at epochs 5/10/15/20", " ".join(f"{x:.4f}" for x in r20), ""))
                rows.append(("  best epoch; test Recall@20", f"{res.best_epoch}; {res.test['Recall'][2]:.4f}", ""))
                print(*rows[-3:], sep="\n", flush=True)

    print_rows(rows)


def dcrec_views(data, samples, n: int, n_batches_epoch: int) -> list[tuple[str, object, str]]:
    """DCRec's forward + backward on ``n`` batches of 500 users per path, alternating: the graph
    views once per batch (:meth:`DCRecObjective.batch_loss`) and once per length bucket
    (:func:`split_batch_loss` with the per-sample loss, which computes its own views). The model
    is not stepped, so both paths see the same weights; in training mode each draws its own graph
    dropout. Agreement: loss and gradients of both paths in eval mode (no dropout)."""
    model = build_surrogate("DCRec", data.n_items, SurrogateConfig())
    DCREC.prepare(model, samples)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(1))
    params = [q for q in model.parameters() if q.requires_grad]

    def per_batch(ids, pos):
        return DCREC.batch_loss(model, ids, pos, None)

    def per_bucket(ids, pos):
        return split_batch_loss(model, ids, pos, None, terms=dcrec_loss_terms)

    model.eval()
    i = order[:500]
    loss_b = per_batch(samples.input_ids[i], samples.target_pos[i])
    loss_k = per_bucket(samples.input_ids[i], samples.target_pos[i])
    g_b = torch.autograd.grad(loss_b, params, allow_unused=True)
    g_k = torch.autograd.grad(loss_k, params, allow_unused=True)
    worst = max_relative_difference(g_b, g_k)
    model.train()
    times = {per_batch: [], per_bucket: []}
    for b in range(n + 1):  # batch 0 warms both paths up
        i = order[(b + 1) * 500:(b + 2) * 500]
        for fn in (per_batch, per_bucket) if b % 2 else (per_bucket, per_batch):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            fn(samples.input_ids[i], samples.target_pos[i]).backward()
            if b:
                times[fn].append(time.perf_counter() - t)
    t_b, t_k = (sorted(times[f])[len(times[f]) // 2] for f in (per_batch, per_bucket))
    return [
        ("DCRec batch loss, eval mode: relative difference of the two paths",
         f"{abs((loss_b - loss_k).item()) / loss_k.item():.1e}", ""),
        ("  gradient: max relative L2 difference", f"{worst:.2e}", ""),
        (f"DCRec step (forward + backward), graph views per bucket; median of {n}", t_k, "s"),
        ("DCRec step, graph views once per batch", t_b, "s"),
        ("  speed-up", t_k / t_b, "x"),
        (f"  epoch at that step time ({n_batches_epoch} batches), per bucket / per batch",
         f"{t_k * n_batches_epoch:.0f} / {t_b * n_batches_epoch:.0f}", "s"),
    ]


if __name__ == "__main__":
    main()
