"""``prepare`` end to end: the folder round-trips through the project's loader, the data card, the
one-line errors that write nothing, the shell entry point, a property test against a reference
implementation, and the real Games set exported and prepared again."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dealrec.data.dataset import load_dataset, load_pickled_npy
from dealrec.data.prepare.cli import main
from dealrec.data.prepare.errors import PrepareError
from dealrec.data.prepare.pipeline import PrepareOptions, prepare
from dealrec.data.prepare.steps import cut_points
from dealrec.data.prepare.titles import clean_title

REPO = Path(__file__).resolve().parents[3]
TITLE_POOL = ["Plain Game", "Duplicate Title", "Duplicate Title", "Pokémon — Édition ★ 日本語版", "Semi; \"q\" 'x'",
              "Line one\nLine two", "Orcs &amp; Humans", "   ", "Tab\there", "Last Item"]


def write_log(folder: Path, rows: list[tuple[str, str, int]], titles: dict[str, str]) -> tuple[Path, Path]:
    inter, items = folder / "log.csv", folder / "titles.csv"
    with open(inter, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("user_id", "item_id", "timestamp"), *rows])
    with open(items, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("item_id", "title"), *titles.items()])
    return inter, items


def sample_log(n_users: int = 30, n_items: int = 12, seed: int = 0) -> tuple[list, dict]:
    rng = np.random.default_rng(seed)
    rows = [(f"user{rng.integers(n_users)}", f"item{rng.integers(n_items)}", int(rng.integers(1000)))
            for _ in range(600)]
    titles = {f"item{i}": TITLE_POOL[i % len(TITLE_POOL)] for i in range(n_items)}  # item7's title is blank
    return rows, titles


def run(tmp_path: Path, *args: str, inter: Path | None = None, items: Path | None = None, name: str = "mine"):
    if inter is None:
        inter, items = write_log(tmp_path, *sample_log())
    return main(["--interactions", str(inter), "--items", str(items), "--name", name, "--out_dir",
                 str(tmp_path / "out"), *args])


def by_raw(out: Path, name: str) -> tuple[dict, dict]:
    """``({raw user: (train, valid, test) raw items}, {raw item: title})`` of a written folder."""
    data = load_dataset(out, name)
    users = load_pickled_npy(out / name / "user_map_reverse.npy")
    items = load_pickled_npy(out / name / "item_map_reverse.npy")
    seqs = {users[u]: tuple([items[i] for i in part[u]] for part in (data.train, data.valid, data.test))
            for u in range(data.n_users)}
    return seqs, {items[i]: t for i, t in enumerate(data.titles)}


# -- the folder and its card ------------------------------------------------------------------------


def test_folder_round_trips_and_npy_files_are_plain_dicts(tmp_path):
    assert run(tmp_path, "--kcore", "2") == 0
    root = tmp_path / "out" / "mine"
    data = load_dataset(tmp_path / "out", "mine")  # cross-checks the *_dict.npy files too
    assert data.n_users == len(data.train) == len(data.valid) == len(data.test)
    for name in ("training_dict", "validation_dict", "testing_dict", "item_map", "user_map", "item_map_reverse",
                 "user_map_reverse", "title_maps"):
        obj = np.load(root / f"{name}.npy", allow_pickle=True).item()
        assert type(obj) is dict
    maps = np.load(root / "title_maps.npy", allow_pickle=True).item()
    assert set(maps) == {"seqid2title", "recid2title", "item2title"}
    assert all(type(k) is str for k in maps["seqid2title"]) and all(type(k) is int for k in maps["recid2title"])
    train = np.load(root / "training_dict.npy", allow_pickle=True).item()
    assert sorted(train) == list(range(data.n_users)) and all(type(v) is list for v in train.values())
    lines = (root / "sequential_train.txt").read_text().splitlines()
    assert [int(line.split()[0]) for line in lines] == list(range(1, data.n_users + 1))
    assert "Duplicate Title" in data.titles and data.titles.count("Duplicate Title") >= 2
    assert "Line one Line two" in data.titles and "Orcs & Humans" in data.titles
    assert not list((tmp_path / "out").glob(".*"))  # no temporary folder left


def test_data_card(tmp_path):
    inter, items = write_log(tmp_path, *sample_log())
    assert run(tmp_path, "--item_noun", "board games", "--kcore", "3", inter=inter, items=items) == 0
    card = json.loads((tmp_path / "out" / "mine" / "dataset.json").read_text(encoding="utf-8"))
    src = card["sources"]["interactions"]
    assert src["sha256_16"] == hashlib.sha256(inter.read_bytes()).hexdigest()[:16]
    assert src["bytes"] == inter.stat().st_size and src["columns"] == {"user": "user_id", "item": "item_id",
                                                                        "time": "timestamp"}
    assert card["options"]["kcore"] == 3 and card["options"]["ratios"] == [0.8, 0.1, 0.1]
    steps = card["steps"]
    assert [s["step"] for s in steps] == ["read", "drop_incomplete", "drop_repeats", "keep_titled", "kcore"]
    for before, after in zip(steps, steps[1:]):
        assert after["rows_in"] == before["rows_out"] and after["dropped"] == after["rows_in"] - after["rows_out"]
        assert after["why"]
    assert steps[3]["dropped"] > 0  # item7's title is blank
    assert sum(p["interactions"] for p in card["splits"].values()) == card["interactions"] == steps[-1]["rows_out"]
    assert card["prompt"] == {
        "item_noun": "board games",
        "instruction": "Given the board games that the user interacted with before, please recommend a new "
                       "board game that the user likes to the user.",
        "input_prefix": "The user has interacted with the following board games before, with titles as:"}
    assert card["fewshot_pool"]["users_with_3_or_more_train_items"] < 1400 and "1024" in card["warnings"][0]


def test_overwrite_replaces_the_folder(tmp_path, capsys):
    assert run(tmp_path) == 0
    assert run(tmp_path, "--item_noun", "games") == 2
    assert "already exists" in capsys.readouterr().err
    card = json.loads((tmp_path / "out" / "mine" / "dataset.json").read_text())
    assert card["prompt"]["item_noun"] == "items"  # the failed run left the folder as it was
    assert run(tmp_path, "--item_noun", "games", "--overwrite") == 0
    card = json.loads((tmp_path / "out" / "mine" / "dataset.json").read_text())
    assert card["prompt"]["item_noun"] == "games"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine"]  # the old folder is gone


# -- bad input: one line, nothing written --------------------------------------------------------------


def _bad_files(tmp_path: Path, case: str) -> tuple[Path, Path, list[str]]:
    rows, titles = sample_log()
    inter, items = write_log(tmp_path, rows, titles)
    if case == "missing column":
        inter.write_text("user_id,item_id,foo\nu1,i1,x\n")
    elif case == "ambiguous columns":
        inter.write_text("user_id,item_id,timestamp,time\nu1,i1,1,2\n")
    elif case == "unparsable time":
        inter.write_text("user_id,item_id,date\nu1,i1,2020-01-01\nu2,i2,yesterday-ish\n")
    elif case == "items cover none":
        items.write_text("item_id,title\nX1,A\nX2,B\n")
    elif case == "corrupt gzip":
        gz = tmp_path / "log.csv.gz"
        data = gzip.compress(inter.read_bytes() * 50)
        gz.write_bytes(data[: len(data) // 2])
        inter = gz
    elif case == "kcore empties":
        return inter, items, ["--kcore", "90"]
    elif case == "ratios":
        return inter, items, ["--ratios", "0.8,0.1,0.2"]
    elif case == "no such file":
        inter = tmp_path / "absent.csv"
    return inter, items, []


BAD = {
    "missing column": ["--interactions", "no time column", "--time_col"],
    "ambiguous columns": ["--interactions", "'timestamp', 'time'", "--time_col"],
    "unparsable time": ["column 'date'", "'yesterday-ish'", "neither a number nor a date"],
    "items cover none": ["--items", "none of its ids", "--items_item_col"],
    "corrupt gzip": ["--interactions", "log.csv.gz", "corrupt or truncated gzip"],
    "kcore empties": ["--kcore", "k=1: 30 users", "k=5:", "0 turns"],
    "ratios": ["--ratios 0.8,0.1,0.2", "sum to 1.1"],
    "no such file": ["--interactions", "absent.csv", "no such file"],
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    inter, items, args = _bad_files(tmp_path, case)
    assert run(tmp_path, *args, inter=inter, items=items) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in BAD[case]:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_shell_entry_point(tmp_path):
    inter, items = write_log(tmp_path, *sample_log())
    proc = subprocess.run(["sh", str(REPO / "code" / "prepare" / "prepare.sh"), str(inter), str(items), "viash",
                           "--out_dir", str(tmp_path / "out"), "--kcore", "0", "--split", "loo"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and load_dataset(tmp_path / "out", "viash").n_users == 30
    proc = subprocess.run(["sh", str(REPO / "code" / "prepare" / "prepare.sh"), "only-one"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr


# -- a reference implementation on generated logs ----------------------------------------------------


def reference(rows, titles, k, split, ratios):
    """``{user: (train, valid, test)}`` by plain loops (the definition of each step)."""
    order = sorted(range(len(rows)), key=lambda r: (rows[r][2], r))
    seen, kept = set(), []
    for r in order:
        if rows[r][:2] not in seen:
            seen.add(rows[r][:2])
            kept.append(r)
    kept = [r for r in kept if clean_title(titles.get(rows[r][1], ""))]
    while k > 1:
        uc, ic = {}, {}
        for r in kept:
            uc[rows[r][0]] = uc.get(rows[r][0], 0) + 1
            ic[rows[r][1]] = ic.get(rows[r][1], 0) + 1
        alive = [r for r in kept if uc[rows[r][0]] >= k and ic[rows[r][1]] >= k]
        if len(alive) == len(kept):
            break
        kept = alive
    if split == "time":
        c1, c2 = cut_points(len(kept), ratios)
        part = {r: 0 if j < c1 else 1 if j < c2 else 2 for j, r in enumerate(kept)}
    else:
        mine = {}
        for r in kept:
            mine.setdefault(rows[r][0], []).append(r)
        part = {r: 0 for r in kept}
        for rs in mine.values():
            if len(rs) >= 3:
                part[rs[-1]], part[rs[-2]] = 2, 1
    out = {}
    for r in kept:
        out.setdefault(rows[r][0], ([], [], []))[part[r]].append(rows[r][1])
    return out


generated = st.tuples(
    st.lists(st.tuples(st.sampled_from(["u0", "u1", "u2", "ü3", "u4", "u5"]),
                       st.sampled_from([f"i{i}" for i in range(8)]), st.integers(0, 5)), min_size=1, max_size=60),
    st.dictionaries(st.sampled_from([f"i{i}" for i in range(8)]), st.sampled_from(TITLE_POOL), min_size=1),
)


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated, st.integers(0, 3), st.sampled_from(["time", "loo"]),
       st.sampled_from([(0.8, 0.1, 0.1), (0.5, 0.3, 0.2)]))
def test_prepare_matches_the_reference(log, k, split, ratios):
    rows, titles = log
    expected = reference(rows, titles, k, split, ratios)
    with tempfile.TemporaryDirectory() as tmp:
        inter, items = write_log(Path(tmp), rows, titles)
        opts = PrepareOptions(str(inter), str(items), "gen", out_dir=str(Path(tmp) / "out"), kcore=k, split=split,
                              ratios=ratios)
        if not expected:
            with pytest.raises(PrepareError):
                prepare(opts)
            assert not (Path(tmp) / "out").exists()
            return
        prepare(opts)
        seqs, item_titles = by_raw(Path(tmp) / "out", "gen")
    assert seqs == {u: tuple(p) for u, p in expected.items()}
    assert item_titles == {i: clean_title(titles[i]) for i in item_titles}
    if k > 1:
        for counts in (_counts(expected, 0), _counts(expected, 1)):
            assert min(counts.values()) >= k


def _counts(expected: dict, which: int) -> dict:
    out: dict = {}
    for u, parts in expected.items():
        for i in [x for p in parts for x in p]:
            key = u if which == 0 else i
            out[key] = out.get(key, 0) + 1
    return out


# -- the real Games set, exported and prepared again --------------------------------------------------


@pytest.mark.slow
def test_games_exported_and_prepared_again(games, tmp_path):
    """All train interactions first (user order), then valid, then test, with increasing times: the
    global time split at the matching ratios gives back the authors' sequences and user order."""
    users = load_pickled_npy(games.root / "user_map_reverse.npy")
    items = load_pickled_npy(games.root / "item_map_reverse.npy")
    u_col, i_col, sizes = [], [], []
    for part in (games.train, games.valid, games.test):
        sizes.append(sum(len(s) for s in part))
        for u, seq in enumerate(part):
            u_col += [users[u]] * len(seq)
            i_col += [items[i] for i in seq]
    pacsv.write_csv(pa.table({"user_id": u_col, "item_id": i_col, "timestamp": np.arange(len(u_col))}),
                    tmp_path / "games.csv")
    pacsv.write_csv(pa.table({"item_id": [items[i] for i in range(games.n_items)], "title": games.titles}),
                    tmp_path / "games_items.csv")
    ratios = ",".join(repr(n / sum(sizes)) for n in sizes)
    assert main(["--interactions", str(tmp_path / "games.csv"), "--items", str(tmp_path / "games_items.csv"),
                 "--name", "games", "--out_dir", str(tmp_path / "out"), "--kcore", "0", "--split", "time",
                 "--ratios", ratios, "--item_noun", "game products"]) == 0
    seqs, titles = by_raw(tmp_path / "out", "games")
    assert seqs == {users[u]: tuple([items[i] for i in part[u]] for part in (games.train, games.valid, games.test))
                    for u in range(games.n_users)}
    assert titles == {items[i]: clean_title(t) for i, t in enumerate(games.titles)}
    ours = load_pickled_npy(tmp_path / "out" / "games" / "user_map_reverse.npy")
    assert [ours[u] for u in range(games.n_users)] == [users[u] for u in range(games.n_users)]
