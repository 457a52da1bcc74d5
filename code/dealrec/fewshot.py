"""Alpaca-style examples built from a :class:`~dealrec.data.RecData` (train / valid / test).

- train: history = train items except the last, target = the last train item (one per user,
  in user order: the "full-training prompt set" that the effort score is computed on);
- valid: history = all train items, target = the first validation item;
- test:  history = train + validation items, output = all test-item titles.

Every example also carries ``user`` (0-based index into ``sequential_train.txt``) and the
item ids (0-based) of its target(s).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

from .data import RecData
from .prompts import build_example, clean_title

SPLITS = ("train", "valid", "test")


def user_example(
    data: RecData, user: int, split: str, tokenizer: Any = None, cutoff_len: int = 512
) -> dict[str, Any] | None:
    """The example of ``user`` for ``split``; None when the user has none."""
    titles = data.titles
    if split == "train":
        seq = data.train[user]
        if not seq:
            return None
        history, targets = seq[:-1], [seq[-1]]
    elif split == "valid":
        if not data.valid[user]:
            return None
        history, targets = data.train[user], [data.valid[user][0]]
    elif split == "test":
        if not data.test[user]:
            return None
        history, targets = data.train[user] + data.valid[user], list(data.test[user])
    else:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ex = build_example(data.name, [titles[i] for i in history], titles[targets[0]], tokenizer, cutoff_len)
    ex = dict(ex)
    if split == "test":
        ex["output"] = [clean_title(titles[i]) for i in targets]
    ex["user"] = int(user)
    ex["target_ids"] = [int(i) for i in targets]
    return ex


def build_examples(
    data: RecData,
    users: Iterable[int],
    split: str,
    tokenizer: Any = None,
    cutoff_len: int = 512,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Examples for ``users`` (in the given order), skipping users without one."""
    users = list(users)
    bad = [u for u in users if not 0 <= int(u) < data.n_users]
    if bad:
        raise ValueError(
            f"user indices out of range for {data.name} ({data.n_users} users): {bad[:5]}; "
            "was the selection made for another data set or --max_users?"
        )
    out = []
    for u in tqdm(users, desc=f"{split} prompts", disable=not progress, leave=False):
        ex = user_example(data, int(u), split, tokenizer, cutoff_len)
        if ex is not None:
            out.append(ex)
    return out
