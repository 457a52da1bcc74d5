"""The in-place KV cache layer (:mod:`dealrec.llm.kv_buffer`) against transformers' ``DynamicLayer``
under every operation the decoding loops use, including running out of room."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from dealrec.llm.kv_buffer import BufferedLayer, buffer_cache


def _kv(b: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, n, 4, generator=g), torch.randn(b, 2, n, 4, generator=g)


def _same(a: DynamicLayer, b: BufferedLayer) -> None:
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert a.get_seq_length() == b.get_seq_length()
    assert a.get_mask_sizes(1) == b.get_mask_sizes(1)


def test_buffered_layer_equals_dynamic_layer():
    ref = DynamicLayer()
    ref.update(*_kv(3, 5, 0))
    buf = BufferedLayer(ref, room=2)
    ref2 = DynamicLayer()
    ref2.update(*_kv(3, 5, 0))
    _same(ref2, buf)
    steps = [("update", 1), ("repeat", 2), ("update", 1), ("reorder", None), ("update", 1),
             ("update", 3), ("select", None), ("update", 1), ("crop", -2), ("update", 2)]  # past the room
    for i, (op, arg) in enumerate(steps):
        for layer in (ref2, buf):
            if op == "update":
                out = layer.update(*_kv(layer.keys.shape[0], arg, 10 + i))
                assert torch.equal(out[0], layer.keys) and torch.equal(out[1], layer.values)
            elif op == "repeat":
                layer.batch_repeat_interleave(arg)
            elif op == "reorder":
                layer.reorder_cache(torch.tensor([5, 0, 0, 2, 1, 3]))
            elif op == "select":
                layer.batch_select_indices(torch.tensor([4, 1, 0]))
            elif op == "crop":
                layer.crop(arg)
        _same(ref2, buf)
    assert buf.keys.shape == (3, 2, 5 + 1 + 1 + 1 + 3 + 1 - 2 + 2, 4)


def test_buffer_cache_swaps_plain_layers_only():
    cache = DynamicCache()
    for layer_idx in range(2):
        cache.update(*_kv(2, 3, layer_idx), layer_idx)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    buffer_cache(cache, 4)
    assert all(type(layer) is BufferedLayer for layer in cache.layers)
    for layer, (k, v) in zip(cache.layers, before):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
    k_new, v_new = _kv(2, 1, 9)
    keys, _ = cache.update(k_new, v_new, 0)
    assert torch.equal(keys, torch.cat([before[0][0], k_new], 2)) and cache.get_seq_length() == 4
