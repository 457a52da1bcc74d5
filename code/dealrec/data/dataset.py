"""The typed data set: per-user train/valid/test item sequences and item titles (§5.1).

Layout of ``data/<name>/`` (the authors' release, see ``data/README.md``):
``sequential_{train,valid,test}.txt`` (``uid item item ...``, 1-based "seq ids"),
``{training,validation,testing}_dict.npy`` (0-based dicts, optional cross-check),
``title_maps.npy`` (``seqid2title``/``recid2title``), and optionally the data card
``dataset.json`` written by ``code/prepare/prepare.py`` (its ``prompt`` phrases are registered for
the data set's name when the folder is loaded, so a new data set needs no code edit).

Inside this package every item id is 0-based (seq id - 1); the surrogate adds 1 again so
that index 0 can be padding. The ``.npy`` files are pickles: they are read with a
restricted unpickler that only lets plain containers, strings, numbers and numpy arrays out.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dealrec.data.prompts import DATASET_PHRASES, register_dataset

REQUIRED_FILES = ("sequential_train.txt", "sequential_valid.txt", "sequential_test.txt", "title_maps.npy")
DICT_FILES = {"train": "training_dict.npy", "valid": "validation_dict.npy", "test": "testing_dict.npy"}
CARD_FILE = "dataset.json"  # the data card written by code/prepare/prepare.py (optional)


class DataError(ValueError):
    """Bad or missing data; the message names the file and the fix."""


_ALLOWED_GLOBALS = {
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "str"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "bool"),
    ("builtins", "bytes"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: Path) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            if module.startswith("numpy._core") and not hasattr(np, "_core"):
                module = module.replace("numpy._core", "numpy.core")
            return super().find_class(module, name)
        raise DataError(
            f"{self.source}: refusing to unpickle {module}.{name}; only plain containers, str, "
            "int, float and numpy arrays/scalars may be stored in a data file. Re-create the file "
            "with np.save of a plain dict, or use the authors' release."
        )


def load_pickled_npy(path: str | Path) -> Any:
    """Load a ``.npy`` file that may hold a pickled object, allowing only safe types."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; copy it again from the authors' release")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the file's permissions") from e
    with f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except (ValueError, EOFError, SyntaxError) as e:
            raise DataError(f"{path}: not a .npy file ({str(e).splitlines()[0][:120]}); "
                            "copy it again from the authors' release") from None
        if not dtype.hasobject:
            try:
                return np.fromfile(f, dtype=dtype).reshape(shape, order="F" if fortran else "C")
            except ValueError:
                raise DataError(f"{path}: truncated (fewer values than its header's shape {shape}); "
                                "copy it again from the authors' release") from None
        try:
            obj = _RestrictedUnpickler(f, path).load()
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a data error
            raise DataError(f"{path}: cannot unpickle ({type(e).__name__}: {str(e)[:120]}); the file is "
                            "truncated or corrupt, copy it again from the authors' release") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    return obj


def _read_sequences(path: Path) -> list[list[int]]:
    """Read ``uid item item ...`` lines; returns 0-based item lists in line order."""
    seqs: list[list[int]] = []
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the file's permissions") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#x}); the file must hold "
                        "lines 'uid item item ...' of decimal numbers") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty; it needs one line 'uid item ...' per user "
                        "(copy it again from the authors' release)")
    if not text.endswith("\n"):
        last = text.rsplit("\n", 1)[-1]
        if last and not last.replace(" ", "").replace("\t", "").isdigit():
            raise DataError(f"{path}: the last line is cut ({last[-20:]!r}); the file looks truncated, copy it again")
    with io.StringIO(text) as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                raise DataError(f"{path}:{lineno}: empty line; every user needs a line 'uid item ...'")
            try:
                uid, *items = (int(p) for p in parts)
            except ValueError as e:
                raise DataError(f"{path}:{lineno}: non-integer token ({e})") from e
            if uid != lineno:
                raise DataError(
                    f"{path}:{lineno}: user id {uid} on line {lineno}; users must be 1-based and in line order"
                )
            if any(i < 1 for i in items):
                raise DataError(f"{path}:{lineno}: item ids are 1-based seq ids, found one < 1")
            seqs.append([i - 1 for i in items])
    return seqs


