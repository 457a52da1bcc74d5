"""Every recognised input layout of ``prepare`` on a tiny log made here: CSV with and without a
header, TSV, gzip, Parquet, JSON lines, RecBole atomic files, Amazon Reviews 2014 (Python-literal
metadata), 2018 and 2023, MovieLens latest, 100K and 1M; and the column flags."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pandas as pd

from dealrec.data.dataset import load_dataset, load_pickled_npy
from dealrec.data.prepare.cli import main
from dealrec.data.prepare.sniff import delimiter, has_header, sniff

# (user, item, time in seconds from T0, rating); with --split loo --kcore 0:
# u1: train i1 i2, valid i3, test i4; u2: train i2, valid i3, test i1; u3: train i4 i1
LOG = [("u1", "i1", 10, 5), ("u2", "i2", 15, 4), ("u1", "i2", 20, 3), ("u2", "i3", 25, 5), ("u1", "i3", 30, 4),
       ("u2", "i1", 35, 2), ("u1", "i4", 40, 5), ("u3", "i4", 12, 1), ("u3", "i1", 50, 4)]
EXPECTED = {"u1": (["i1", "i2"], ["i3"], ["i4"]), "u2": (["i2"], ["i3"], ["i1"]), "u3": (["i4", "i1"], [], [])}
TITLES = {"i1": "Toy Story (1995)", "i2": "Heat, The & \"Co\"", "i3": "Pokémon ★ Café", "i4": "Zed; the 12\" cut"}
LATIN1_TITLES = {**TITLES, "i3": "Pokémon Café"}  # MovieLens 100K and 1M titles are Latin-1
MIN_RATING_2 = {"u1": (["i1", "i2"], ["i3"], ["i4"]), "u2": (["i2"], ["i3"], ["i1"]), "u3": (["i1"], [], [])}
T0 = 1_400_000_000


def ids(users: dict[str, str] | None = None, items: dict[str, str] | None = None):
    """The log with format-specific raw ids: rows (user, item, time, rating) and the id maps."""
    users = users or {u: u.upper() for u in EXPECTED}
    items = items or {i: i.upper() for i in TITLES}
    rows = [(users[u], items[i], T0 + t, r) for u, i, t, r in LOG]
    return rows, users, items


def run(tmp_path: Path, inter: Path, items: Path, *args: str, name: str = "ds") -> int:
    return main(["--interactions", str(inter), "--items", str(items), "--name", name,
                 "--out_dir", str(tmp_path / "out"), "--kcore", "0", "--split", "loo", *args])


def check(tmp_path: Path, users: dict[str, str], items: dict[str, str], titles: dict[str, str] | None = None,
          expected: dict | None = None, name: str = "ds") -> None:
    """The folder loads with the project's loader and holds the expected sequences and titles."""
    data = load_dataset(tmp_path / "out", name)
    root = tmp_path / "out" / name
    user_raw = load_pickled_npy(root / "user_map_reverse.npy")
    item_raw = load_pickled_npy(root / "item_map_reverse.npy")
    by_raw_user = {user_raw[u]: tuple([item_raw[i] for i in part[u]] for part in (data.train, data.valid, data.test))
                   for u in range(data.n_users)}
    expected = expected or EXPECTED
    assert by_raw_user == {users[u]: tuple([items[i] for i in p] for p in parts) for u, parts in expected.items()}
    titles = titles or TITLES
    assert {item_raw[i]: data.titles[i] for i in range(data.n_items)} == {items[i]: t for i, t in titles.items()}


def write_csv(path: Path, header: list[str] | None, rows: list[tuple], sep: str = ",", opener=open,
              encoding: str = "utf-8") -> Path:
    """Comma/semicolon files quoted as Python's csv module does; tab files unquoted (as RecBole's)."""
    with opener(path, "wt", encoding=encoding, newline="") as f:
        if sep == "\t":
            f.write("".join("\t".join(map(str, r)) + "\n" for r in ([header] if header else []) + rows))
        else:
            w = csv.writer(f, delimiter=sep, lineterminator="\n")
            w.writerows(([header] if header else []) + rows)
    return path


