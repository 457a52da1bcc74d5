"""The authors' evaluation protocol in bench/bench_dcrec_beauty.py (RecBole's pop100): negatives drawn
by popularity, never the session's own items, and Recall/NDCG of the target's rank among them."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from dealrec.surrogate.samples import build_eval

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_dcrec_beauty.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_dcrec_beauty", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_negatives_follow_popularity_and_avoid_the_session(bench):
    # every interaction = the train rows (history + training target) and the test targets: item 0 has
    # 6, item 1 has 3, item 2 has 1 + 1, items 3 and 4 one each (and belong to the first session)
    train = [[0, 0, 0, 1], [0, 0, 1, 2], [0, 1]]
    history, target = [[3], [0], [1]], [4, 2, 3]
    negs = bench.popularity_negatives(train, history, target, 5, 3000, seed=0)
    assert negs.shape == (3, 3000)
    first = negs[0] - 1  # 0-based; the session holds items 3 and 4
    assert not torch.isin(first, torch.tensor([3, 4])).any()
    counts = torch.bincount(first, minlength=5).double() / 3000
    expected = torch.tensor([6, 3, 2, 0, 0], dtype=torch.float64) / 11
    assert torch.allclose(counts, expected, atol=0.03)
    assert not torch.isin(negs[1] - 1, torch.tensor([0, 2])).any()
    assert torch.equal(negs, bench.popularity_negatives(train, history, target, 5, 3000, seed=0))


class FixedScores(nn.Module):
    """Scores item i (1-based) by item_embeddings[i] · state with state = [1]: the embedding itself."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.item_embeddings = nn.Embedding(len(scores) + 1, 1)
        with torch.no_grad():
            self.item_embeddings.weight[1:, 0] = torch.tensor(scores)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.ones(input_ids.shape[0], input_ids.shape[1], 1)


def test_sampled_metrics_rank_the_target_among_its_negatives(bench):
    model = FixedScores([0.9, 0.1, 0.5, 0.7, 0.3, 0.2])  # items 1..6
    test = build_eval([[0], [1]], [[2], [5]], max_len=4)  # targets: item 3 (0.5), item 6 (0.2)
    negatives = torch.tensor([[1, 4, 5], [2, 5, 5]])  # 0.9 0.7 0.3 | 0.1 0.3 0.3
    m = bench.sampled_metrics(model, test, negatives, "cpu")
    # ranks: 2 (two negatives above 0.5) and 2 (0.3 twice above 0.2)
    assert m["Recall@1"] == 0.0 and m["Recall@5"] == 1.0 and m["Recall@10"] == 1.0
    assert m["NDCG@5"] == pytest.approx(1 / math.log2(4))
