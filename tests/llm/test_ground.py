"""Grounding and scoring: hand-computed metrics, L2 ranking, padded embeddings, bad inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dealrec.core.files import read_json, write_json
from dealrec.data.dataset import DataError, RecData
from dealrec.llm import ground
from dealrec.llm import model as llm
from dealrec.llm.ground import (
    embed_texts,
    evaluate_results,
    hits_path,
    item_embeddings,
    metrics_path,
    rank_items,
)
from dealrec.metrics import topk_metrics
from dealrec.study.paired import metrics_from_ranks

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


def log2r(r: int) -> float:
    """Discount of 0-based rank r."""
    return 1 / math.log2(r + 2)


def test_rank_and_metrics_by_hand():
    """Five items on a line; items 1 and 2 share a title (same embedding); K=10 > 5 items."""
    pos = torch.tensor([0.0, 10.0, 10.0, 20.0, 30.0])
    items = torch.stack([pos, torch.zeros(5)], 1)
    gens = torch.tensor([[11.0, 0.0], [29.0, 0.0], [-1.0, 0.0]])
    ranked = rank_items(gens, items, k=10)
    # ties (the duplicate title) go to the lower item id; K > #items gives all 5 items
    assert ranked.tolist() == [[1, 2, 3, 0, 4], [4, 3, 1, 2, 0], [0, 1, 2, 3, 4]]
    # user 0 wants item 2 (the duplicate, rank 1); user 1 wants items 3 and 0 (ranks 1 and 4);
    # user 2 wants item 0 (rank 0)
    targets = [[2], [3, 0], [0]]
    m = topk_metrics(ranked.numpy(), targets, ks=(1, 3, 10))
    expect = {
        "Precision": [1 / 3, (1 / 3 + 1 / 3 + 1 / 3) / 3, (1 / 10 + 2 / 10 + 1 / 10) / 3],
        "Recall": [1 / 3, (1 + 1 / 2 + 1) / 3, 1.0],
        "NDCG": [
            1 / 3,
            (log2r(1) + log2r(1) / (1 + log2r(1)) + 1) / 3,
            (log2r(1) + (log2r(1) + log2r(4)) / (1 + log2r(1)) + 1) / 3,
        ],
        "MRR": [1 / 3, (1 / 2 + 1 / 2 + 1) / 3, (1 / 2 + 1 / 2 + 1) / 3],
    }
    for name, values in expect.items():
        assert m[name] == pytest.approx(values, abs=1e-12), name
    assert m["n_users"] == 3


def test_bad_embed_layout_is_named_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="--embed_layout must be one of tree, padded, got 'trie'"):
        evaluate_results(tmp_path / "missing.json", None, layout="trie")


def test_rank_items_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    gen, items = torch.randn(7, 16, generator=g), torch.randn(50, 16, generator=g)
    got = rank_items(gen, items, k=10, chunk=3)
    dist = ((gen[:, None, :] - items[None, :, :]) ** 2).sum(-1)
    brute = [sorted(range(50), key=lambda j, i=i: float(dist[i, j]))[:10] for i in range(7)]
    assert got.tolist() == brute
    assert rank_items(gen, items[:4], k=10).shape == (7, 4)


# ---------------------------------------------------------------------- with the embedded LLM





@pytest.mark.slow
def test_left_padded_and_tree_embeddings_equal_single(model, tok, monkeypatch):
    texts = ["Halo 3 - Xbox 360", "", "The Legend of Zelda: Breath of the Wild - Nintendo Switch", "Tetris",
             "Halo 3 - Xbox 360 Limited Edition", "The Legend of Zelda: Ocarina of Time", "Halo", *TITLES]
    batched = embed_texts(model, tok, texts, batch_size=4, progress=False, layout="padded")
    singles = torch.cat([embed_texts(model, tok, [t], progress=False, layout="padded") for t in texts])
    torch.testing.assert_close(batched, singles, atol=1e-3, rtol=1e-4)
    monkeypatch.setattr(ground, "TREE_ROW", 16)  # rows that split the titles' trie
    monkeypatch.setattr(ground, "TREE_TOKENS", 32)
    tree = embed_texts(model, tok, texts, progress=False)  # the default layout
    torch.testing.assert_close(tree, singles, atol=1e-3, rtol=1e-4)
    # the reference: an unpadded forward pass, last position of the last layer
    with torch.no_grad():
        ids = tok(texts[2], return_tensors="pt")
        ref = model(**ids, output_hidden_states=True).hidden_states[-1][0, -1]
    torch.testing.assert_close(batched[2], ref, atol=1e-3, rtol=1e-4)
    # the empty text is embedded as the EOS token
    eos = torch.tensor([[tok.eos_token_id]])
    with torch.no_grad():
        ref_eos = model(input_ids=eos, output_hidden_states=True).hidden_states[-1][0, -1]
    torch.testing.assert_close(batched[1], ref_eos, atol=1e-3, rtol=1e-4)


TITLES = [
    "Halo 3 - Xbox 360",
    "Mario Kart 8 Deluxe - Nintendo Switch",
    "Mario Kart 8 Deluxe - Nintendo Switch",  # a duplicate title, as 814 Games items have
    "Tetris Effect - PlayStation 4",
    "Logitech G502 Gaming Mouse",
    "Minecraft - Xbox One",
]


def tiny_data(tmp_path) -> RecData:
    return RecData(
        "tiny", tmp_path,
        train=[[0, 1], [3, 4], [5, 0], [1]],
        valid=[[3], [], [], []],
        test=[[5], [2, 4], [3], []],
        titles=list(TITLES),
    )


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """Item embeddings cached under tmp (the model itself was loaded before)."""
    monkeypatch.setattr(llm, "cache_dir", lambda: tmp_path / "cache")
    return tmp_path / "cache"


@pytest.mark.slow
def test_evaluate_end_to_end(model, tok, tmp_path, cache):
    data = tiny_data(tmp_path)
    rows = [
        {"predict": "Minecraft - Xbox One", "output": [TITLES[5]], "user": 0, "target_ids": [5]},
        {"predict": TITLES[2], "output": [TITLES[2], TITLES[4]], "user": 1, "target_ids": [2, 4]},
        {"predict": "", "output": [TITLES[3]], "user": 2, "target_ids": [3]},
    ]
    result = tmp_path / "results" / "0_4.json"
    write_json(result, rows)
    rep = evaluate_results(result, data, None, ks=(1, 2, 10), model=model, tokenizer=tok, progress=False)
    per_user = rep.pop("per_user")
    assert rep == read_json(metrics_path(result))  # the metrics file holds the aggregate only: no per-user data
    assert per_user == read_json(hits_path(result)) and hits_path(result).name == "0_4.hits.json"
    assert per_user["users"] == [0, 1, 2] and per_user["ks"] == [1, 2, 10]
    # user 0: its target at rank 0; user 1: targets 2 and 4 (2 at rank 1, see below); 6 items: all ranked
    assert per_user["hit_ranks"][0] == [0] and per_user["hit_ranks"][1][0] == 1
    assert all(0 <= r < 6 for u in per_user["hit_ranks"] for r in u)
    for i, k in enumerate(rep["ks"]):
        m = metrics_from_ranks(per_user["hit_ranks"], k)
        assert np.mean(m["Recall"]) == pytest.approx(rep["Recall"][i], abs=1e-12)
        assert np.mean(m["NDCG"]) == pytest.approx(rep["NDCG"][i], abs=1e-12)
    assert metrics_path(result).name == "0_4.metrics.json"
    assert rep["n_predictions"] == 3 and rep["n_empty"] == 1 and rep["n_users"] == 3
    assert rep["exact_title_share"] == pytest.approx(2 / 3)
    assert rep["ks"] == [1, 2, 10] and rep["n_items_ranked"] == 6
    assert rep["embed_layout"] == "tree" and rep["precision"] == "fp32"
    # user 0 generated its target's title: rank 0. User 1 generated the duplicate title of its
    # target 2: items 1 and 2 tie at distance 0, item 1 (lower id) first, so target 2 is at rank 1.
    ranked = rank_items(embed_texts(model, tok, [r["predict"] for r in rows], progress=False),
                        item_embeddings(None, data, model, tok, progress=False), 10)
    assert ranked[0, 0] == 5 and ranked[1, :2].tolist() == [1, 2]
    assert rep["Recall"][2] == pytest.approx(1.0)  # K=10 > 6 items: every target is found
    r1 = (1 + 0 + (1 if ranked[2, 0] == 3 else 0)) / 3
    assert rep["Recall"][0] == pytest.approx(r1)
    assert rep["MRR"][1] >= (1 + 0.5) / 3 - 1e-12
    # the item embeddings were cached and are reused without the model
    assert len(list((cache / "embeddings").glob("tiny-*.pt"))) == 1
    reused = item_embeddings(None, data, model=None, tokenizer=None, progress=False)
    assert reused.shape == (6, model.config.hidden_size)


@pytest.mark.slow
def test_restricted_catalogue_keeps_targets(model, tok, tmp_path, cache):
    data = tiny_data(tmp_path)
    write_json(tmp_path / "r.json", [{"predict": TITLES[5], "user": 0, "target_ids": [5], "output": []}])
    rep = evaluate_results(tmp_path / "r.json", data, ks=(1,), max_items=2, model=model, tokenizer=tok,
                           progress=False)
    assert rep["n_items_ranked"] == 3 and "restricted" in rep["catalogue"]
    assert rep["Recall"] == [1.0]


def test_bad_result_files(tmp_path):
    data = tiny_data(tmp_path)
    f = tmp_path / "r.json"
    with pytest.raises(FileNotFoundError, match="inference"):
        ground.read_results(f, data)
    write_json(f, [])
    with pytest.raises(DataError, match="no predictions"):
        ground.read_results(f, data)
    write_json(f, [{"predict": "x", "output": ["y"]}])  # an original-code result file
    with pytest.raises(DataError, match="target_ids"):
        ground.read_results(f, data)
    write_json(f, [{"output": ["y"], "target_ids": [1]}])
    with pytest.raises(DataError, match="predict"):
        ground.read_results(f, data)
    write_json(f, [{"predict": "x", "target_ids": [99]}])
    with pytest.raises(DataError, match="outside"):
        ground.read_results(f, data)
    write_json(f, [{"predict": "x", "user": 1, "target_ids": [5]}])  # user 1's test items are [2, 4]
    with pytest.raises(DataError, match="another data set"):
        ground.read_results(f, data)


def test_unknown_base_model(tmp_path):
    data = tiny_data(tmp_path)
    write_json(tmp_path / "r.json", [{"predict": "x", "user": 0, "target_ids": [5]}])
    with pytest.raises(llm.ModelError, match="no such directory"):
        evaluate_results(tmp_path / "r.json", data, base_model=str(tmp_path / "no-model"), progress=False)
