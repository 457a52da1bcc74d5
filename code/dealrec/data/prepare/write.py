"""Writing the data-set folder in the authors' format (``data/README.md``), all or nothing.

The files go to a temporary sibling folder (``.<NAME>.*.tmp``) that is renamed to ``<NAME>`` once
every file is complete; ``--overwrite`` renames the old folder away first and removes it after.
The ``.npy`` files are pickled plain dicts saved with ``np.save(path, obj, allow_pickle=True)``,
as the authors saved them, so ``np.load(path, allow_pickle=True).item()`` returns the dict. The
per-user lists share one int object per item id, so the dicts of a large log stay small.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dealrec.core.files import jsonable, write_error
from dealrec.data.prepare.errors import PrepareError
from dealrec.data.prepare.steps import Sequences

USER_CHUNK = 20_000
SEQ_FILES = {"train": "sequential_train.txt", "valid": "sequential_valid.txt", "test": "sequential_test.txt"}
DICT_FILES = {"train": "training_dict.npy", "valid": "validation_dict.npy", "test": "testing_dict.npy"}


def exists_error(target: Path) -> PrepareError:
    return PrepareError(f"--out_dir {target.parent}: {target.name}/ already exists; pass --overwrite to "
                        "replace it, or choose another --name")


@contextlib.contextmanager
def staged_folder(target: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside ``target``, renamed to ``target`` when the block completes and
    removed when it fails."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 -> what mkdir would give
    except OSError as e:
        raise write_error(target, e, "--out_dir") from e
    try:
        yield tmp
        _publish(tmp, target, overwrite)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(target, e, "--out_dir") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def _publish(tmp: Path, target: Path, overwrite: bool) -> None:
    if not (target.exists() or target.is_symlink()):
        try:
            os.rename(tmp, target)
        except OSError:
            if target.exists():  # another run made it meanwhile
                raise exists_error(target) from None
            raise
        return
    if not overwrite:
        raise exists_error(target)
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    os.rename(target, old)
    os.rename(tmp, target)
    _remove(old)


def _user_chunks(seqs: Sequences, n_users: int, objects: list[Any]) -> Iterator[tuple[int, list[list[Any]]]]:
    """``(first user, [per-user list of objects[item], ...])`` for blocks of USER_CHUNK users."""
    for u0 in range(0, n_users, USER_CHUNK):
        u1 = min(u0 + USER_CHUNK, n_users)
        offs = seqs.offsets[u0: u1 + 1].tolist()
        chunk = [objects[i] for i in seqs.items[offs[0]: offs[-1]].tolist()]
        base = offs[0]
        yield u0, [chunk[offs[k] - base: offs[k + 1] - base] for k in range(u1 - u0)]


def write_sequences(path: Path, seqs: Sequences, n_users: int) -> None:
    """``uid item item ...`` per user (1-based ids), one line for every user."""
    tokens = [str(i + 1) for i in range(int(seqs.items.max()) + 1 if len(seqs.items) else 0)]
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for u0, lists in _user_chunks(seqs, n_users, tokens):
            f.write("".join(" ".join([str(u0 + k + 1), *items]) + "\n" for k, items in enumerate(lists)))


def split_dict(seqs: Sequences, n_users: int, ints: list[int]) -> dict[int, list[int]]:
    """``{user: [item, ...]}`` (0-based) for every user; ``ints[i]`` is the shared int object of item i."""
    out: dict[int, list[int]] = {}
    for u0, lists in _user_chunks(seqs, n_users, ints):
        out.update(zip(range(u0, u0 + len(lists)), lists))
    return out


def save_npy(path: Path, obj: Any) -> None:
    np.save(path, obj, allow_pickle=True)


def write_maps(root: Path, user_ids: list[str], item_ids: list[str], titles: list[str]) -> None:
    """``user_map``/``item_map`` (raw id -> 0-based), their reverses and ``title_maps``."""
    save_npy(root / "user_map.npy", {raw: u for u, raw in enumerate(user_ids)})
    save_npy(root / "user_map_reverse.npy", dict(enumerate(user_ids)))
    save_npy(root / "item_map.npy", {raw: i for i, raw in enumerate(item_ids)})
    save_npy(root / "item_map_reverse.npy", dict(enumerate(item_ids)))
    save_npy(root / "title_maps.npy", {
        "seqid2title": {str(i + 1): t for i, t in enumerate(titles)},
        "recid2title": dict(enumerate(titles)),
        "item2title": dict(zip(item_ids, titles)),
    })


def write_folder(root: Path, seqs: dict[str, Sequences], user_ids: list[str], item_ids: list[str],
                 titles: list[str], card: dict[str, Any]) -> None:
    """Every file of the data-set folder ``root`` (``user_ids[u]``/``item_ids[i]``: raw ids of the
    0-based user u / item i; ``titles[i]``: item i's title)."""
    n_users = len(user_ids)
    ints = list(range(len(item_ids)))
    for part, s in seqs.items():
        write_sequences(root / SEQ_FILES[part], s, n_users)
        save_npy(root / DICT_FILES[part], split_dict(s, n_users, ints))
    write_maps(root, user_ids, item_ids, titles)
    text = json.dumps(jsonable(card), indent=2, ensure_ascii=False) + "\n"
    (root / "dataset.json").write_text(text, encoding="utf-8")