def write_lines(path: Path, lines: list[str], opener=open, encoding: str = "utf-8") -> Path:
    with opener(path, "wt", encoding=encoding, newline="") as f:
        f.write("\n".join(lines) + "\n")
    return path


# -- delimited text ---------------------------------------------------------------------------------


def test_csv_with_header(tmp_path):
    rows, users, items = ids()
    inter = write_csv(tmp_path / "log.csv", ["user_id", "item_id", "timestamp", "rating"], rows)
    meta = write_csv(tmp_path / "titles.csv", ["item_id", "title"], [(items[i], t) for i, t in TITLES.items()])
    assert run(tmp_path, inter, meta) == 0
    check(tmp_path, users, items)


def test_csv_without_header(tmp_path):
    rows, users, items = ids({"u1": "1", "u2": "2", "u3": "3"}, {"i1": "0000031852", "i2": "7", "i3": "8", "i4": "9"})
    inter = write_csv(tmp_path / "log.csv", None, [r[:3] for r in rows])
    meta = write_csv(tmp_path / "titles.csv", None, [(items[i], t) for i, t in TITLES.items()])
    assert not sniff(inter, "--interactions").header
    assert run(tmp_path, inter, meta) == 0
    check(tmp_path, users, items)  # "0000031852" keeps its zeros


def test_tsv_and_semicolon_with_dates(tmp_path):
    rows, users, items = ids()
    dated = [(u, i, pd.Timestamp(t, unit="s").strftime("%Y-%m-%d %H:%M:%S")) for u, i, t, _ in rows]
    inter = write_csv(tmp_path / "log.tsv", ["user", "item", "date"], dated, sep="\t")
    meta = write_csv(tmp_path / "titles.txt", ["item", "name"], [(items[i], t) for i, t in TITLES.items()], sep=";")
    assert sniff(meta, "--items").sep == ";"
    assert run(tmp_path, inter, meta) == 0
    check(tmp_path, users, items)


def test_gzipped_csv(tmp_path):
    rows, users, items = ids()
    inter = write_csv(tmp_path / "log.csv.gz", ["userId", "itemId", "Timestamp", "Rating"], rows,
                      opener=gzip.open)
    meta = write_csv(tmp_path / "items.gz", ["ItemID", "Title"], [(items[i], t) for i, t in TITLES.items()],
                     opener=gzip.open)
    assert sniff(inter, "--interactions").gzipped
    assert run(tmp_path, inter, meta) == 0
    check(tmp_path, users, items)


# -- Parquet and JSON lines -------------------------------------------------------------------------


def test_parquet_and_gzipped_parquet(tmp_path):
    rows, users, items = ids()
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"]).to_parquet(tmp_path / "log.parquet")
    pd.DataFrame({"item_id": [items[i] for i in TITLES], "title": list(TITLES.values())}).to_parquet(
        tmp_path / "items.parquet")
    (tmp_path / "items.parquet.gz").write_bytes(gzip.compress((tmp_path / "items.parquet").read_bytes()))
    assert run(tmp_path, tmp_path / "log.parquet", tmp_path / "items.parquet.gz") == 0
    check(tmp_path, users, items)


def test_json_lines_gzipped_with_iso_dates(tmp_path):
    rows, users, items = ids()
    lines = [json.dumps({"user_id": u, "item_id": i, "extra": [1, 2],
                         "timestamp": pd.Timestamp(t, unit="s", tz="UTC").isoformat()}) for u, i, t, _ in rows]
    inter = write_lines(tmp_path / "log.jsonl.gz", lines, opener=gzip.open)
    meta = write_lines(tmp_path / "items.jsonl", [json.dumps({"item_id": items[i], "title": t}) for i, t in
                                                   TITLES.items()])
    assert run(tmp_path, inter, meta) == 0
    check(tmp_path, users, items)


# -- named layouts -------------------------------------------------------------------------------------


