"""``prepare`` as a library call: read both files, run the steps, write the folder and its card.

Every check on the options and the inputs runs before anything is written; the folder appears
only when complete (:mod:`dealrec.data.prepare.write`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dealrec.data.prepare import steps
from dealrec.data.prepare.card import build_card, prompt_phrases, source_entry
from dealrec.data.prepare.columns import ColumnFlags
from dealrec.data.prepare.errors import PrepareError
from dealrec.data.prepare.readers import Interactions, Items, read_interactions, read_items
from dealrec.data.prepare.times import iso_range
from dealrec.data.prepare.titles import title_lookup
from dealrec.data.prepare.write import exists_error, staged_folder, write_folder

SPLITS = ("time", "loo")


@dataclass
class PrepareOptions:
    """The options of ``prepare`` (the command-line flags of the same names)."""

    interactions: str
    items: str
    name: str
    out_dir: str = "data"
    kcore: int = 5
    split: str = "time"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    min_rating: float | None = None
    item_noun: str = "items"
    item_noun_singular: str | None = None
    instruction: str | None = None
    input_prefix: str | None = None
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    title_col: str | None = None
    rating_col: str | None = None
    items_item_col: str | None = None
    overwrite: bool = False

    def column_flags(self) -> ColumnFlags:
        return ColumnFlags(self.user_col, self.item_col, self.time_col, self.rating_col, self.title_col,
                           self.items_item_col)

    @property
    def target(self) -> Path:
        return Path(self.out_dir) / self.name


def check_options(opts: PrepareOptions) -> None:
    """Every option on its own (before any file is read)."""
    name = opts.name
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
        raise PrepareError(f"--name {name!r}: not a folder name; pass a plain name such as 'movielens-1m'")
    if opts.kcore < 0:
        raise PrepareError(f"--kcore {opts.kcore}: must be >= 0 (0 turns the k-core filter off)")
    if opts.split not in SPLITS:
        raise PrepareError(f"--split {opts.split}: must be one of {', '.join(SPLITS)}")
    r = opts.ratios
    if len(r) != 3 or any(not math.isfinite(x) or x < 0 for x in r):
        raise PrepareError(f"--ratios {','.join(map(str, r))}: pass three numbers >= 0, e.g. --ratios 0.8,0.1,0.1")
    if abs(sum(r) - 1) > 1e-6:
        raise PrepareError(f"--ratios {','.join(map(str, r))}: they sum to {sum(r):.6g}, not 1; pass train, "
                           "valid and test shares that sum to 1, e.g. --ratios 0.8,0.1,0.1")
    if r[0] <= 0:
        raise PrepareError(f"--ratios {','.join(map(str, r))}: the train share must be > 0")
    prompt_phrases(opts.item_noun, opts.item_noun_singular, opts.instruction, opts.input_prefix)


class StepLog:
    """Each step's rows in and out, users and items out, and why rows were dropped."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.entries: list[dict[str, Any]] = [{"step": "read", **self._sizes(frame)}]

    @staticmethod
    def _sizes(frame: pd.DataFrame) -> dict[str, int]:
        return {"rows_out": len(frame), "users_out": len(pd.unique(frame["user"].to_numpy())),
                "items_out": len(pd.unique(frame["item"].to_numpy()))}

    def run(self, name: str, why: str, fn: Callable[[pd.DataFrame], pd.DataFrame], frame: pd.DataFrame,
            fix: str) -> pd.DataFrame:
        out = fn(frame)
        self.entries.append({"step": name, "why": why, "rows_in": len(frame), **self._sizes(out),
                             "dropped": len(frame) - len(out)})
        if not len(out):
            raise PrepareError(f"no interactions left after step {name!r} ({why}); {fix}")
        return out


