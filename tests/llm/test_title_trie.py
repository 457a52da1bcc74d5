"""Tree layout of the embeddings (dealrec.llm.title_trie): every shared prefix once, equal to the
padded batches and to each text run alone."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from dealrec.llm import ground
from dealrec.llm import title_trie as tree_pack
from dealrec.llm.ground import embed_token_seqs
from dealrec.llm.title_trie import build_trie, layout_rows, row_mask

pytestmark = pytest.mark.usefixtures("one_thread")

PAD = 0


def random_seqs(n: int, seed: int, vocab: int = 6, longest: int = 9) -> list[list[int]]:
    """Many shared prefixes (a small vocabulary), duplicates, single tokens."""
    rng = random.Random(seed)
    seqs = [[rng.randrange(1, vocab) for _ in range(rng.randint(1, longest))] for _ in range(n)]
    return seqs + [list(seqs[0]), seqs[1][:1]]


def test_trie_and_rows_by_hand():
    trie = build_trie([[5, 6, 7], [5, 6], [5, 8], [9], [5, 6, 7]])
    assert trie.n_nodes == 5 and trie.token == [5, 6, 7, 8, 9] and trie.parent == [-1, 0, 1, 0, -1]
    assert trie.end == [2, 1, 3, 4, 2]  # a duplicate ends at the same node, a prefix text inside another
    rows, where = layout_rows(trie, capacity=3)
    # depth first: 5 6 7 | (5) 8 9 — the second row repeats node 5, the parent of its first node
    assert rows == [[0, 1, 2], [0, 3, 4]]
    assert where == {0: (0, 0), 1: (0, 1), 2: (0, 2), 3: (1, 1), 4: (1, 2)}
    mask = row_mask(trie, rows[1], width=4)  # one padding column
    assert mask.tolist() == [[True, False, False, False],
                             [True, True, False, False],
                             [False, False, True, False],
                             [False, False, False, True]]
    with pytest.raises(ValueError, match="capacity 2 < the longest text"):
        layout_rows(trie, capacity=2)
    with pytest.raises(ValueError, match="text 1 has no tokens"):
        build_trie([[1], []])


@pytest.mark.parametrize("capacity", [9, 10, 16, 64])
def test_every_node_sees_exactly_its_ancestors(capacity):
    trie = build_trie(random_seqs(60, seed=capacity))
    rows, where = layout_rows(trie, capacity)
    assert sorted(where) == list(range(trie.n_nodes)) and all(len(r) <= capacity for r in rows)
    for node, (r, c) in where.items():
        row = rows[r]
        assert row[c] == node
        seen = {row[j] for j in torch.nonzero(row_mask(trie, row, len(row))[c]).flatten().tolist()}
        ancestors, p = {node}, trie.parent[node]
        while p >= 0:
            ancestors.add(p)
            p = trie.parent[p]
        assert seen == ancestors


def tiny_llama(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD)
    model = LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation(attn)
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tree_equals_padded_and_single(attn, monkeypatch):
    model = tiny_llama(attn)
    seqs = random_seqs(40, seed=1)
    monkeypatch.setattr(ground, "TREE_ROW", 10)  # rows of 10 tokens, 2 a batch: many rows repeat ancestors
    monkeypatch.setattr(ground, "TREE_TOKENS", 20)
    tree = embed_token_seqs(model, seqs, PAD, progress=False, layout="tree")
    padded = embed_token_seqs(model, seqs, PAD, batch_size=7, progress=False, layout="padded")
    with torch.no_grad():
        single = torch.stack([model.model(input_ids=torch.tensor([s])).last_hidden_state[0, -1] for s in seqs])
    torch.testing.assert_close(tree, single, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded, single, rtol=1e-5, atol=1e-5)
    assert torch.equal(tree[0], tree[-2])  # the duplicate text


def test_other_attention_falls_back_to_padded(monkeypatch):
    model = tiny_llama("sdpa")
    seqs = random_seqs(10, seed=2)
    ref = embed_token_seqs(model, seqs, PAD, progress=False, layout="padded")
    other = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    assert tree_pack.mask_form(other) is None
    monkeypatch.setattr(tree_pack, "mask_form", lambda *a: None)  # as for that implementation
    calls = []
    real = ground._embed_padded
    monkeypatch.setattr(ground, "_embed_padded", lambda *a: calls.append(1) or real(*a))
    got = embed_token_seqs(model, seqs, PAD, progress=False, layout="tree")
    assert calls and torch.equal(got, ref)
    with pytest.raises(ValueError, match="layout must be one of"):
        embed_token_seqs(model, seqs, PAD, layout="packed")


def test_bf16_autocast_is_close_and_cached_apart(tmp_path, monkeypatch):
    from dealrec.data.dataset import RecData
    from dealrec.llm import model as llm

    model = tiny_llama("sdpa")
    seqs = random_seqs(12, seed=3)
    fp32 = embed_token_seqs(model, seqs, PAD, progress=False)
    bf16 = embed_token_seqs(model, seqs, PAD, progress=False, precision="bf16")
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)
    # the title cache keeps one file per precision
    monkeypatch.setattr(llm, "cache_dir", lambda: tmp_path / "cache")
    data = RecData("tiny", tmp_path, train=[[0]], valid=[[]], test=[[1]], titles=["a b", "a c", "d"])

    class Tok:
        eos_token_id, pad_token_id = 1, PAD

        def __call__(self, text):
            return {"input_ids": [2 + "abcd".index(w) for w in text.split()]}

    for precision in ("fp32", "bf16", "fp32"):
        ground.item_embeddings(None, data, model, Tok(), progress=False, precision=precision)
    assert len(list((tmp_path / "cache" / "embeddings").glob("tiny-*.pt"))) == 2
