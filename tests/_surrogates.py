"""Helpers shared by the surrogate suites (tests/surrogate/test_surrogate_models.py and test_surrogate_batching.py,
tests/scores/test_influence.py): the registered surrogates' names, tiny random models and synthetic histories."""

from __future__ import annotations

import torch
from torch import nn

from dealrec.data.dataset import RecData
from dealrec.metrics import topk_from_scores, topk_metrics
from dealrec.surrogate import SURROGATES, build_surrogate, surrogate_spec

# The registered surrogates that the shared parametrized checks hold for (SASRec, BERT4Rec,
# GRU4Rec). DCRec is left out: its model needs item graphs built from training data (the shared
# checks build models without any), and none of its parameters makes every per-sample loss convex
# (the attention fusion and the cosine contrastive terms), which the LiSSA/CG checks need;
# tests/surrogate/test_dcrec.py has DCRec's own versions of the checks that apply to it.
NOT_SHARED = ("DCRec",)
SURROGATE_NAMES = tuple(name for name in SURROGATES if name not in NOT_SHARED)
N_ITEMS, MAX_LEN = 12, 10


def tiny(name: str, seed: int = 0, n_items: int = N_ITEMS, **kw) -> nn.Module:
    """A small random model in eval mode (dropout off), with non-trivial biases and norms."""
    cfg = surrogate_spec(name).config(hidden_size=8, max_seq_length=MAX_LEN, seed=seed, dropout=0.0, **kw)
    model = build_surrogate(name, n_items, cfg)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "LayerNorm" in pname or pname.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            elif "embeddings" in pname or pname == "mask_embedding":
                p.mul_(15.0)  # initializer 0.02 -> 0.3: logits far from 0, a non-trivial loss surface
    return model.eval()


def make_train(n_users: int = 40, n_items: int = N_ITEMS, seed: int = 0, longest: int = 14) -> list[list[int]]:
    """``n_users`` random 0-based histories, three of them too short to be eligible (lengths 0, 1, 2);
    the others hold 3 to ``longest`` items (14 items: inputs cut to the last MAX_LEN)."""
    g = torch.Generator().manual_seed(seed)
    train = [[], [3], [1, 2]]  # ineligible: lengths 0, 1, 2
    while len(train) < n_users:
        n = int(torch.randint(3, longest + 1, (1,), generator=g))
        train.append(torch.randint(0, n_items, (n,), generator=g).tolist())
    order = torch.randperm(n_users, generator=g).tolist()
    return [train[i] for i in order]


def popularity_recall(data: RecData, ev, ks) -> list[float]:
    """Recall@ks of ranking every item by its training count (the user's train items masked)."""
    counts = torch.zeros(data.n_items + 1)
    for seq in data.train:
        for i in seq:
            counts[i + 1] += 1
    scores = counts[None].repeat(len(ev.users), 1)
    exclude = torch.zeros_like(scores, dtype=torch.bool)
    exclude[:, 0] = True
    for r, seen in enumerate(ev.exclude):
        exclude[r, seen] = True
    return topk_metrics(topk_from_scores(scores, max(ks), exclude), ev.targets, ks)["Recall"]