def filter_interactions(inter: Interactions, usable: np.ndarray, opts: PrepareOptions
                        ) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The steps up to the k-core, logged; an empty result is a PrepareError naming the fix. The
    frame moves out of ``inter`` (left empty), so that each step's input can be freed."""
    frame, inter.frame = inter.frame, inter.frame.head(0).copy()  # a slice would keep the rows alive
    log = StepLog(frame)
    cols = inter.columns
    frame = log.run("drop_incomplete", "rows without a user, an item or a time", steps.drop_incomplete, frame,
                    f"check that --user_col/--item_col/--time_col ({cols['user']}, {cols['item']}, {cols['time']}) "
                    f"hold values in --interactions {opts.interactions}")
    frame = steps.time_order(frame)
    if opts.min_rating is not None:
        frame = log.run("min_rating", f"rating below {opts.min_rating} or missing",
                        lambda f: steps.keep_min_rating(f, opts.min_rating), frame,
                        f"lower --min_rating (ratings run from {frame['rating'].min()} to {frame['rating'].max()})")
    frame = log.run("drop_repeats", "repeated (user, item) pairs; the earliest is kept", steps.drop_repeats, frame, "")
    frame = log.run("keep_titled", "items without a usable title in --items (absent, or empty after clean-up)",
                    lambda f: steps.keep_items(f, usable), frame,
                    f"check --title_col and that --items {opts.items} lists these items' titles")
    if opts.kcore > 1:
        core = steps.kcore(frame, opts.kcore)
        sizes = "" if len(core) else "; ".join(
            f"k={k}: {u} users, {i} items" for k, (u, i) in steps.kcore_sizes(frame).items())
        frame = log.run("kcore", f"iterative {opts.kcore}-core: users and items with fewer than {opts.kcore} "
                        "interactions, dropped until none is left", lambda f: core, frame,
                        f"what each k keeps: {sizes}; pass a smaller --kcore (0 turns the filter off)")
    return frame, log.entries


def _check_coverage(inter: Interactions, items: Items, counts: dict[str, int]) -> None:
    if counts["ids_of_interactions_found"] == 0:
        theirs = ", ".join(repr(x) for x in items.ids[:3])
        ours = ", ".join(repr(x) for x in inter.item_ids[:3])
        raise PrepareError(
            f"--items {items.layout.path}: none of its ids (column {items.columns['item']!r}, e.g. {theirs}) is an "
            f"item of --interactions {inter.layout.path} (column {inter.columns['item']!r}, e.g. {ours}); pass "
            "the items file of the same data set, or --items_item_col with its item id column")
    if counts["ids_of_interactions_with_usable_title"] == 0:
        raise PrepareError(f"--items {items.layout.path}: no item of the interactions has a usable title in column "
                           f"{items.columns['title']!r}; pass --title_col with the title column")


def _options_record(opts: PrepareOptions) -> dict[str, Any]:
    out = dataclasses.asdict(opts)
    out["ratios"] = list(opts.ratios)
    return out


@dataclass
class Result:
    root: Path
    card: dict[str, Any]


def prepare(opts: PrepareOptions) -> Result:
    """Turn the two input files into ``<out_dir>/<name>/``; a bad input is a PrepareError and
    writes nothing."""
    check_options(opts)
    target = opts.target
    if (target.exists() or target.is_symlink()) and not opts.overwrite:
        raise exists_error(target)
    prompt = prompt_phrases(opts.item_noun, opts.item_noun_singular, opts.instruction, opts.input_prefix)
    inter = read_interactions(opts.interactions, opts.column_flags(), opts.min_rating is not None)
    if not len(inter.frame):
        raise PrepareError(f"--interactions {opts.interactions}: no data rows; pass a file with one row per interaction")
    items = read_items(opts.items, opts.column_flags(), inter.columns["item"])
    titles, item_counts = title_lookup(items.ids, items.titles, inter.item_ids)
    _check_coverage(inter, items, item_counts)
    frame, log = filter_interactions(inter, np.array([t is not None for t in titles], dtype=bool), opts)
    split = steps.split_time(frame, opts.ratios) if opts.split == "time" else steps.split_loo(frame)
    numbered, numbering = steps.number(split)
    seqs = steps.sequences(numbered, len(numbering.users))
    sources = {
        "interactions": source_entry(opts.interactions, inter.layout.describe(), inter.columns,
                                     time_kind=inter.time_kind),
        "items": source_entry(opts.items, items.layout.describe(), items.columns),
    }
    card = build_card(opts.name, sources, _options_record(opts), log, item_counts, seqs, len(numbering.users),
                      len(numbering.items), prompt, iso_range(numbered["time"].to_numpy(), inter.time_kind))
    with staged_folder(target, opts.overwrite) as tmp:
        write_folder(tmp, seqs, inter.user_ids[numbering.users].tolist(), inter.item_ids[numbering.items].tolist(),
                     titles[numbering.items].tolist(), card)
    return Result(target, card)
