"""Texts embedded through a token trie: every shared token prefix is computed once (exact).

A causal decoder's hidden state at a position depends only on the tokens up to it, so texts
that start with the same tokens share those positions' hidden states. Grounding embeds all
item titles (Games: 17,332 titles, 226,060 tokens with the SmolLM2 tokenizer) by the
last-layer hidden state of each title's last token; merged into a trie, the titles have
153,848 distinct token prefixes (1.47× fewer positions), and identical titles cost nothing.

Layout: the trie's nodes are written depth-first into rows of at most ``capacity`` tokens.
A row that starts inside a subtree first repeats the ancestors of its first node (in
depth-first order every ancestor of a node written before the row started is an ancestor of
the row's first node, so each node finds all of its ancestors in its own row). Each row gets
a 4D attention mask in which a node attends to its ancestors and itself only, and position ids
equal to the node's depth, so a node's hidden state is the one it has at the end of each text
through it when that text is run alone: :func:`dealrec.llm.ground.embed_texts` checks the two
layouts agree (tests/test_tree_pack.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Trie:
    """Token trie: node ``n`` holds ``token[n]`` at depth ``depth[n]`` below ``parent[n]`` (-1: a root)."""

    token: list[int]
    parent: list[int]
    depth: list[int]
    children: list[list[int]]
    roots: list[int]
    end: list[int]  # end[i]: the node of text i's last token

    @property
    def n_nodes(self) -> int:
        return len(self.token)


def build_trie(seqs: Sequence[Sequence[int]]) -> Trie:
    """The trie of the token sequences ``seqs`` (each non-empty)."""
    token: list[int] = []
    parent: list[int] = []
    depth: list[int] = []
    children: list[list[int]] = []
    roots: list[int] = []
    index: dict[tuple[int, int], int] = {}  # (parent, token) -> node
    end = []
    for i, seq in enumerate(seqs):
        if not len(seq):
            raise ValueError(f"build_trie: text {i} has no tokens")
        node = -1
        for d, tok in enumerate(seq):
            key = (node, int(tok))
            child = index.get(key)
            if child is None:
                child = len(token)
                index[key] = child
                token.append(int(tok))
                parent.append(node)
                depth.append(d)
                children.append([])
                (children[node] if node >= 0 else roots).append(child)
            node = child
        end.append(node)
    return Trie(token, parent, depth, children, roots, end)


def layout_rows(trie: Trie, capacity: int) -> tuple[list[list[int]], dict[int, tuple[int, int]]]:
    """Rows of node ids (depth-first, each row prefixed by the ancestors it lacks) and, per node,
    the (row, column) where it is computed."""
    longest = max(trie.depth) + 1
    if capacity < longest:
        raise ValueError(f"layout_rows: capacity {capacity} < the longest text ({longest} tokens)")
    rows: list[list[int]] = []
    where: dict[int, tuple[int, int]] = {}
    row: list[int] = []
    stack = list(reversed(trie.roots))
    while stack:
        node = stack.pop()
        if len(row) == capacity:
            rows.append(row)
            path = []
            p = trie.parent[node]
            while p >= 0:
                path.append(p)
                p = trie.parent[p]
            row = path[::-1]
        where[node] = (len(rows), len(row))
        row.append(node)
        stack.extend(reversed(trie.children[node]))
    if row:
        rows.append(row)
    return rows, where


def row_mask(trie: Trie, row: Sequence[int], width: int) -> torch.Tensor:
    """[width, width] bool: ``mask[i, j]`` = column j is an ancestor of column i or i itself.

    In a depth-first row the descendants of column j are the columns j+1 .. last[j], so the
    mask is the interval test j ≤ i ≤ last[j]; padding columns see only themselves.
    """
    col = {node: c for c, node in enumerate(row)}
    last = list(range(width))
    for c in range(len(row) - 1, -1, -1):
        p = col.get(trie.parent[row[c]], -1)
        if p >= 0 and last[c] > last[p]:
            last[p] = last[c]
    ar = torch.arange(width)
    lasts = torch.tensor(last)
    return (ar[None, :] <= ar[:, None]) & (ar[:, None] <= lasts[None, :])


@dataclass
class TreeBatch:
    input_ids: torch.Tensor  # [B, W]
    position_ids: torch.Tensor  # [B, W]
    allowed: torch.Tensor  # [B, 1, W, W] bool
    rows: list[int]  # the layout's row index of each batch row


def tree_batches(trie: Trie, rows: list[list[int]], rows_per_batch: int, pad_id: int) -> Iterator[TreeBatch]:
    """The rows in batches of ``rows_per_batch``, padded on the right to the batch's longest row."""
    for start in range(0, len(rows), rows_per_batch):
        chunk = rows[start: start + rows_per_batch]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        pos = torch.zeros((len(chunk), width), dtype=torch.long)
        allowed = torch.empty((len(chunk), 1, width, width), dtype=torch.bool)
        for b, row in enumerate(chunk):
            ids[b, : len(row)] = torch.tensor([trie.token[n] for n in row])
            pos[b, : len(row)] = torch.tensor([trie.depth[n] for n in row])
            allowed[b, 0] = row_mask(trie, row, width)
        yield TreeBatch(ids, pos, allowed, list(range(start, start + len(chunk))))


def mask_form(model) -> str | None:
    """How the model's attention takes a custom 4D mask: ``bool`` (``sdpa``), ``additive``
    (``eager``: 0 / dtype min), or None for any other implementation (flash, flex, paged: the
    caller falls back to padded batches)."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    return {"sdpa": "bool", "eager": "additive"}.get(impl)


def attention_mask_for(allowed: torch.Tensor, form: str, dtype: torch.dtype) -> torch.Tensor:
    """``allowed`` [B, 1, W, W] in the :func:`mask_form` ``form``."""
    if form == "bool":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
