"""Semantic IDs: residual k-means codes, the collision level, the token layout and the cache."""

from __future__ import annotations

import pytest
import torch

from dealrec.core.files import read_json
from dealrec.tiger import semantic_ids as sid
from dealrec.tiger.semantic_ids import (
    FIRST_CODE,
    QuantizerConfig,
    add_collision_level,
    build_semantic_ids,
    code_stats,
    kmeans,
    quantize,
)


def _embeddings(n: int = 60, dim: int = 12, seed: int = 0) -> torch.Tensor:
    emb = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    emb[1] = emb[2] = emb[7] = emb[0]  # same title, same embedding: four items with one tuple
    emb[10] = emb[11]
    return emb


@pytest.mark.parametrize("levels,size", [(1, 4), (2, 4), (3, 8)])
def test_every_item_gets_a_unique_tuple(levels, size):
    ids = quantize(_embeddings(), QuantizerConfig(levels=levels, codebook_size=size), seed=0)
    rows = [tuple(r) for r in ids.codes.tolist()]
    assert len(set(rows)) == len(rows) == 60
    assert ids.depth == levels + 1
    assert (ids.codes >= 0).all()
    for lv, s in enumerate(ids.level_sizes):
        assert int(ids.codes[:, lv].max()) < s
    # duplicate embeddings share every code but the last, which counts them in item order
    assert ids.codes[[0, 1, 2, 7], :-1].unique(dim=0).shape[0] == 1
    assert ids.codes[0, -1] < ids.codes[1, -1] < ids.codes[2, -1] < ids.codes[7, -1]


def test_collision_level_and_stats_by_hand():
    codes = torch.tensor([[0, 1], [0, 1], [2, 0], [0, 1], [2, 1]])
    full = add_collision_level(codes)
    assert full[:, -1].tolist() == [0, 1, 0, 2, 0]
    stats = code_stats(full, [4, 4, 3])
    assert stats["usage"] == ["2/4", "2/4", "3/3"]
    assert stats["colliding_items"] == 3 and stats["collision_groups"] == 1 and stats["max_extra_index"] == 2
    assert stats["distinct_prefixes"] == 3


def test_tokens_lie_in_disjoint_blocks_per_level():
    ids = quantize(_embeddings(), QuantizerConfig(levels=2, codebook_size=5), seed=1)
    tok = ids.tokens
    assert int(tok.min()) >= FIRST_CODE and int(tok.max()) < ids.vocab_size
    ends = FIRST_CODE + torch.cumsum(torch.tensor(ids.level_sizes), 0)
    starts = ids.offsets
    for lv in range(ids.depth):
        assert ((tok[:, lv] >= starts[lv]) & (tok[:, lv] < ends[lv])).all()


def test_same_seed_same_codes_and_kmeans_on_duplicates():
    emb = _embeddings()
    cfg = QuantizerConfig(levels=2, codebook_size=6)
    assert torch.equal(quantize(emb, cfg, seed=3).codes, quantize(emb, cfg, seed=3).codes)
    same = torch.ones(5, 3)  # every point equal: k-means++ must not divide by a zero distance
    c = kmeans(same, 4, 5, torch.Generator().manual_seed(0))
    assert c.shape == (4, 3) and torch.isfinite(c).all()
    assert kmeans(torch.randn(3, 2), 10, 5, torch.Generator().manual_seed(0)).shape == (3, 2)


def test_cache_writes_a_manifest_and_is_reused(tmp_path, monkeypatch):
    emb = _embeddings()
    cfg = QuantizerConfig(levels=2, codebook_size=4)
    first = build_semantic_ids(emb, cfg, 0, tmp_path, "tiny")
    files = sorted((tmp_path / "tiger" / "semantic_ids").glob("tiny-*.pt"))
    assert len(files) == 1
    manifest = read_json(files[0].with_name(files[0].name + ".json"))
    assert manifest["params"]["seed"] == 0 and manifest["params"]["codebook_size"] == 4
    assert manifest["colliding_items"] >= 4 and manifest["usage"][0].endswith("/4")

    def fail(*a, **k):
        raise AssertionError("the cached IDs should have been reused")

    monkeypatch.setattr(sid, "quantize", fail)
    again = build_semantic_ids(emb, cfg, 0, tmp_path, "tiny")
    assert torch.equal(again.codes, first.codes) and again.level_sizes == first.level_sizes
    monkeypatch.undo()
    other = build_semantic_ids(emb, cfg, 1, tmp_path, "tiny")  # another seed: another entry
    assert len(list((tmp_path / "tiger" / "semantic_ids").glob("tiny-*.pt"))) == 2
    assert len({tuple(r) for r in other.codes.tolist()}) == 60


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="--codebook_size"):
        quantize(_embeddings(), QuantizerConfig(codebook_size=1))
    with pytest.raises(ValueError, match=r"\[items, dim\]"):
        quantize(torch.randn(5), QuantizerConfig())
