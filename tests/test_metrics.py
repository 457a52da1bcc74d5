"""Top-K metrics against hand-computed numbers, and score masking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dealrec.metrics import format_table, hit_matrix, topk_from_scores, topk_metrics

KS = (1, 3, 5, 10)
L2 = math.log2

# Every ranked list has length 6, so K = 10 is larger than the list.
RANKED = np.array(
    [
        [10, 1, 2, 20, 3, 4],  # A: targets {10, 20} hit at ranks 0 and 3
        [1, 2, 3, 4, 5, 6],  # B: no targets -> skipped
        [1, 2, 3, 4, 5, 6],  # C: target 7, never ranked -> all zeros
        [0, 5, 1, 2, 3, 4],  # D: targets [5, 5] = {5}, hit at rank 1
        [0, 1, 9, 2, 3, 4],  # E: target {9, 8, 30}, first hit at rank 2
    ]
)
TARGETS = [[10, 20], [], [7], [5, 5], [9, 8, 30]]

# Hand computation, K = 1, 3, 5, 10 (DCG discount of rank r is 1/log2(r+2)).
A = {
    # K=1: rank 0 hit -> 1 hit. P = 1/1, R = 1/2, DCG = 1/log2(2) = 1, IDCG (min(2,1)=1 term) = 1.
    # K=3: still 1 hit (rank 3 is outside). P = 1/3, R = 1/2, DCG = 1, IDCG = 1 + 1/log2(3).
    # K=5: 2 hits. P = 2/5, R = 2/2, DCG = 1 + 1/log2(5), IDCG = 1 + 1/log2(3).
    # K=10: 2 hits (list has 6). P = 2/10, R = 1, DCG = 1 + 1/log2(5), IDCG = 1 + 1/log2(3).
    # MRR: first hit at rank 0 -> 1 for every K.
    "Precision": [1.0, 1 / 3, 2 / 5, 2 / 10],
    "Recall": [0.5, 0.5, 1.0, 1.0],
    "NDCG": [1.0, 1 / (1 + 1 / L2(3)), (1 + 1 / L2(5)) / (1 + 1 / L2(3)), (1 + 1 / L2(5)) / (1 + 1 / L2(3))],
    "MRR": [1.0, 1.0, 1.0, 1.0],
}
C = {name: [0.0] * 4 for name in ("Precision", "Recall", "NDCG", "MRR")}
D = {
    # Duplicates ignored: one target. K=1: no hit.
    # K=3,5,10: hit at rank 1. P = 1/K, R = 1/1, DCG = 1/log2(3), IDCG = 1/log2(2) = 1, MRR = 1/2.
    "Precision": [0.0, 1 / 3, 1 / 5, 1 / 10],
    "Recall": [0.0, 1.0, 1.0, 1.0],
    "NDCG": [0.0, 1 / L2(3), 1 / L2(3), 1 / L2(3)],
    "MRR": [0.0, 0.5, 0.5, 0.5],
}
E = {
    # Three targets, only 9 ranked (rank 2). K=1: nothing.
    # K=3: P = 1/3, R = 1/3, DCG = 1/log2(4) = 1/2, IDCG = 1 + 1/log2(3) + 1/log2(4) (min(3,3)=3 terms).
    # K=5, 10: P = 1/K, R = 1/3, same DCG and IDCG (min(3, K) = 3 terms). MRR = 1/3 from K=3 on.
    "Precision": [0.0, 1 / 3, 1 / 5, 1 / 10],
    "Recall": [0.0, 1 / 3, 1 / 3, 1 / 3],
    "NDCG": [0.0] + [0.5 / (1 + 1 / L2(3) + 0.5)] * 3,
    "MRR": [0.0, 1 / 3, 1 / 3, 1 / 3],
}


def check(got: dict, expected: dict) -> None:
    for name, values in expected.items():
        np.testing.assert_allclose(got[name], values, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("row, expected", [(0, A), (2, C), (3, D), (4, E)])
def test_single_users(row, expected):
    got = topk_metrics(RANKED[row: row + 1], [TARGETS[row]], KS)
    check(got, expected)
    assert got["n_users"] == 1


def test_average_skips_users_without_targets():
    got = topk_metrics(RANKED, TARGETS, KS)
    assert got["n_users"] == 4  # B is skipped
    mean = {name: [(A[name][i] + C[name][i] + D[name][i] + E[name][i]) / 4 for i in range(4)] for name in A}
    check(got, mean)
    # e.g. Recall@5 = (1 + 0 + 1 + 1/3) / 4 = 0.58333...
    assert got["Recall"][2] == pytest.approx(7 / 12)
    # MRR@1 = (1 + 0 + 0 + 0) / 4
    assert got["MRR"][0] == pytest.approx(0.25)


def test_torch_input_and_types():
    got = topk_metrics(torch.as_tensor(RANKED), TARGETS, KS)
    check(got, topk_metrics(RANKED, TARGETS, KS))
    assert all(isinstance(v, float) for v in got["Recall"])


def test_k_larger_than_list():
    # One item ranked, K = 50: P = 1/50, R = 1, NDCG = 1, MRR = 1.
    got = topk_metrics(np.array([[3]]), [[3]], (50,))
    check(got, {"Precision": [1 / 50], "Recall": [1.0], "NDCG": [1.0], "MRR": [1.0]})


def test_no_user_with_targets():
    got = topk_metrics(np.zeros((2, 5), dtype=int), [[], []], (1, 5))
    assert got["n_users"] == 0
    assert got["Recall"] == [0.0, 0.0] and got["NDCG"] == [0.0, 0.0]


def test_shape_errors():
    with pytest.raises(ValueError, match="aligned with targets"):
        topk_metrics(RANKED, TARGETS[:3], KS)
    with pytest.raises(ValueError, match="must be"):
        topk_metrics(np.arange(5), [[1]] * 5, KS)


def test_hit_matrix():
    hits = hit_matrix(RANKED[:2], TARGETS[:2])
    assert hits.tolist() == [[True, False, False, True, False, False], [False] * 6]


def test_topk_from_scores_masks_with_minus_inf():
    scores = torch.tensor([[-1.0, -2.0, 5.0, -0.5, -3.0], [0.1, 0.2, 0.3, 0.4, 0.5]])
    exclude = torch.tensor([[False, False, True, False, False], [True, False, False, False, True]])
    top = topk_from_scores(scores, 3, exclude)
    # Row 0: item 2 (score 5) is masked; the best remaining are 3 (-0.5), 0 (-1), 1 (-2).
    # Masking with 0 instead (the original) would have ranked item 2 first, above negative scores.
    assert top.tolist() == [[3, 0, 1], [3, 2, 1]]
    full = topk_from_scores(scores, 5, exclude)
    assert full[0].tolist() == [3, 0, 1, 4, 2]  # masked below the -3.0 score
    assert set(full[1, -2:].tolist()) == {0, 4}
    assert torch.equal(scores[0], torch.tensor([-1.0, -2.0, 5.0, -0.5, -3.0]))  # input untouched


def test_topk_from_scores_k_clamped_and_no_mask():
    scores = torch.tensor([[0.3, 0.1, 0.2]])
    assert topk_from_scores(scores, 10).tolist() == [[0, 2, 1]]


def test_format_table():
    text = format_table(topk_metrics(RANKED, TARGETS, KS), KS)
    lines = text.splitlines()
    assert lines[0].startswith("metric") and "@10" in lines[0]
    assert lines[1].startswith("Recall") and lines[2].startswith("NDCG")


def test_format_table_columns_align_for_long_names():
    """Every value of a column starts where its @K header does, whatever the metric names."""
    names = ("Recall", "NDCG", "Precision", "MRR")
    lines = format_table(topk_metrics(RANKED, TARGETS, KS), KS, names=names).splitlines()
    starts = [lines[0].index(f"@{k}") for k in KS]
    for line, name in zip(lines[1:], names):
        assert line.startswith(name + " ")
        cols = [i for i in range(1, len(line)) if line[i] != " " and line[i - 1] == " "]
        assert cols == starts, (line, lines[0])
