"""The data loader: the real Games set, synthetic edge cases, and every DataError path."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from dealrec.data.dataset import DataError, load_dataset, load_pickled_npy
from dealrec.data.prompts import build_example

# -- real Games ---------------------------------------------------------------------------------


def test_games_counts(games):
    s = games.summary()
    assert s["users"] == games.n_users == 49_156
    assert s["items"] == games.n_items == 17_332
    assert s["train_interactions"] == 299_987
    assert s["test_users"] == len(games.test_users) == 8_696
    assert s["valid_users"] == len(games.valid_users) == 9_609
    assert sum(1 for seq in games.train if len(seq) < 3) == 7_935
    assert len(games.train) == len(games.valid) == len(games.test) == 49_156


def test_games_ids_are_zero_based(games):
    every = [i for part in (games.train, games.valid, games.test) for seq in part for i in seq]
    assert min(every) == 0
    assert max(every) == games.n_items - 1
    assert len(games.titles) == 17_332
    # The first line of sequential_train.txt is "1 1 2 3 ..." (1-based seq ids).
    assert games.train[0][:3] == [0, 1, 2]
    # seqid2title['1'] is the title of 0-based item 0.
    maps = load_pickled_npy(games.root / "title_maps.npy")
    assert games.titles[0] == maps["seqid2title"]["1"] == maps["recid2title"][0]
    assert all(isinstance(t, str) for t in games.titles)


def test_games_test_users_match_raw_lines(games):
    lines = (games.root / "sequential_test.txt").read_text().splitlines()
    with_items = [u for u, line in enumerate(lines) if len(line.split()) > 1]
    assert games.test_users == with_items
    assert len(with_items) == 8_696


# -- synthetic data set -------------------------------------------------------------------------


def test_synthetic_loads_edge_cases(tiny_dataset):
    ds = tiny_dataset()
    data = load_dataset(ds.data_dir, ds.name)
    assert data.n_users == 5
    assert data.n_items == 8
    assert data.train == ds.train
    assert data.valid == ds.valid
    assert data.test == ds.test
    assert data.train[1] == []  # empty train sequence
    assert data.train[2] == [5]  # length-1 train sequence
    assert data.titles == ds.titles  # raw titles, newlines included (prompts clean them)
    assert data.titles[1] == data.titles[2] == "Duplicate Title"
    assert data.titles[3] == "Pokémon — Édition Spéciale ★ 日本語版"
    assert ";" in data.titles[4] and '"' in data.titles[4] and "'" in data.titles[4]
    assert "\n" in data.titles[5]
    assert data.test_users == [0, 1, 3, 4]
    assert data.valid_users == [0, 2, 4]
    assert data.n_train_interactions == 4 + 0 + 1 + 5 + 2


def test_synthetic_without_optional_files(tiny_dataset):
    ds = tiny_dataset(dicts=False, item_map=False)
    data = load_dataset(ds.data_dir, ds.name)
    assert data.train == ds.train and data.n_items == 8


def test_item_count_from_item_map(tiny_dataset):
    """item_map.npy may list items that no sequence uses; they still need titles."""
    ds = tiny_dataset(titles=TEN_TITLES, train=[[0, 1, 2]], valid=[[3]], test=[[4]])
    assert load_dataset(ds.data_dir, ds.name).n_items == 10


TEN_TITLES = [f"Item {i}" for i in range(10)]


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


@pytest.mark.parametrize("where", ["title_maps", "dict", "direct"])
def test_malicious_pickle_is_refused_and_not_run(tiny_dataset, tmp_path, where):
    ds = tiny_dataset()
    marker = tmp_path / "pwned.txt"
    evil = _Evil(str(marker))
    if where == "title_maps":
        target = ds.root / "title_maps.npy"
        maps = {"seqid2title": {str(i + 1): t for i, t in enumerate(ds.titles)}}
        maps["seqid2title"]["1"] = evil
        np.save(target, maps)
    elif where == "dict":
        target = ds.root / "training_dict.npy"
        np.save(target, np.array([evil], dtype=object))
    else:
        # Hand-written .npy: a v1.0 header declaring an object array, then a raw pickle.
        target = ds.root / "raw.npy"
        with open(target, "wb") as f:  # the header writer writes the magic string too
            np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
            pickle.dump(evil, f, protocol=2)
    with pytest.raises(DataError) as err:
        if where == "direct":
            load_pickled_npy(target)
        else:
            load_dataset(ds.data_dir, ds.name)
    msg = str(err.value)
    assert "refusing to unpickle" in msg
    assert f"{os.system.__module__}.system" in msg  # posix.system on Linux
    assert target.name in msg
    assert not marker.exists(), "the pickle payload was executed"


def test_not_a_npy_file(tiny_dataset):
    ds = tiny_dataset()
    (ds.root / "title_maps.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match="title_maps.npy.*not a .npy file"):
        load_dataset(ds.data_dir, ds.name)


def test_truncated_pickle(tiny_dataset):
    ds = tiny_dataset()
    path = ds.root / "title_maps.npy"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="title_maps.npy: cannot unpickle"):
        load_dataset(ds.data_dir, ds.name)


@pytest.mark.parametrize(
    "fname", ["sequential_train.txt", "sequential_valid.txt", "sequential_test.txt", "title_maps.npy"]
)
def test_missing_file_named(tiny_dataset, fname):
    ds = tiny_dataset()
    (ds.root / fname).unlink()
    with pytest.raises(DataError, match=f"missing {fname}"):
        load_dataset(ds.data_dir, ds.name)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="nope.*does not exist"):
        load_dataset(tmp_path, "nope")


def test_user_count_mismatch(tiny_dataset):
    ds = tiny_dataset(dicts=False)
    lines = (ds.root / "sequential_valid.txt").read_text().splitlines()
    (ds.root / "sequential_valid.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="user counts disagree: train 5, valid 4, test 5"):
        load_dataset(ds.data_dir, ds.name)


def test_bad_lines(tiny_dataset):
    ds = tiny_dataset(dicts=False)
    path = ds.root / "sequential_train.txt"
    original = path.read_text()
    path.write_text(original.replace("2\n", "7\n", 1))  # user id out of line order
    with pytest.raises(DataError, match="sequential_train.txt:2: user id 7 on line 2"):
        load_dataset(ds.data_dir, ds.name)
    path.write_text(original.replace("1 1 2", "1 x 2", 1))
    with pytest.raises(DataError, match="sequential_train.txt:1: non-integer"):
        load_dataset(ds.data_dir, ds.name)
    path.write_text(original.replace("1 1 2", "1 0 2", 1))
    with pytest.raises(DataError, match="sequential_train.txt:1: item ids are 1-based"):
        load_dataset(ds.data_dir, ds.name)
    path.write_text(original + "\n")
    with pytest.raises(DataError, match="sequential_train.txt:6: empty line"):
        load_dataset(ds.data_dir, ds.name)


def test_text_dict_disagreement(tiny_dataset):
    ds = tiny_dataset()
    d = {u: list(s) for u, s in enumerate(ds.train)}
    d[3] = [3, 4, 5, 7, 6]  # same items, other order
    np.save(ds.root / "training_dict.npy", d)
    with pytest.raises(DataError, match="training_dict.npy: user 3 disagrees with sequential_train.txt"):
        load_dataset(ds.data_dir, ds.name)
    assert load_dataset(ds.data_dir, ds.name, check_dicts=False).train[3] == [3, 4, 5, 6, 7]


def test_dict_missing_a_user(tiny_dataset):
    ds = tiny_dataset()
    np.save(ds.root / "testing_dict.npy", {0: [5], 1: [6], 3: [0, 1]})  # user 4 missing
    with pytest.raises(DataError, match="testing_dict.npy: 3 users with items but sequential_test.txt has 4"):
        load_dataset(ds.data_dir, ds.name)


def test_dict_with_unknown_user(tiny_dataset):
    ds = tiny_dataset()
    np.save(ds.root / "validation_dict.npy", {0: [4], 2: [6], 4: [0], 9: [1]})
    with pytest.raises(DataError, match="validation_dict.npy: user 9 disagrees"):
        load_dataset(ds.data_dir, ds.name)


def test_item_without_title(tiny_dataset):
    ds = tiny_dataset()
    maps = {"seqid2title": {str(i + 1): t for i, t in enumerate(ds.titles) if i != 2}}
    np.save(ds.root / "title_maps.npy", maps)
    with pytest.raises(DataError, match=r"1 item\(s\) without a title \(seq ids \[3\]"):
        load_dataset(ds.data_dir, ds.name)


def test_item_beyond_titles(tiny_dataset):
    """An id beyond the catalogue is the sequence file's fault, not title_maps.npy's."""
    ds = tiny_dataset(dicts=False, item_map=False, train=[[0, 1, 2], [], [], [9], []])
    with pytest.raises(DataError, match=r"sequential_train.txt:4: item id 10 is beyond the catalogue \(8 items"):
        load_dataset(ds.data_dir, ds.name)


def test_title_maps_without_seqid2title(tiny_dataset):
    ds = tiny_dataset()
    np.save(ds.root / "title_maps.npy", {"recid2title": {0: "a"}})
    with pytest.raises(DataError, match="expected a dict with a dict under key 'seqid2title'"):
        load_dataset(ds.data_dir, ds.name)


def test_subset_users(tiny_dataset):
    ds = tiny_dataset()
    data = load_dataset(ds.data_dir, ds.name)
    sub = data.subset_users(2)
    assert sub.n_users == 2
    assert sub.train == ds.train[:2] and sub.valid == ds.valid[:2] and sub.test == ds.test[:2]
    assert sub.titles == data.titles and sub.n_items == data.n_items
    assert sub.meta["max_users"] == 2
    assert sub.test_users == [0, 1]
    assert data.n_users == 5  # the original is untouched
    assert data.subset_users(None) is data
    assert data.subset_users(5) is data
    assert data.subset_users(50) is data
    for bad in (0, -3):
        with pytest.raises(DataError, match="must be positive"):
            data.subset_users(bad)


def test_subset_users_of_games(games):
    sub = games.subset_users(3000)
    assert sub.n_users == 3000 and sub.n_items == 17_332
    assert sub.train == games.train[:3000]


def test_data_card_gives_the_prompt_phrases(tiny_dataset):
    """A data set the project does not know takes its prompt phrases from its data card."""
    ds = tiny_dataset("movies-card")
    card = ds.root / "dataset.json"
    card.write_text(json.dumps({"prompt": {"instruction": "Recommend a movie.", "input_prefix": "Watched:"}}))
    load_dataset(ds.data_dir, "movies-card")
    ex = build_example("movies-card", ["A", "B"], "C")
    assert ex["instruction"] == "Recommend a movie." and ex["input"] == "Watched: A; B;"


@pytest.mark.parametrize("card, match", [
    (None, "no prompt phrases for the data set 'unknown-set'.*dataset.json"),
    ("{not json", "not a readable data card"),
    ('{"prompt": {"instruction": "", "input_prefix": "x"}}', "'prompt' needs non-empty"),
])
def test_unknown_phrases_fail_before_the_files_are_read(tiny_dataset, monkeypatch, card, match):
    """No card (or a bad one) for an unregistered name: a DataError naming the card, raised before
    the sequences are read."""
    from dealrec.data import dataset as dataset_mod

    ds = tiny_dataset("unknown-set")
    (ds.root / "dataset.json").unlink()
    if card is not None:
        (ds.root / "dataset.json").write_text(card)
    monkeypatch.setattr(dataset_mod, "_read_splits", lambda root: pytest.fail("read the sequences first"))
    with pytest.raises(DataError, match=match):
        load_dataset(ds.data_dir, "unknown-set")
