"""A KV cache that grows in place during decoding (used by :mod:`dealrec.llm.beam`).

transformers' ``DynamicLayer`` appends each step's keys/values with ``torch.cat``: every layer
copies its whole cache at every decoding step (for 32 Games prompts of ≈ 230 tokens, 30 layers,
24 greedy steps: ≈ 9 GB of copies by count, 18 % of the exact greedy path's time in a profile).
:func:`buffer_cache` moves each layer's keys/values into buffers with room for the positions
still to come; ``update`` then writes only the new positions, and ``keys``/``values`` are views
of the filled part. The attention sees the same numbers, so the answers are unchanged
(``tests/test_beam.py`` checks them token for token against transformers' ``generate``).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


class BufferedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in preallocated buffers [B, H, capacity, D]."""

    def __init__(self, layer: DynamicLayer, room: int) -> None:
        super().__init__()
        self.room = room  # free positions kept after the filled part whenever a buffer is (re)made
        self._nk = self._nv = 0  # filled positions (two counts: crop() assigns keys before reading values)
        self._kb: torch.Tensor | None = None
        self._vb: torch.Tensor | None = None
        if layer.is_initialized and layer.keys is not None:
            self.device = layer.keys.device
            self.is_initialized = True
            self.keys, self.values = layer.keys, layer.values

    def _home(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        buf = t.new_empty(*t.shape[:2], t.shape[2] + self.room, t.shape[3])
        buf[:, :, : t.shape[2]] = t
        return buf

    # Anything that assigns whole keys/values (batch_repeat_interleave, crop, reset, ...) gets new buffers.
    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._kb is None else self._kb[:, :, : self._nk]

    @keys.setter
    def keys(self, t: torch.Tensor | None) -> None:
        self._kb = self._home(t)
        self._nk = 0 if t is None else t.shape[2]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._vb is None else self._vb[:, :, : self._nv]

    @values.setter
    def values(self, t: torch.Tensor | None) -> None:
        self._vb = self._home(t)
        self._nv = 0 if t is None else t.shape[2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized or self._kb is None:
            self.device, self.is_initialized = key_states.device, True
            self.keys, self.values = key_states, value_states
            return self.keys, self.values
        n, m = self._nk, key_states.shape[2]
        if n + m > min(self._kb.shape[2], self._vb.shape[2]):  # out of room: new buffers (a copy, as a concatenation would be)
            self.room = max(self.room, m)
            self.keys, self.values = self.keys, self.values
        self._kb[:, :, n : n + m] = key_states
        self._vb[:, :, n : n + m] = value_states
        self._nk = self._nv = n + m
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: one gather of the buffers (a ``DynamicLayer`` gathers, then concatenates)."""
        if self._kb is not None:
            self._kb = self._kb.index_select(0, beam_idx.to(self._kb.device))
            self._vb = self._vb.index_select(0, beam_idx.to(self._vb.device))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._kb is not None:
            self._kb, self._vb = self._kb[indices], self._vb[indices]


def buffer_cache(cache: Any, room: int) -> Any:
    """Give every plain ``DynamicLayer`` of ``cache`` room for ``room`` more positions (in place)."""
    layers = getattr(cache, "layers", None)
    if layers is None or room < 1:
        return cache
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer:
            layers[i] = BufferedLayer(layer, room)
    return cache