def test_recbole_atomic_files(tmp_path):
    rows, users, items = ids()
    inter = write_csv(tmp_path / "ml.inter", ["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
                      [(u, i, float(r), float(t)) for u, i, t, r in rows], sep="\t")
    meta = write_csv(tmp_path / "ml.item", ["item_id:token", "movie_title:token_seq", "release_year:token"],
                     [(items[i], t, "1995") for i, t in TITLES.items()], sep="\t")
    assert run(tmp_path, inter, meta) == 0
    check(tmp_path, users, items)


AMAZON_USERS = {"u1": "A1JGAP0185YJI6", "u2": "A2RF5B5H74JLPE", "u3": "A11V6ZJ2FVQY1D"}
AMAZON_ITEMS = {"i1": "0000031852", "i2": "B00004DSDE", "i3": "0700026657", "i4": "B000ZKA0J6"}


def amazon_reviews(path: Path, opener=open) -> Path:
    rows, _, _ = ids(AMAZON_USERS, AMAZON_ITEMS)
    return write_lines(path, [json.dumps({
        "reviewerID": u, "asin": i, "reviewerName": "x", "helpful": [0, 0], "reviewText": "Good\nfun", "overall": float(r),
        "summary": "s", "unixReviewTime": t, "reviewTime": pd.Timestamp(t, unit="s").strftime("%m %d, %Y")})
        for u, i, t, r in rows], opener=opener)


def test_amazon_2014_with_python_literal_meta(tmp_path):
    inter = amazon_reviews(tmp_path / "reviews_Video_Games_5.json.gz", gzip.open)
    meta = [repr({"asin": "B0NOTITLE", "price": 3.17, "related": {"also_bought": ["B1"]}, "categories": [["Games"]]})]
    meta += [repr({"asin": AMAZON_ITEMS[i], "title": t.replace("&", "&amp;"), "salesRank": {"Games": 5}})
             for i, t in TITLES.items()]
    path = write_lines(tmp_path / "meta_Video_Games.json.gz", meta, opener=gzip.open)
    layout = sniff(path, "--items")
    assert layout.literal and "title" in layout.names  # the first line has no title: names come from all
    assert run(tmp_path, inter, path) == 0
    check(tmp_path, AMAZON_USERS, AMAZON_ITEMS)


def test_amazon_2018_json_meta(tmp_path):
    inter = amazon_reviews(tmp_path / "Video_Games.json")
    meta = [json.dumps({"asin": AMAZON_ITEMS[i], "title": t.replace("&", "&amp;"), "also_buy": [], "rank": "1"})
            for i, t in TITLES.items()]
    assert run(tmp_path, inter, write_lines(tmp_path / "meta_Video_Games.json", meta), "--min_rating", "2") == 0
    check(tmp_path, AMAZON_USERS, AMAZON_ITEMS, expected=MIN_RATING_2)  # u3's rating-1 item dropped


def test_amazon_2023_parent_asin(tmp_path):
    rows, users, items = ids(AMAZON_USERS, {"i1": "B01PARENT1", "i2": "B01PARENT2", "i3": "B01PARENT3",
                                           "i4": "B01PARENT4"})
    lines = [json.dumps({"rating": float(r), "title": "review title", "text": "t", "images": [],
                         "asin": i.replace("PARENT", "CHILD"), "parent_asin": i, "user_id": u,
                         "timestamp": t * 1000, "helpful_vote": 0, "verified_purchase": True}) for u, i, t, r in rows]
    inter = write_lines(tmp_path / "Video_Games.jsonl", lines)
    meta = write_lines(tmp_path / "meta_Video_Games.jsonl", [json.dumps(
        {"main_category": "Video Games", "title": t, "average_rating": 4.5, "features": [], "parent_asin": items[i]})
        for i, t in TITLES.items()])
    assert run(tmp_path, inter, meta) == 0
    check(tmp_path, users, items)
    card = json.loads((tmp_path / "out" / "ds" / "dataset.json").read_text())
    assert card["sources"]["interactions"]["columns"]["item"] == "parent_asin"
    assert card["sources"]["interactions"]["time_kind"] == "milliseconds"


ML_USERS = {"u1": "1", "u2": "2", "u3": "3"}
ML_ITEMS = {"i1": "1", "i2": "2", "i3": "3", "i4": "4"}


def test_movielens_latest(tmp_path):
    rows, users, items = ids(ML_USERS, ML_ITEMS)
    inter = write_csv(tmp_path / "ratings.csv", ["userId", "movieId", "rating", "timestamp"],
                      [(u, i, float(r), t) for u, i, t, r in rows])
    meta = write_csv(tmp_path / "movies.csv", ["movieId", "title", "genres"],
                     [(items[i], t, "Adventure|Comedy") for i, t in TITLES.items()])
    assert run(tmp_path, inter, meta) == 0
    check(tmp_path, users, items)


def test_movielens_100k(tmp_path):
    rows, users, items = ids(ML_USERS, ML_ITEMS)
    inter = write_csv(tmp_path / "u.data", None, [(u, i, r, t) for u, i, t, r in rows], sep="\t")
    lines = [f"{items[i]}|{t}|01-Jan-1995||http://us.imdb.com/M/title-exact?x|0|1|0" for i, t in LATIN1_TITLES.items()]
    meta = write_lines(tmp_path / "u.item", lines, encoding="latin-1")
    assert sniff(meta, "--items").encoding == "latin-1"
    assert run(tmp_path, inter, meta, "--min_rating", "2") == 0
    check(tmp_path, users, items, LATIN1_TITLES, expected=MIN_RATING_2)


def test_movielens_1m_double_colon(tmp_path):
    rows, users, items = ids(ML_USERS, ML_ITEMS)
    inter = write_lines(tmp_path / "ratings.dat", [f"{u}::{i}::{r}::{t}" for u, i, t, r in rows])
    meta = write_lines(tmp_path / "movies.dat", [f"{items[i]}::{t}::Drama" for i, t in LATIN1_TITLES.items()],
                       encoding="latin-1")
    assert run(tmp_path, inter, meta) == 0
    check(tmp_path, users, items, LATIN1_TITLES)


# -- flags and recognition ------------------------------------------------------------------------------


def test_column_flags_by_name_and_number(tmp_path):
    rows, users, items = ids()
    inter = write_csv(tmp_path / "log.csv", ["when", "who", "what", "score", "note"],
                      [(t, u, i, r, "x") for u, i, t, r in rows])
    meta = write_csv(tmp_path / "meta.csv", None, [("junk", t, items[i]) for i, t in TITLES.items()])
    args = ["--user_col", "who", "--item_col", "3", "--time_col", "when", "--items_item_col", "3", "--title_col", "2"]
    assert run(tmp_path, inter, meta, *args) == 0
    check(tmp_path, users, items)


def test_sniffing_helpers():
    assert delimiter(["a,b,c", '1,"x, y",3']) == ","
    assert delimiter(["1\tToy, Story\t5", "2\tHeat\t4"]) == "\t"
    assert delimiter(['1|Toy Story (1995)|01-Jan-1995||http://x?a,b|0', "2|Heat|01-Jan-1995||http://y|0"]) == "|"
    assert delimiter(["one", "two"]) is None
    assert has_header([["user_id", "item_id", "timestamp"], ["a", "b", "1"]])
    assert has_header([["who", "what", "when"], ["a", "b", "1"]])
    assert not has_header([["1", "10", "5", "881250949"]])
    assert not has_header([["A1", "B2", "2020-01-01"], ["A2", "B3", "2020-01-02"]])


def test_latin1_beyond_the_sampled_lines(tmp_path):
    """UTF-8 by the first lines, a Latin-1 byte later: the file is read again as Latin-1."""
    titles = {f"i{k}": f"Movie {k} (1995)" for k in range(1, 80)} | {"i80": "Réalité (1999)"}
    rows = [("u1", i, t) for t, i in enumerate(titles)]
    inter = write_csv(tmp_path / "log.csv", ["user_id", "item_id", "timestamp"], rows)
    for name, lines in (("movies.dat", [f"{i}::{t}::Drama" for i, t in titles.items()]),
                        ("movies.csv", ["item_id,title", *(f"{i},{t}" for i, t in titles.items())])):
        meta = write_lines(tmp_path / name, lines, encoding="latin-1")
        assert sniff(meta, "--items").encoding == "utf-8"
        assert run(tmp_path, inter, meta, name=name.replace(".", "-")) == 0
        data = load_dataset(tmp_path / "out", name.replace(".", "-"))
        assert "Réalité (1999)" in data.titles