@dataclass
class RecData:
    """One data set. Item ids are 0-based; ``titles[i]`` is item i's title."""

    name: str
    root: Path
    train: list[list[int]]
    valid: list[list[int]]
    test: list[list[int]]
    titles: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.train)

    @property
    def n_items(self) -> int:
        return len(self.titles)

    @property
    def n_train_interactions(self) -> int:
        return sum(len(s) for s in self.train)

    @property
    def test_users(self) -> list[int]:
        return [u for u, s in enumerate(self.test) if s]

    @property
    def valid_users(self) -> list[int]:
        return [u for u, s in enumerate(self.valid) if s]

    def subset_users(self, n: int | None) -> RecData:
        """The first ``n`` users (all when ``n`` is None); item ids and titles unchanged."""
        if n is None or n >= self.n_users:
            return self
        if n <= 0:
            raise DataError(f"--max_users must be positive, got {n}")
        return RecData(
            self.name, self.root, self.train[:n], self.valid[:n], self.test[:n], self.titles,
            {**self.meta, "max_users": n},
        )

    def summary(self) -> dict[str, int]:
        return {
            "users": self.n_users,
            "items": self.n_items,
            "train_interactions": self.n_train_interactions,
            "valid_interactions": sum(len(s) for s in self.valid),
            "test_interactions": sum(len(s) for s in self.test),
            "valid_users": len(self.valid_users),
            "test_users": len(self.test_users),
        }


def dataset_dir(data_dir: str | Path, data_name: str) -> Path:
    return Path(data_dir) / data_name


def _check_folder(root: Path, data_name: str) -> None:
    """The data set folder exists and holds every required file (the fix: where the files come from)."""
    if not root.is_dir():
        raise DataError(
            f"data set folder {root} does not exist. Put the authors' files under data/{data_name}/ "
            f"(see data/README.md) or run `bash tools/setup.sh` to link data/games, or pass --data_dir."
        )
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    if missing:
        raise DataError(
            f"{root}: missing {', '.join(missing)}. Copy the complete data set folder from the "
            "authors' release (see data/README.md)."
        )


def _register_phrases(root: Path, data_name: str) -> None:
    """The prompt phrases of the data set, known before any work: its data card's
    (``dataset.json`` with ``prompt.instruction`` and ``prompt.input_prefix``, written by
    ``code/prepare/prepare.py``), else those registered for ``data_name`` (the paper's data sets)."""
    card = root / CARD_FILE
    if card.is_file():
        try:
            prompt = json.loads(card.read_text(encoding="utf-8")).get("prompt")
        except (OSError, ValueError, AttributeError) as e:
            raise DataError(f"{card}: not a readable data card ({e}); write it again with code/prepare/prepare.py") \
                from None
        if prompt is not None:
            if not (isinstance(prompt, dict)
                    and all(isinstance(prompt.get(k), str) and prompt[k].strip() for k in ("instruction", "input_prefix"))):
                raise DataError(f"{card}: 'prompt' needs non-empty 'instruction' and 'input_prefix' texts; "
                                "write the card again with code/prepare/prepare.py --item_noun ...")
            register_dataset(data_name, prompt["instruction"].strip(), prompt["input_prefix"].strip())
            return
    if data_name not in DATASET_PHRASES:
        raise DataError(
            f"{root}: no prompt phrases for the data set {data_name!r} (known: {', '.join(sorted(DATASET_PHRASES))}); "
            f"give it a data card {card} with a 'prompt' entry (code/prepare/prepare.py --item_noun writes one) "
            "or register them with dealrec.data.prompts.register_dataset"
        )


def _read_splits(root: Path) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """The train/valid/test sequences, one per user in each file, with at least one training item."""
    train = _read_sequences(root / "sequential_train.txt")
    valid = _read_sequences(root / "sequential_valid.txt")
    test = _read_sequences(root / "sequential_test.txt")
    if not (len(train) == len(valid) == len(test)):
        raise DataError(
            f"{root}: user counts disagree: train {len(train)}, valid {len(valid)}, test {len(test)} lines; "
            "the three sequential_*.txt files need one line per user each."
        )

    if not any(train):
        raise DataError(f"{root / 'sequential_train.txt'}: no user has a training item; check the file")
    return train, valid, test


def _read_titles(tpath: Path) -> dict[int, str]:
    """``title_maps.npy``'s ``seqid2title`` as 1-based item id -> non-empty text (the LLM recommends
    by title, so every title must be readable text)."""
    maps = load_pickled_npy(tpath)
    if not isinstance(maps, dict) or not isinstance(maps.get("seqid2title"), dict):
        raise DataError(f"{tpath}: expected a dict with a dict under key 'seqid2title' (seq id -> title)")
    seqid2title = {}
    for k, v in maps["seqid2title"].items():
        try:
            sid = int(k)
        except (TypeError, ValueError):
            raise DataError(f"{tpath}: seqid2title key {k!r} is not an item id (1-based int)") from None
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{tpath}: the title of item {sid} is not UTF-8 ({v[:30]!r}); "
                                "store titles as UTF-8 text") from None
        if not isinstance(v, str):
            raise DataError(f"{tpath}: the title of item {sid} is a {type(v).__name__}, not text")
        if not v.strip():
            raise DataError(f"{tpath}: item {sid} has an empty title; every item needs one (the LLM "
                            "recommends by title)")
        seqid2title[sid] = v
    if not seqid2title or min(seqid2title) < 1:
        raise DataError(f"{tpath}: 'seqid2title' must map 1-based item ids to titles "
                        f"({'empty' if not seqid2title else f'found id {min(seqid2title)}'})")
    return seqid2title


