"""Alpaca-style examples built from a :class:`~dealrec.data.dataset.RecData` (train / valid / test).

- train: history = train items except the last, target = the last train item (one per user,
  in user order: the "full-training prompt set" that the effort score is computed on);
- valid: history = all train items, target = the first validation item;
- test:  history = train + validation items, output = all test-item titles.

Every example also carries ``user`` (0-based index into ``sequential_train.txt``) and the
item ids (0-based) of its target(s).

:func:`write_fewshot` writes the three alpaca JSON files of the fine-tuning stage and
:func:`load_selection` reads a pruning result ``selected/{data}_{n}.pt``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dealrec.core.cache import cache_key, cached, manifest_path, write_manifest
from dealrec.core.files import check_writable, load_checked, read_json, write_json
from dealrec.core.locking import output_lock
from dealrec.core.logs import LOG
from dealrec.core.model_id import model_id
from dealrec.data.dataset import DataError, RecData
from dealrec.data.prompts import build_example, clean_title


@dataclass
class FewshotConfig:
    """The settings of ``gen_fewshot.py`` (the original's names)."""

    data_dir: str = "data"  # folder holding <data_name>/
    data_name: str = "games"
    n_sample: int = 1024  # number of selected users (the file label)
    # the selection's strategy: the files are labelled <n> for dealrec, <n>_<strategy> otherwise
    strategy: str = "dealrec"
    selected: str | None = None  # selection file (default code/prune/selected/{data}_{label}.pt)
    base_model: str | None = None  # tokenizer for truncation (default: the embedded model)
    cutoff_len: int = 512
    max_test_users: int | None = None  # only the first N test users
    out_dir: str | None = None  # default: code/finetune/data/<data_name>/
    overwrite: bool = False  # rewrite files that are up to date

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


# --------------------------------------------------------------------------------------------
# Few-shot files for fine-tuning (the original ``code/finetune/data/gen_fewshot.py``)
# --------------------------------------------------------------------------------------------


def load_selection(path: str | os.PathLike, data: RecData) -> list[int]:
    """The selected users (0-based indices) of ``selected/{data}_{n}.pt``, validated.

    The file holds a plain list (or 1-D tensor) of user indices, loaded with
    ``torch.load(weights_only=True)``. Its manifest ``<file>.json``, when present, must name
    the same data set (``data_name``, top level or under ``params``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"selection file {path} not found; run the pruning stage first (cd code/prune && "
            f"sh prune.sh {data.name} SASRec 0.3 50 <log_name> <gpu_id|cpu> --n_fewshot N) or pass --selected FILE "
            "(use n_sample = number of users for full-data fine-tuning)"
        )
    mpath = manifest_path(path)
    if mpath.is_file():
        try:
            manifest = read_json(mpath)
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{mpath}: unreadable manifest ({e})") from e
        params = manifest.get("params") if isinstance(manifest.get("params"), dict) else {}
        name = manifest.get("data_name", params.get("data_name"))
        if name is not None and name != data.name:
            raise DataError(
                f"{path} was selected on data set {name!r} (see {mpath.name}) but the few-shot data "
                f"set is {data.name!r}; pass the selection file of {data.name!r}"
            )
    try:
        obj = load_checked(path, "--selected", "a selection file (a list of user indices written by prune.py, "
                                               "selected/<data>_<n>.pt)")
    except ValueError as e:
        raise DataError(str(e)) from None
    if isinstance(obj, torch.Tensor):
        if obj.dim() != 1 or obj.is_floating_point():
            raise DataError(f"{path}: expected a 1-D integer tensor of user indices, got {tuple(obj.shape)} {obj.dtype}")
        obj = obj.tolist()
    if not isinstance(obj, (list, tuple)) or not all(isinstance(u, int) and not isinstance(u, bool) for u in obj):
        raise DataError(f"{path}: expected a plain list of 0-based user indices (ints)")
    users = [int(u) for u in obj]
    if not users:
        raise DataError(f"{path}: the selection is empty")
    bad = [u for u in users if not 0 <= u < data.n_users]
    if bad:
        raise DataError(
            f"{path}: user indices out of range for {data.name} ({data.n_users} users, 0-based): {bad[:5]}; "
            "was the selection made for another data set or with --max_users?"
        )
    if len(set(users)) != len(users):
        raise DataError(f"{path}: {len(users) - len(set(users))} duplicate user indices; a selection lists each user once")
    return users


def check_fewshot_args(n_sample: int, cutoff_len: int, max_test_users: int | None) -> None:
    """gen_fewshot.py's numbers, checked before any file is read."""
    if n_sample < 1:
        raise ValueError(f"--n_sample must be ≥ 1, got {n_sample}")
    if cutoff_len < 8:
        raise ValueError(f"--cutoff_len must be ≥ 8, got {cutoff_len}")
    if max_test_users is not None and max_test_users < 1:
        raise ValueError(f"--max_test_users must be ≥ 1 (or omitted), got {max_test_users}")


def fewshot_paths(out_dir: str | os.PathLike, n_label: int | str) -> dict[str, Path]:
    """``train/train-{n}.json``, ``valid/valid-{n}.json``, ``test/test.json`` under ``out_dir``."""
    out = Path(out_dir)
    return {
        "train": out / "train" / f"train-{n_label}.json",
        "valid": out / "valid" / f"valid-{n_label}.json",
        "test": out / "test" / "test.json",
    }


def write_fewshot(
    data: RecData,
    selected_users: Sequence[int],
    out_dir: str | os.PathLike,
    tokenizer: Any,
    cutoff_len: int = 512,
    n_label: int | str | None = None,
    *,
    selection_file: str | os.PathLike | None = None,
    base_model: str | None = None,
    max_test_users: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    splits: Sequence[str] = SPLITS,
) -> dict[str, Path]:
    """Write the alpaca JSON files (train / valid of the selected users, test of every test user).

    - train: the selected users' last training item as target (in selection order);
    - valid: the selected users that have a validation item;
    - test: every user with test items, in user order (the first ``max_test_users`` when given).

    Each file gets a manifest ``<file>.json`` (data set, n, selection, cutoff, base model); a
    file whose manifest key is unchanged is kept (``overwrite`` rewrites it). ``splits`` limits
    the files written (the paths of all three are returned).
    """

    users = [int(u) for u in selected_users]
    n_label = len(users) if n_label is None else n_label
    paths = fewshot_paths(out_dir, n_label)
    test_users = data.test_users
    if max_test_users is not None:
        if max_test_users <= 0:
            raise ValueError(f"max_test_users must be positive, got {max_test_users}")
        test_users = test_users[:max_test_users]
    sel_hash = cache_key({"users": users})
    common = {
        "data_name": data.name,
        "n_users": data.n_users,
        "cutoff_len": int(cutoff_len),
        "base_model": model_id(base_model),
        "prompt": "alpaca-v1",
    }
    plans = {
        "train": ({**common, "split": "train", "n": str(n_label), "selection": sel_hash}, users),
        "valid": ({**common, "split": "valid", "n": str(n_label), "selection": sel_hash}, users),
        "test": ({**common, "split": "test", "max_test_users": max_test_users}, test_users),
    }
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"splits must be among {SPLITS}, got {sorted(unknown)}")
    check_writable(out_dir, "--out_dir")
    with output_lock(out_dir, flag="--out_dir"):
        _write_plans(data, plans, paths, splits, tokenizer, cutoff_len, n_label, selection_file, base_model,
                     overwrite, progress)
    return paths


def _write_plans(data: RecData, plans: dict, paths: dict[str, Path], splits: Sequence[str], tokenizer: Any,
                 cutoff_len: int, n_label: Any, selection_file: Any, base_model: Any, overwrite: bool,
                 progress: bool) -> None:

    for split, (key, split_users) in plans.items():
        if split not in splits:
            continue
        path = paths[split]
        if not overwrite and cached(path, key):
            LOG.info("%s: up to date, kept", path)
            continue
        examples = build_examples(data, split_users, split, tokenizer, cutoff_len, progress=progress)
        write_json(path, examples)
        write_manifest(
            path, key,
            data_name=data.name,
            split=split,
            n=str(n_label),
            n_examples=len(examples),
            selection_file=str(selection_file) if selection_file else None,
            cutoff_len=int(cutoff_len),
            base_model=model_id(base_model),
        )
        LOG.info("wrote %s (%d examples)", path, len(examples))
