"""Semantic IDs: a residual k-means quantiser over item content embeddings (TIGER §3.1).

Each item gets ``levels`` codes: level 1 is the k-means cluster of its (standardised) embedding,
level 2 the cluster of the residual left after subtracting level 1's centroid, and so on (the
"RQ-k-means" tokeniser of the GRID handbook, which matches TIGER's RQ-VAE without training an
auto-encoder). Items whose code tuples coincide (e.g. items with the same title have the same
embedding) get one more level, their index among those items in item-id order, so every item has a
unique tuple; items without a collision get 0 there. The extra level's size is the largest
group's.

The tuples are cached per (embeddings, quantiser settings, seed) under
``<dealrec cache>/tiger/semantic_ids/`` with a manifest holding the codebook usage and collision
counts (:func:`build_semantic_ids`).

Token layout of the seq2seq model: 0 = padding (also the decoder's start token), 1 = end of
sequence (reserved), then each level's codes in a block of its own (:attr:`SemanticIds.tokens`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dealrec.core.cache import cache_key, cached, tensor_hash, write_manifest
from dealrec.core.files import load_tensor, save_tensor
from dealrec.core.logs import LOG

PAD, EOS, FIRST_CODE = 0, 1, 2
SCHEME = "rkmeans-v1"


@dataclass
class QuantizerConfig:
    """The residual k-means quantiser's settings (the extra collision level comes on top)."""

    levels: int = field(default=3, metadata={"help": "residual k-means levels before the collision level"})
    codebook_size: int = field(default=256, metadata={"help": "codes per level"})
    kmeans_iters: int = field(default=25, metadata={"help": "Lloyd iterations per level"})
    standardize: bool = field(default=True, metadata={"help": "z-score each embedding dimension first"})

    def check(self) -> None:
        if self.levels < 1:
            raise ValueError(f"--levels must be ≥ 1, got {self.levels}")
        if self.codebook_size < 2:
            raise ValueError(f"--codebook_size must be ≥ 2, got {self.codebook_size}")
        if self.kmeans_iters < 1:
            raise ValueError(f"--kmeans_iters must be ≥ 1, got {self.kmeans_iters}")


@dataclass
class SemanticIds:
    """Per item (row) its code tuple: ``codes[i, l]`` in ``0 … level_sizes[l] - 1``."""

    codes: torch.Tensor  # [items, depth] int64; the last column is the collision index
    level_sizes: list[int]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return len(self.level_sizes)

    @property
    def offsets(self) -> torch.Tensor:
        """The first token id of each level's block."""
        sizes = torch.tensor([0, *self.level_sizes[:-1]], dtype=torch.long)
        return FIRST_CODE + torch.cumsum(sizes, 0)

    @property
    def tokens(self) -> torch.Tensor:
        """[items, depth] token ids of the seq2seq vocabulary."""
        return self.codes + self.offsets

    @property
    def vocab_size(self) -> int:
        return FIRST_CODE + sum(self.level_sizes)


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """[min(k, N), D] centroids: k-means++ seeding (drawn with ``generator``), then Lloyd
    iterations; an empty cluster keeps its centroid."""
    n = x.shape[0]
    k = min(k, n)
    centroids = torch.empty((k, x.shape[1]), dtype=x.dtype)
    centroids[0] = x[torch.randint(n, (1,), generator=generator)]
    d2 = torch.cdist(x, centroids[:1]).squeeze(1).pow(2)
    for i in range(1, k):
        total = float(d2.sum())
        # all points already sit on a centroid (duplicates): any point will do
        pick = torch.multinomial(d2 / total, 1, generator=generator) if total > 0 else torch.tensor([i % n])
        centroids[i] = x[pick]
        d2 = torch.minimum(d2, torch.cdist(x, centroids[i: i + 1]).squeeze(1).pow(2))
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        keep = counts > 0
        updated = centroids.clone()
        updated[keep] = sums[keep] / counts[keep].unsqueeze(1).to(x.dtype)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids


def residual_codes(emb: torch.Tensor, cfg: QuantizerConfig, seed: int) -> torch.Tensor:
    """[N, levels] codes of residual k-means on ``emb`` (standardised per dimension when
    ``cfg.standardize``: the LLM's hidden states have a few dimensions of huge magnitude)."""
    x = emb.detach().to(torch.float32).cpu()
    if cfg.standardize:
        std = x.std(0, unbiased=False)
        x = (x - x.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))
    codes = []
    residual = x
    for level in range(cfg.levels):
        gen = torch.Generator().manual_seed(seed * 1000 + level)
        centroids = kmeans(residual, cfg.codebook_size, cfg.kmeans_iters, gen)
        assign = torch.cdist(residual, centroids).argmin(1)
        residual = residual - centroids[assign]
        codes.append(assign)
    return torch.stack(codes, 1)


def add_collision_level(codes: torch.Tensor) -> torch.Tensor:
    """``codes`` with one more column: each item's index among the items with the same tuple,
    in item-id order (0 for an item that shares it with none)."""
    seen: dict[tuple[int, ...], int] = defaultdict(int)
    extra = torch.empty(codes.shape[0], dtype=torch.long)
    for i, row in enumerate(codes.tolist()):
        extra[i] = seen[tuple(row)]
        seen[tuple(row)] += 1
    return torch.cat([codes, extra.unsqueeze(1)], 1)


def code_stats(codes: torch.Tensor, level_sizes: list[int]) -> dict[str, Any]:
    """Codebook usage per level (codes used / size) and the collisions before the extra level."""
    groups: dict[tuple[int, ...], int] = defaultdict(int)
    for row in codes[:, :-1].tolist():
        groups[tuple(row)] += 1
    colliding = [c for c in groups.values() if c > 1]
    return {
        "items": int(codes.shape[0]),
        "usage": [f"{int(codes[:, lv].unique().numel())}/{size}" for lv, size in enumerate(level_sizes)],
        "distinct_prefixes": len(groups),
        "colliding_items": int(sum(colliding)),
        "collision_groups": len(colliding),
        "max_extra_index": int(codes[:, -1].max()),
    }


def quantize(emb: torch.Tensor, cfg: QuantizerConfig, seed: int = 0) -> SemanticIds:
    """The semantic IDs of the items of ``emb`` ([items, dim]); unique per item."""
    cfg.check()
    if emb.ndim != 2 or emb.shape[0] < 1:
        raise ValueError(f"item embeddings must be [items, dim], got {tuple(emb.shape)}")
    codes = add_collision_level(residual_codes(emb, cfg, seed))
    sizes = [cfg.codebook_size] * cfg.levels + [int(codes[:, -1].max()) + 1]
    return SemanticIds(codes, sizes, code_stats(codes, sizes))


def build_semantic_ids(emb: torch.Tensor, cfg: QuantizerConfig, seed: int, cache_root: str | Path | None,
                       name: str = "items") -> SemanticIds:
    """:func:`quantize`, cached under ``<cache_root>/tiger/semantic_ids/<name>-<key>.pt`` per
    (embeddings hash, quantiser settings, seed); ``cache_root`` None computes without a cache.
    Logs the codebook usage and collision counts."""
    key = {"scheme": SCHEME, "embeddings": tensor_hash(emb), "shape": list(emb.shape), **asdict(cfg), "seed": seed}
    path = Path(cache_root) / "tiger" / "semantic_ids" / f"{name}-{cache_key(key)}.pt" if cache_root else None
    if path is not None and cached(path, key):
        saved = load_tensor(path)
        ids = SemanticIds(saved["codes"], [int(s) for s in saved["level_sizes"]])
        ids.stats = code_stats(ids.codes, ids.level_sizes)
        LOG.info("semantic IDs: reused %s", path)
    else:
        t0 = time.perf_counter()
        ids = quantize(emb, cfg, seed)
        if path is not None:
            save_tensor(path, {"codes": ids.codes, "level_sizes": ids.level_sizes})
            write_manifest(path, key, seconds=round(time.perf_counter() - t0, 1), **ids.stats)
    s = ids.stats
    LOG.info("semantic IDs of %d items: codebook usage per level %s; %d items share their first %d codes "
             "(%d groups), largest extra-level index %d", s["items"], " ".join(s["usage"]), s["colliding_items"],
             ids.depth - 1, s["collision_groups"], s["max_extra_index"])
    return ids