def _catalogue_size(root: Path, seqid2title: dict[int, str]) -> int:
    """The number of items: the largest titled id, or ``item_map.npy``'s length where that is larger."""
    n_items = max(seqid2title)
    item_map = root / "item_map.npy"
    if item_map.is_file():
        imap = load_pickled_npy(item_map)
        if not hasattr(imap, "__len__"):
            raise DataError(f"{item_map}: expected a dict item -> id")
        n_items = max(n_items, len(imap))
    return n_items


def _check_item_ids(root: Path, n_items: int, train: list[list[int]], valid: list[list[int]],
                    test: list[list[int]]) -> None:
    """Every item id of the sequences is in the catalogue; one beyond it means a wrong sequence file."""
    for part in ("train", "valid", "test"):
        seqs = {"train": train, "valid": valid, "test": test}[part]
        for u, s in enumerate(seqs):
            if s and max(s) + 1 > n_items:
                raise DataError(
                    f"{root / f'sequential_{part}.txt'}:{u + 1}: item id {max(s) + 1} is beyond the catalogue "
                    f"({n_items} items in title_maps.npy); item ids are 1-based seq ids of title_maps.npy's "
                    "'seqid2title' (a file from another data set or corrupted?)"
                )


def _title_list(root: Path, seqid2title: dict[int, str], n_items: int) -> list[str]:
    """The titles of items 0 … ``n_items`` - 1 (0-based); every item must have one."""
    missing_titles = [i for i in range(1, n_items + 1) if i not in seqid2title]
    if missing_titles:
        raise DataError(
            f"{root / 'title_maps.npy'}: {len(missing_titles)} item(s) without a title "
            f"(seq ids {missing_titles[:5]}...); every item id used must have an entry in 'seqid2title'."
        )
    return [seqid2title[i] for i in range(1, n_items + 1)]


def _check_dict_file(f: Path, part: str, seqs: list[list[int]]) -> None:
    """The optional ``*_dict.npy`` form of a split (0-based user -> item list) holds the same
    interactions as ``sequential_<part>.txt``: a mismatch means one of the two files is wrong."""
    d = load_pickled_npy(f)
    if not isinstance(d, dict):
        raise DataError(f"{f}: expected a pickled dict user -> item list")
    for u, items in d.items():
        try:
            u, items = int(u), [int(i) for i in items]
        except (TypeError, ValueError):
            raise DataError(f"{f}: entry {u!r} is not user -> list of item ids; re-export it from "
                            f"sequential_{part}.txt") from None
        if not 0 <= u < len(seqs) or items != seqs[u]:
            raise DataError(
                f"{f}: user {u} disagrees with sequential_{part}.txt; the text and dict forms "
                "must hold the same interactions (re-export one from the other)."
            )
    n_nonempty = sum(1 for s in seqs if s)
    n_dict = sum(1 for v in d.values() if len(v))
    if n_dict != n_nonempty:
        raise DataError(
            f"{f}: {n_dict} users with items but sequential_{part}.txt has {n_nonempty}; "
            "the text and dict forms must agree."
        )


def load_dataset(data_dir: str | Path, data_name: str, check_dicts: bool = True) -> RecData:
    """Load and validate ``<data_dir>/<data_name>/``; every problem is a :class:`DataError`."""
    root = dataset_dir(data_dir, data_name)
    _check_folder(root, data_name)
    _register_phrases(root, data_name)
    train, valid, test = _read_splits(root)
    seqid2title = _read_titles(root / "title_maps.npy")
    n_items = _catalogue_size(root, seqid2title)
    _check_item_ids(root, n_items, train, valid, test)
    titles = _title_list(root, seqid2title, n_items)
    if check_dicts:  # the dict files are optional: each one present is cross-checked
        for part, seqs in (("train", train), ("valid", valid), ("test", test)):
            f = root / DICT_FILES[part]
            if f.is_file():
                _check_dict_file(f, part, seqs)
    return RecData(data_name, root, train, valid, test, titles)
