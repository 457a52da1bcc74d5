"""Grounding the generated titles to items and scoring them (BIGRec's ``evaluate.py``).

BIGRec grounds a generation in the item space by L2 distance between embeddings: the
last-layer hidden state of the last token, computed by the *base* LLM (no adapter), of the
generated text and of every item title; items are ranked by distance (closest first) and
scored with Recall/NDCG/Precision/MRR@K (:func:`dealrec.metrics.topk_metrics`).

Differences from the original:

- The target of a test user is its own list of test item ids (``target_ids`` in the result
  file), not a lookup of the target *titles* in a title -> id dict. In Games, 814 items share
  their title with another item (366 titles); the dict kept one id per title, so for 448 items
  a correct generation was scored against the wrong item id.
- Embeddings are padded on the left with explicit position ids and the last *real* token is
  taken via the attention mask, so a text's embedding does not depend on its batch (the
  original's batches shifted the positions of padded texts).
- Texts go through a token trie by default (:mod:`dealrec.llm.title_trie`): each token prefix that
  several titles share is run once; equal, up to float rounding, to running each text alone.
- Item titles are embedded as cleaned in the prompts (no newlines). Ties (items with the same
  title have the same embedding) are broken by the lower item id.
- An empty generation is a valid (bad) prediction: it is embedded as the end-of-sequence
  token and counted in the report.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dealrec.core import faults
from dealrec.core.cache import cache_key, cached, write_manifest
from dealrec.core.files import (
    check_writable,
    load_tensor,
    read_json,
    read_json_checked,
    save_tensor,
    write_compact_json,
    write_json,
)
from dealrec.core.hardware import cpu_precision, describe
from dealrec.core.locking import output_lock
from dealrec.core.logs import LOG
from dealrec.core.token_rows import pad_batch
from dealrec.data.dataset import DataError, RecData
from dealrec.data.prompts import clean_title
from dealrec.metrics import DEFAULT_KS, hit_ranks, topk_metrics


@dataclass
class EvaluateConfig:
    """The settings of ``evaluate.py`` (the original's names)."""

    result_file: str | None = None  # result JSON of inference.py
    input_dir: str | None = None  # with filename: <input_dir>/<data>/<filename>.json
    filename: str | None = None
    data_name: str | None = None  # default: from the result manifest, else games
    data_dir: str = "data"
    base_model: str | None = None  # the BASE model of the fine-tuning (default: embedded)
    gpu: str = "cpu"  # GPU index or cpu
    batch_size: int = 32
    ks: tuple[int, ...] = DEFAULT_KS
    max_items: int | None = None  # demo only: rank among the first N items + targets
    ground_precision: str = "fp32"  # fp32 | bf16 (CPU with native bf16) | auto: embeddings' precision
    embed_layout: str = "tree"  # tree: each shared token prefix once (exact) | padded: the reference batches


POOLING = "last-token-v1"
GROUND_AUTO = "bf16"  # what --ground_precision auto runs (docs/performance.md: tree layout, bf16 autocast: top-20 overlap 0.965)


EMBED_LAYOUTS = ("tree", "padded")
TREE_ROW = 256  # tree layout: tokens per row (at least the longest text)
TREE_TOKENS = 2048  # tree layout: tokens per forward pass


def _tokenize(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    seqs = []
    for t in texts:
        ids = list(tokenizer(t)["input_ids"])
        seqs.append(ids if ids else [eos])  # an empty text is embedded as the end-of-sequence token
    return seqs


@torch.no_grad()
def embed_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "embed",
    layout: str = "tree",
    precision: str = "fp32",
) -> torch.Tensor:
    """[N, hidden] float32 (CPU): last-layer hidden state of each text's last real token.

    Runs the decoder without the LM head. ``layout``: ``tree`` (default) runs each distinct
    token prefix of the texts once (:mod:`dealrec.llm.title_trie`; exact up to float rounding),
    ``padded`` sorts the texts by length and runs them ``batch_size`` at a time, left-padded with
    position ids counted from each text's first real token (the reference; also what the tree
    layout falls back to for attention implementations other than sdpa/eager).
    ``precision`` ``bf16`` runs under bf16 autocast (the residual stream stays fp32).
    """
    return embed_token_seqs(model, _tokenize(tokenizer, texts), tokenizer.pad_token_id, batch_size, progress, desc,
                            layout, precision)


@torch.no_grad()
def embed_token_seqs(model: Any, seqs: list[list[int]], pad_id: int, batch_size: int = 32, progress: bool = True,
                     desc: str = "embed", layout: str = "tree", precision: str = "fp32") -> torch.Tensor:
    """:func:`embed_texts` for token id sequences (each non-empty)."""
    if hasattr(model, "peft_config"):
        raise ValueError("embed_texts needs the base model without a LoRA adapter (BIGRec grounds with the base LLM)")
    if layout not in EMBED_LAYOUTS:
        raise ValueError(f"embed layout must be one of {EMBED_LAYOUTS}, got {layout!r}")
    if not seqs:
        raise ValueError("embed_texts: no texts")
    backbone = getattr(model, "base_model", model)  # the decoder without the LM head
    device = next(model.parameters()).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        if layout == "tree":
            out = _embed_tree(model, backbone, pad_id, seqs, device, progress, desc)
            if out is not None:
                return out
        return _embed_padded(backbone, pad_id, seqs, batch_size, device, progress, desc)


def _embed_padded(backbone: Any, pad_id: int, seqs: list[list[int]], batch_size: int, device: torch.device,
                  progress: bool, desc: str) -> torch.Tensor:
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out: torch.Tensor | None = None
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[start: start + batch_size]
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id, "left")
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
        hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        last = (mask * torch.arange(mask.shape[1], device=device)).argmax(1)
        vec = hidden[torch.arange(len(idx), device=device), last].float().cpu()
        if out is None:
            out = torch.empty((len(seqs), vec.shape[1]), dtype=torch.float32)
        out[torch.tensor(idx)] = vec
        faults.step("ground")
    assert out is not None
    return out


