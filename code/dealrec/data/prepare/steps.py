"""The filtering and splitting steps: pure functions from an interaction frame to a frame.

An interaction frame has one row per interaction and the columns ``user`` and ``item`` (int32
codes into the raw ids, -1 where the id is missing), ``time`` (float64, NaN where missing) and
optionally ``rating`` (float64); its index is the row number in the input file, which breaks ties
in time ("input row order"). No step changes its input.

The order of the pipeline (:mod:`dealrec.data.prepare.pipeline`): :func:`drop_incomplete`,
:func:`time_order`, :func:`keep_min_rating`, :func:`drop_repeats`, :func:`keep_items` (items
with a usable title), :func:`kcore`, then :func:`split_time` or :func:`split_loo`, :func:`number`
and :func:`sequences`.

Numbering: users are numbered from 1 in the order of their first interaction and items from 1 in
the order of their first appearance, both in (time, input row order). The numbers then depend
only on the log itself, not on how the raw ids sort (``"A10"`` before ``"A9"``), and appending
newer interactions to a log keeps the numbers of the users and items already there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

PARTS = ("train", "valid", "test")


def drop_incomplete(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows with a user, an item and a time."""
    keep = (frame["user"].to_numpy() >= 0) & (frame["item"].to_numpy() >= 0) & frame["time"].notna().to_numpy()
    return frame[keep]


