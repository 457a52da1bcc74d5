"""The prefix trie of the valid semantic IDs, for beam search that only generates items.

:meth:`PrefixTrie.allowed` gives the tokens that may follow a prefix of token ids; its
:meth:`PrefixTrie.prefix_allowed_tokens_fn` is what ``transformers``' ``generate`` takes to
constrain beam search, so every finished beam is a valid item's ID (:meth:`PrefixTrie.item`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dealrec.tiger.semantic_ids import EOS


class PrefixTrie:
    """The token tuples of the items (all of one length) as a map prefix -> allowed next tokens."""

    def __init__(self, tokens: torch.Tensor | Sequence[Sequence[int]]):
        rows = [tuple(int(t) for t in r) for r in (tokens.tolist() if isinstance(tokens, torch.Tensor) else tokens)]
        if not rows:
            raise ValueError("a prefix trie needs at least one item")
        self.depth = len(rows[0])
        if any(len(r) != self.depth for r in rows):
            raise ValueError("every item's ID must have the same number of tokens")
        children: dict[tuple[int, ...], set[int]] = {}
        self.items: dict[tuple[int, ...], int] = {}
        for item, row in enumerate(rows):
            if row in self.items:
                raise ValueError(f"items {self.items[row]} and {item} have the same ID {row}; IDs must be unique")
            self.items[row] = item
            for d in range(self.depth):
                children.setdefault(row[:d], set()).add(row[d])
        self._next = {p: sorted(s) for p, s in children.items()}
        self._done = [EOS]

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """The tokens that extend ``prefix`` towards a valid ID; ``[EOS]`` for a complete ID or a
        prefix of none (a beam kept only to fill the beam width)."""
        return self._next.get(tuple(int(t) for t in prefix), self._done)

    def item(self, seq: Sequence[int]) -> int | None:
        """The item whose ID is ``seq``, or None."""
        return self.items.get(tuple(int(t) for t in seq))

    def prefix_allowed_tokens_fn(self, start: int = 1) -> Callable[[int, torch.Tensor], list[int]]:
        """``generate``'s ``prefix_allowed_tokens_fn``: the decoder's tokens after the first
        ``start`` (the decoder start token) are the prefix."""

        def fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
            return self.allowed(input_ids[start:].tolist())

        return fn

    def __len__(self) -> int:
        return len(self.items)