def _embed_tree(model: Any, backbone: Any, pad_id: int, seqs: list[list[int]], device: torch.device,
                progress: bool, desc: str) -> torch.Tensor | None:
    from dealrec.llm.title_trie import attention_mask_for, build_trie, layout_rows, mask_form, tree_batches

    dtype = next(model.parameters()).dtype
    form = mask_form(model)
    if form is None:
        LOG.info("embeddings: attention %r takes no custom 4D mask; padded batches",
                 model.config._attn_implementation)
        return None
    trie = build_trie(seqs)
    capacity = max(TREE_ROW, max(trie.depth) + 1)
    rows, where = layout_rows(trie, capacity)
    ends_by_row: dict[int, list[tuple[int, int]]] = {}
    for i, node in enumerate(trie.end):
        r, c = where[node]
        ends_by_row.setdefault(r, []).append((i, c))
    rows_per_batch = max(1, TREE_TOKENS // capacity)
    out: torch.Tensor | None = None
    bar = tqdm(total=len(rows), desc=desc, disable=not progress, leave=False, unit="row")
    for batch in tree_batches(trie, rows, rows_per_batch, pad_id):
        mask = attention_mask_for(batch.allowed, form, dtype)
        hidden = backbone(input_ids=batch.input_ids.to(device), attention_mask=mask.to(device),
                          position_ids=batch.position_ids.to(device)).last_hidden_state
        text_idx, b_idx, cols = [], [], []
        for b, r in enumerate(batch.rows):
            for i, c in ends_by_row.get(r, ()):
                text_idx.append(i)
                b_idx.append(b)
                cols.append(c)
        if text_idx:
            vec = hidden[torch.tensor(b_idx, device=device), torch.tensor(cols, device=device)].float().cpu()
            if out is None:
                out = torch.empty((len(seqs), vec.shape[1]), dtype=torch.float32)
            out[torch.tensor(text_idx)] = vec
        bar.update(len(batch.rows))
        faults.step("ground")
    bar.close()
    assert out is not None
    return out


def titles_hash(titles: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in titles:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


def item_embeddings(
    base_model: str | os.PathLike | None,
    data: RecData,
    model: Any = None,
    tokenizer: Any = None,
    items: Sequence[int] | None = None,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    progress: bool = True,
    precision: str = "fp32",
    layout: str = "tree",
) -> torch.Tensor:
    """Embeddings of the item titles (all, or ``items``), cached per model, data set, titles and
    precision (``bf16``: bf16 autocast, :func:`embed_texts`). Both layouts compute the same
    embeddings (up to float rounding) and share the cache; the manifest names the one that ran.

    Cache: ``<dealrec cache>/embeddings/{data}-{key}.pt`` with a manifest beside it.
    """
    from dealrec.core.model_id import model_id
    from dealrec.llm.model import cache_dir, default_dtype, load_base_model, load_tokenizer

    ids = list(range(data.n_items)) if items is None else [int(i) for i in items]
    titles = [clean_title(data.titles[i]) for i in ids]
    dtype = next(model.parameters()).dtype if model is not None else default_dtype(device)
    key = {"model": model_id(base_model), "data_name": data.name, "titles": titles_hash(titles),
           "n": len(titles), "dtype": str(dtype), "pooling": POOLING}
    if precision == "bf16":
        key["autocast"] = "bf16"
    path = cache_dir() / "embeddings" / f"{data.name}-{cache_key(key)}.pt"
    if cached(path, key):
        emb = load_tensor(path)
        if emb.shape[0] == len(titles):
            LOG.info("item embeddings: reused %s", path)
            return emb
    if model is None or tokenizer is None:
        tokenizer = load_tokenizer(base_model)
        model = load_base_model(base_model, device)
    t0 = time.perf_counter()
    emb = embed_texts(model, tokenizer, titles, batch_size, progress, desc=f"{data.name} items", layout=layout,
                      precision=precision)
    save_tensor(path, emb)
    write_manifest(path, key, shape=list(emb.shape), layout=layout, seconds=round(time.perf_counter() - t0, 1),
                   machine=describe())
    LOG.info("item embeddings: %d x %d written to %s", emb.shape[0], emb.shape[1], path)
    return emb


def rank_items(gen_emb: torch.Tensor, item_emb: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """[N, min(k, items)] indices of the items closest (L2) to each generation, ties by lower index."""
    k = min(k, item_emb.shape[0])
    out = []
    for s in range(0, gen_emb.shape[0], chunk):
        d = torch.cdist(gen_emb[s: s + chunk].float(), item_emb.float(), p=2)
        out.append(torch.sort(d, dim=1, stable=True).indices[:, :k])
    return torch.cat(out) if out else torch.empty((0, k), dtype=torch.long)


def read_results(result_file: str | os.PathLike, data: RecData) -> list[dict[str, Any]]:
    """The records of an inference result file, checked against ``data``."""
    path = Path(result_file)
    rows = read_json_checked(path, "--result_file", "give the result file of inference.py (results/<data>/<run>.json)")
    if not isinstance(rows, list) or not rows:
        raise DataError(f"--result_file {path}: no predictions (expected a non-empty list of records of inference.py)")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("predict"), str):
            raise DataError(f"--result_file {path}: record {i} has no 'predict' text; pass the result file of "
                            "inference.py")
        t = r.get("target_ids")
        if not isinstance(t, list) or not t or not all(isinstance(x, int) for x in t):
            raise DataError(
                f"{path}: record {i} has no 'target_ids' (a list of item ids); result files of the original "
                "code lack them, re-run inference on test files written by gen_fewshot.py"
            )
        if not all(0 <= x < data.n_items for x in t):
            raise DataError(f"{path}: record {i} has target ids outside 0..{data.n_items - 1}; another data set?")
        u = r.get("user")
        if isinstance(u, int) and (not 0 <= u < data.n_users or list(data.test[u]) != t):
            raise DataError(
                f"{path}: record {i} (user {u}) does not match {data.name}'s test items; was it made for another "
                "data set? pass the right --data_name"
            )
    return rows


def parse_ks(text: str) -> list[int]:
    """``--ks 5,10,20``: positive cutoffs, one line naming the flag otherwise."""
    try:
        ks = [int(k) for k in str(text).split(",") if k.strip()]
    except ValueError:
        raise ValueError(f"--ks {text}: expected comma-separated positive integers such as 5,10,20,50") from None
    if not ks or min(ks) < 1:
        raise ValueError(f"--ks {text}: expected comma-separated positive integers such as 5,10,20,50")
    return ks


def result_data_name(result_file: str | os.PathLike) -> str | None:
    """The data set named in a result file's manifest (None when there is none or it is unreadable)."""
    m = Path(result_file).with_name(Path(result_file).name + ".json")
    try:
        name = read_json(m).get("data_name") if m.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def metrics_path(result_file: str | os.PathLike) -> Path:
    p = Path(result_file)
    return p.with_name(p.stem + ".metrics.json")


def hits_path(result_file: str | os.PathLike) -> Path:
    """``<result>.hits.json``: per test user (the result file's order) the 0-based rank of each
    target among the grounded top max(K), or -1 (one compact JSON line)."""
    p = Path(result_file)
    return p.with_name(p.stem + ".hits.json")


def evaluate_results(
    result_file: str | os.PathLike,
    data: RecData,
    base_model: str | os.PathLike | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    max_items: int | None = None,
    model: Any = None,
    tokenizer: Any = None,
    progress: bool = True,
    write: bool = True,
    precision: str = "fp32",
    layout: str = "tree",
) -> dict[str, Any]:
    """Ground the generations of ``result_file``, score them and write ``<result>.metrics.json``
    and the per-user hit ranks ``<result>.hits.json`` (:func:`hits_path`).

    The returned report is the metrics file's content plus ``per_user``: ``users`` (the records'
    ``user`` ids, None where a record has none) and ``hit_ranks`` (per record, the 0-based rank of
    each of its distinct targets, ascending ids, within the top max(ks), or -1:
    :func:`dealrec.metrics.hit_ranks`), from which :func:`dealrec.study.paired.metrics_from_ranks`
    recomputes each user's Recall/NDCG@K.

    ``precision`` (``fp32|bf16|auto``): ``bf16`` embeds titles and generations under bf16 autocast
    (the residual stream stays fp32; CPU with native bf16 only, else fp32 with a warning); ``auto`` =
    ``GROUND_AUTO``. The title cache is kept per precision.

    ``layout``: :func:`embed_texts` (``tree``, the default, or ``padded``; same embeddings).

    ``max_items`` (demos only) ranks among items ``0..max_items-1`` plus every target item
    instead of the whole catalogue; the report says so and the figures are not comparable.
    """
    from dealrec.llm.model import check_model_folder

    ks = sorted(int(k) for k in ks)
    if not ks or ks[0] < 1:
        raise ValueError(f"--ks must be positive integers, got {ks}")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be ≥ 1, got {batch_size}")
    if max_items is not None and max_items < 1:
        raise ValueError(f"--max_items must be ≥ 1 (or omitted), got {max_items}")
    if layout not in EMBED_LAYOUTS:
        raise ValueError(f"--embed_layout must be one of {', '.join(EMBED_LAYOUTS)}, got {layout!r}")
    precision = cpu_precision(precision, device, "--ground_precision", auto=GROUND_AUTO)
    rows = read_results(result_file, data)
    if model is None or tokenizer is None:
        check_model_folder(base_model)
    args = (rows, result_file, data, base_model, ks, batch_size, device, max_items, model, tokenizer, progress, write,
            precision, layout)
    if not write:
        return _evaluate(*args)
    check_writable(metrics_path(result_file).parent, "--result_file")
    with output_lock(metrics_path(result_file), flag="--result_file"):
        return _evaluate(*args)


def _evaluate(rows: list[dict[str, Any]], result_file: str | os.PathLike, data: RecData, base_model: Any,
              ks: list[int], batch_size: int, device: Any, max_items: int | None, model: Any, tokenizer: Any,
              progress: bool, write: bool, precision: str, layout: str) -> dict[str, Any]:
    from dealrec.core.model_id import model_id
    from dealrec.llm.model import load_base_model, load_tokenizer

    if model is None or tokenizer is None:
        tokenizer = load_tokenizer(base_model)
        model = load_base_model(base_model, device)
    targets = [r["target_ids"] for r in rows]
    items = None
    if max_items is not None and max_items < data.n_items:
        items = sorted(set(range(max_items)) | {i for t in targets for i in t})
    item_ids = torch.arange(data.n_items) if items is None else torch.tensor(items)
    item_emb = item_embeddings(base_model, data, model, tokenizer, items, batch_size, device, progress, precision,
                               layout)
    texts = [r["predict"].strip().strip('"') for r in rows]
    gen_emb = embed_texts(model, tokenizer, texts, batch_size, progress, desc="generations", precision=precision,
                          layout=layout)
    ranked = item_ids[rank_items(gen_emb, item_emb, max(ks))]
    m = topk_metrics(ranked.numpy(), targets, ks)
    title_set = {clean_title(t) for t in data.titles}
    n_exact = sum(1 for t in texts if t in title_set)
    n_empty = sum(1 for t in texts if not t)
    report: dict[str, Any] = {
        "result_file": str(result_file),
        "data_name": data.name,
        "base_model": model_id(base_model),
        "ks": ks,
        "Recall": m["Recall"],
        "NDCG": m["NDCG"],
        "Precision": m["Precision"],
        "MRR": m["MRR"],
        "n_users": m["n_users"],
        "n_predictions": len(rows),
        "n_empty": n_empty,
        "exact_title_share": n_exact / len(rows),
        "n_items_ranked": int(item_ids.numel()),
        "catalogue": "all items" if items is None else f"restricted to {len(items)} items (demo; not comparable)",
        "pooling": POOLING,
        "distance": "L2",
        "precision": precision,
        "embed_layout": layout,
    }
    per_user = {"users": [r.get("user") if isinstance(r.get("user"), int) else None for r in rows],
                "ks": ks, "hit_ranks": hit_ranks(ranked.numpy(), targets)}
    if write:
        write_json(metrics_path(result_file), report)
        write_compact_json(hits_path(result_file), per_user)
    report["per_user"] = per_user
    LOG.info("%s: %s", result_file, ", ".join(f"{name}@{k} {m[name][i]:.4f}" for name in ("Recall", "NDCG")
                                              for i, k in enumerate(ks) if k in (10, 20)))
    if n_empty:
        LOG.warning("%d of %d generations are empty", n_empty, len(rows))
    return report
