"""Influence-stage benchmark on Games (issue: scoring ≥ 50× the per-sample loop; stage < 2 min).

    python bench/bench_influence.py [--n 2000] [--surrogate code/prune/scores/games/surrogate.pt]

Prints, in one process: the per-sample phase done the original way (a loop of single-sample
backward passes on untrimmed length-50 inputs, then ⟨h, ∇L(s)⟩) against the batched
forward-mode pass on the same samples; LiSSA seconds per step (ours vs the original's untrimmed
single-sample double backward); seconds per surrogate epoch and per evaluation; and the whole
influence stage on all users for both negative modes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dealrec.data.dataset import load_dataset
from dealrec.scores.influence import InfluenceConfig, InfluenceProblem, influence_scores
from dealrec.surrogate import SurrogateConfig, build_surrogate
from dealrec.surrogate.loss import batch_loss
from dealrec.surrogate.samples import build_samples, sample_negatives
from dealrec.surrogate.trainer import eval_sets, evaluate

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data_dir", default=str(REPO / "data"))
    p.add_argument("--n", type=int, default=2000, help="samples in the per-sample comparison")
    p.add_argument("--surrogate", default=str(REPO / "code/prune/scores/games/surrogate.pt"))
    p.add_argument("--skip_stage", action="store_true", help="skip the whole-stage runs")
    a = p.parse_args()
    data = load_dataset(a.data_dir, "games")
    model = build_surrogate("SASRec", data.n_items, SurrogateConfig())
    if Path(a.surrogate).is_file():
        model.load_state_dict(torch.load(a.surrogate, weights_only=True))
        print(f"surrogate: {a.surrogate}")
    else:
        print("surrogate: random initialisation (timings do not depend on the weights)")
    samples = build_samples(data.train, data.n_items)
    rows = []

    # surrogate epoch and evaluation
    train_model = build_surrogate("SASRec", data.n_items, SurrogateConfig())
    opt = torch.optim.Adam(train_model.parameters(), lr=1e-3)
    t = time.perf_counter()
    neg = sample_negatives(samples, torch.Generator().manual_seed(0))
    order = torch.randperm(len(samples))
    train_model.train()
    for s in range(0, len(order), 500):
        idx = order[s:s + 500]
        loss = batch_loss(train_model, samples.input_ids[idx], samples.target_pos[idx], neg[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    rows.append(("surrogate epoch (49,156 users, batch 500)", time.perf_counter() - t, "s"))
    valid, _ = eval_sets(data)
    t = time.perf_counter()
    evaluate(model, valid)
    rows.append(("full-ranking evaluation (9,609 valid users)", time.perf_counter() - t, "s"))

    prob = InfluenceProblem(model, samples, InfluenceConfig())
    key = prob.cfg.params[0]
    h = {key: torch.randn_like(prob.params[key])}
    idx = prob.eligible.nonzero(as_tuple=True)[0][: a.n]

    t = time.perf_counter()
    g = prob.per_sample_grads(idx.tolist(), trim=False)
    loop_scores = (g[key] * h[key]).flatten(1).sum(1)
    t_loop = time.perf_counter() - t

    sub = InfluenceProblem(model, samples.rows(idx), InfluenceConfig())
    sub.neg = prob.neg[idx]
    t = time.perf_counter()
    fast = sub.scores(h)
    t_fast = time.perf_counter() - t
    err = float((fast - loop_scores).abs().max() / loop_scores.abs().max())
    rows.append((f"per-sample phase, original loop ({len(idx)} samples)", t_loop, "s"))
    rows.append((f"per-sample phase, batched jvp ({len(idx)} samples)", t_fast, "s"))
    rows.append(("  speed-up", t_loop / t_fast, "x"))
    rows.append(("  max relative difference", err, ""))

    steps = 200
    pool = idx[torch.randint(len(idx), (steps,))]
    t = time.perf_counter()
    for i in pool:
        prob.hvp(i.view(1), h)
    t_ours = (time.perf_counter() - t) / steps

    def hvp_untrimmed(i: torch.Tensor) -> None:
        p = prob._leaf_params()
        sums, counts = prob.terms(p, i.view(1), trim=False)
        (gk,) = torch.autograd.grad((sums / counts).sum(), [p[key]], create_graph=True)
        torch.autograd.grad((gk * h[key]).sum(), [p[key]])

    t = time.perf_counter()
    for i in pool:
        hvp_untrimmed(i)
    t_orig = (time.perf_counter() - t) / steps
    rows.append(("LiSSA step, original (untrimmed)", t_orig * 1000, "ms"))
    rows.append(("LiSSA step, ours (trimmed)", t_ours * 1000, "ms"))
    rows.append(("  speed-up", t_orig / t_ours, "x"))

    if not a.skip_stage:
        for mode in ("sampled", "expected"):
            t = time.perf_counter()
            res = influence_scores(model, samples, InfluenceConfig(negatives=mode))
            rows.append((f"whole influence stage, {mode} negatives, all users, depth 5000", time.perf_counter() - t, "s"))
            rows.append(("  (v / LiSSA / scores)", " / ".join(f"{res.timing[k]:.1f}" for k in ("v_s", "lissa_s", "scores_s")), "s"))

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, value, unit in rows:
        v = f"{value:.3g}" if isinstance(value, float) else str(value)
        print(f"{name:<62s} {v:>12s} {unit}")


if __name__ == "__main__":
    main()