def time_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows sorted by (time, input row order); the frame itself when already in that order."""
    t = frame["time"].to_numpy()
    idx = frame.index.to_numpy()
    dt, di = np.diff(t), np.diff(idx)
    if ((dt > 0) | ((dt == 0) & (di > 0))).all():
        return frame
    if (di > 0).all():  # rows in input order: a stable sort on time alone keeps that order in ties
        return frame.iloc[np.argsort(t, kind="stable")]
    return frame.iloc[np.lexsort((idx, t))]


def keep_min_rating(frame: pd.DataFrame, min_rating: float) -> pd.DataFrame:
    """The rows rated at least ``min_rating`` (a row without a rating is dropped)."""
    return frame[(frame["rating"] >= min_rating).to_numpy()]


def drop_repeats(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item): the earliest in (time, input row order); rows come back in that order."""
    ordered = time_order(frame)
    n_items = int(ordered["item"].max()) + 1 if len(ordered) else 1
    key = ordered["user"].to_numpy().astype(np.int64) * n_items + ordered["item"].to_numpy()
    by_key = np.argsort(key, kind="stable")  # within one pair: time order, so the first is the earliest
    sorted_key = key[by_key]
    del key
    first = np.ones(len(sorted_key), dtype=bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    keep = np.zeros(len(sorted_key), dtype=bool)
    keep[by_key[first]] = True
    return ordered[keep]


def keep_items(frame: pd.DataFrame, usable: np.ndarray) -> pd.DataFrame:
    """The rows whose item code ``i`` has ``usable[i]`` (here: the items with a usable title)."""
    return frame[usable[frame["item"].to_numpy()]]


def _kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Which rows survive the iterative k-core (every user and item with >= k rows, until stable)."""
    rows = np.arange(len(users))
    while len(rows):
        u, i = users[rows], items[rows]
        ok = (np.bincount(u)[u] >= k) & (np.bincount(i)[i] >= k)
        if ok.all():
            break
        rows = rows[ok]
    mask = np.zeros(len(users), dtype=bool)
    mask[rows] = True
    return mask


def kcore(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """The iterative k-core over all interactions: drop users and items with fewer than ``k`` rows
    until none is left (``k`` <= 1: the frame unchanged)."""
    if k <= 1:
        return frame
    return frame[_kcore_mask(frame["user"].to_numpy(), frame["item"].to_numpy(), k)]


def kcore_sizes(frame: pd.DataFrame, ks: range = range(1, 6)) -> dict[int, tuple[int, int]]:
    """``{k: (users, items)}`` that the k-core of ``frame`` keeps, for each k of ``ks``."""
    users, items = frame["user"].to_numpy(), frame["item"].to_numpy()
    out = {}
    for k in ks:
        mask = _kcore_mask(users, items, k) if k > 1 else np.ones(len(users), dtype=bool)
        out[k] = (len(np.unique(users[mask])), len(np.unique(items[mask])))
    return out


def cut_points(n: int, ratios: tuple[float, float, float]) -> tuple[int, int]:
    """Row counts ``(c1, c2)``: train = rows [0, c1), valid = [c1, c2), test = [c2, n)."""
    c1 = int(np.floor(n * ratios[0] + 0.5))
    c2 = int(np.floor(n * (ratios[0] + ratios[1]) + 0.5))
    return min(c1, n), min(max(c2, c1), n)


def split_time(frame: pd.DataFrame, ratios: tuple[float, float, float]) -> pd.DataFrame:
    """The global-time split: all rows in (time, input row order), the first ``ratios[0]`` of them
    train, the next ``ratios[1]`` valid, the rest test; adds ``part`` (0/1/2)."""
    ordered = time_order(frame)
    c1, c2 = cut_points(len(ordered), ratios)
    part = np.full(len(ordered), 2, dtype=np.int8)
    part[:c1], part[c1:c2] = 0, 1
    return ordered.assign(part=part)


def split_loo(frame: pd.DataFrame) -> pd.DataFrame:
    """Leave-one-out: per user (in time order) the last item is test, the one before valid, the rest
    train; a user with fewer than 3 items has them all in train. Adds ``part`` (0/1/2)."""
    ordered = time_order(frame)
    from_end = ordered.groupby("user", sort=False).cumcount(ascending=False).to_numpy()
    size = ordered.groupby("user", sort=False)["user"].transform("size").to_numpy()
    part = np.zeros(len(ordered), dtype=np.int8)
    part[(size >= 3) & (from_end == 0)] = 2
    part[(size >= 3) & (from_end == 1)] = 1
    return ordered.assign(part=part)


@dataclass
class Numbering:
    """``users[u]`` / ``items[i]``: the code (index into the raw ids) of 0-based user u / item i."""

    users: np.ndarray
    items: np.ndarray


def number(frame: pd.DataFrame) -> tuple[pd.DataFrame, Numbering]:
    """Adds ``uid``/``iid`` (0-based): users by first interaction, items by first appearance, both
    in (time, input row order); the frame comes back in that order."""
    ordered = time_order(frame)
    users = pd.unique(ordered["user"].to_numpy())
    items = pd.unique(ordered["item"].to_numpy())
    uid = np.empty(int(users.max()) + 1 if len(users) else 0, dtype=np.int32)
    iid = np.empty(int(items.max()) + 1 if len(items) else 0, dtype=np.int32)
    uid[users] = np.arange(len(users), dtype=np.int32)
    iid[items] = np.arange(len(items), dtype=np.int32)
    out = ordered.assign(uid=uid[ordered["user"].to_numpy()], iid=iid[ordered["item"].to_numpy()])
    return out, Numbering(users, items)


@dataclass
class Sequences:
    """One part's per-user item lists in CSR form: user u's 0-based items, oldest first, are
    ``items[offsets[u]:offsets[u + 1]]``."""

    offsets: np.ndarray
    items: np.ndarray

    def of(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user]: self.offsets[user + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def sequences(frame: pd.DataFrame, n_users: int) -> dict[str, Sequences]:
    """``{"train"|"valid"|"test": Sequences}`` of a numbered, split frame; items in (time, input
    row order) within each user."""
    ordered = time_order(frame)
    out = {}
    for p, name in enumerate(PARTS):
        rows = ordered[ordered["part"].to_numpy() == p]
        uid = rows["uid"].to_numpy()
        by_user = np.argsort(uid, kind="stable")
        counts = np.bincount(uid, minlength=n_users)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        out[name] = Sequences(offsets, rows["iid"].to_numpy()[by_user])
    return out
