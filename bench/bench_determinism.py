"""Deterministic kernels on the surrogate stages: cost and reproducibility, in one process.

    python bench/bench_determinism.py [--threads 2] [--users 600] [--epochs 3] [--repeats 2]

Trains SASRec on the first ``--users`` Games users ``--repeats`` times with PyTorch's default
kernels (the undecorated :func:`train_surrogate`) and as many times inside
:func:`deterministic_algorithms` (what the pipeline runs), alternating, and scores influence
(LiSSA, depth 200; a forward pass and gradients with respect to weights, deterministic with either
kernels) with each trained model. Prints the training seconds per run of both modes, their ratio,
and the largest difference between repeats of one mode (weights, influence scores): 0 means the
repeats are bit-identical.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dealrec.core.hardware import describe
from dealrec.data.dataset import load_dataset
from dealrec.scores.influence import InfluenceConfig, influence_scores
from dealrec.surrogate import build_surrogate, surrogate_spec
from dealrec.surrogate.samples import build_samples
from dealrec.surrogate.trainer import train_surrogate

REPO = Path(__file__).resolve().parents[1]
MODES = {"default kernels": train_surrogate.__wrapped__, "deterministic": train_surrogate}


def spread(tensors: list[torch.Tensor]) -> float:
    return max(float((t - tensors[0]).abs().max()) for t in tensors)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default=str(REPO / "data"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--users", type=int, default=600)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data_dir, "games")
    users = list(range(min(args.users, len(data.train))))
    cfg = surrogate_spec("SASRec").config(epochs=args.epochs, eval_every=0)
    samples = build_samples([data.train[u] for u in users], data.n_items, cfg.max_seq_length)
    seconds = dict.fromkeys(MODES, 0.0)
    weights: dict[str, list[torch.Tensor]] = {m: [] for m in MODES}
    scores: dict[str, list[torch.Tensor]] = {m: [] for m in MODES}
    for _ in range(args.repeats):
        for mode, train in MODES.items():
            model = build_surrogate("SASRec", data.n_items, cfg)
            t = time.perf_counter()
            train(model, data, cfg, train_users=users)
            seconds[mode] += time.perf_counter() - t
            weights[mode].append(torch.cat([v.flatten() for v in model.state_dict().values()]))
            scores[mode].append(influence_scores(model, samples, InfluenceConfig(recursion_depth=200)).scores)
    print(f"\n{describe()}; {len(users)} users, {args.epochs} epochs, {args.repeats} repeats per mode")
    print(f"{'mode':<18} {'train s/run':>12} {'weights: max diff':>18} {'scores: max diff':>17}")
    for mode in MODES:
        print(f"{mode:<18} {seconds[mode] / args.repeats:>12.2f} {spread(weights[mode]):>18.3g} "
              f"{spread(scores[mode]):>17.3g}")
    print(f"deterministic / default training time: {seconds['deterministic'] / seconds['default kernels']:.2f}x")


if __name__ == "__main__":
    main()
