"""The prefix trie and constrained beam search: only valid IDs, and a beam as wide as the catalogue
ranks exactly as scoring every item."""

from __future__ import annotations

import pytest
import torch

from dealrec.tiger.model import ModelConfig, beam_search, build_model, history_inputs, item_log_likelihoods
from dealrec.tiger.semantic_ids import EOS, QuantizerConfig, quantize
from dealrec.tiger.trie import PrefixTrie

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_T5 = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16, dropout=0.0)


def _catalogue(n: int = 40, seed: int = 0, levels: int = 2, size: int = 4):
    emb = torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
    emb[3] = emb[4] = emb[5]  # colliding items
    return quantize(emb, QuantizerConfig(levels=levels, codebook_size=size), seed=seed)


def _histories(n_items: int, n: int = 12, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(n_items, (int(torch.randint(0, 6, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_trie_allows_only_valid_continuations():
    trie = PrefixTrie([[2, 6, 10], [2, 6, 11], [2, 7, 10], [3, 6, 10]])
    assert trie.depth == 3 and len(trie) == 4
    assert trie.allowed([]) == [2, 3]
    assert trie.allowed([2]) == [6, 7]
    assert trie.allowed([2, 6]) == [10, 11]
    assert trie.allowed([3, 6]) == [10]
    assert trie.allowed([3, 7]) == [EOS]  # a prefix of no item
    assert trie.allowed([2, 6, 10]) == [EOS]  # complete
    assert trie.item([2, 7, 10]) == 2 and trie.item([2, 7, 11]) is None
    fn = trie.prefix_allowed_tokens_fn()
    assert fn(0, torch.tensor([0, 2])) == [6, 7]  # the decoder start token is not part of the prefix
    with pytest.raises(ValueError, match="same ID"):
        PrefixTrie([[2, 6], [2, 6]])
    with pytest.raises(ValueError, match="same number"):
        PrefixTrie([[2, 6], [2, 6, 7]])


def test_every_generated_sequence_is_a_valid_item():
    ids = _catalogue()
    trie = PrefixTrie(ids.tokens)
    model = build_model(ids.vocab_size, TINY_T5, seed=1)
    hist = _histories(40)
    x, mask = history_inputs(hist, ids.tokens, 20)
    out = model.generate(input_ids=x, attention_mask=mask, num_beams=6, num_return_sequences=6,
                         max_new_tokens=trie.depth, do_sample=False,
                         prefix_allowed_tokens_fn=trie.prefix_allowed_tokens_fn())
    for seq in out[:, 1:].tolist():
        assert trie.item(seq) is not None, seq
    ranked = beam_search(model, x, mask, trie, num_beams=6)
    assert all(len(r) == 6 and len({i for i, _ in r}) == 6 for r in ranked)
    assert all(0 <= i < 40 for r in ranked for i, _ in r)


@pytest.mark.parametrize("n_items,levels,size,n_users", [
    (40, 2, 4, 8),
    pytest.param(1000, 3, 12, 16, marks=pytest.mark.slow),
])
def test_beam_as_wide_as_the_catalogue_equals_exhaustive_scoring(n_items, levels, size, n_users):
    """The reference: with beams = items, the beam keeps every valid prefix at every level, so its
    ranked list is every item sorted by log p(ID | history), as scoring each item teacher-forced."""
    ids = _catalogue(n_items, levels=levels, size=size)
    trie = PrefixTrie(ids.tokens)
    model = build_model(ids.vocab_size, TINY_T5, seed=2)
    hist = _histories(n_items, n=n_users, seed=1)
    x, mask = history_inputs(hist, ids.tokens, 20)
    exhaustive = item_log_likelihoods(model, x, mask, ids.tokens)
    ranked = beam_search(model, x, mask, trie, num_beams=n_items)
    for u in range(len(hist)):
        got = [i for i, _ in ranked[u]]
        assert sorted(got) == list(range(n_items))  # every item, once
        along = exhaustive[u, got]  # the exact scores in the beam's order: non-increasing
        assert (along[1:] <= along[:-1] + 1e-5).all()  # (equal scores may swap by float rounding)
        expected = sorted(range(n_items), key=lambda i: (-float(exhaustive[u, i]), i))
        assert sum(a != b for a, b in zip(got, expected)) <= 2 * int((along[1:] >= along[:-1] - 1e-5).sum())
        for item, score in ranked[u]:
            assert score == pytest.approx(float(exhaustive[u, item]), abs=1e-4)
