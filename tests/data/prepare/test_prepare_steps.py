"""The pure steps of ``prepare`` (filtering, k-core, splits, numbering) and the title clean-up,
with property tests on generated logs (ties in time, one-interaction users)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dealrec.data.prepare import steps
from dealrec.data.prepare.card import prompt_phrases, singular
from dealrec.data.prepare.errors import PrepareError
from dealrec.data.prepare.titles import clean_title, clean_titles, title_lookup


def frame(rows: list[tuple], index: list[int] | None = None) -> pd.DataFrame:
    """An interaction frame from (user, item, time[, rating]) tuples."""
    cols = ["user", "item", "time", "rating"][: len(rows[0])] if rows else ["user", "item", "time"]
    df = pd.DataFrame(rows, columns=cols, index=index)
    df["user"] = df["user"].astype(np.int32)
    df["item"] = df["item"].astype(np.int32)
    df["time"] = df["time"].astype(np.float64)
    return df


def triples(df: pd.DataFrame) -> list[tuple[int, int, float]]:
    return list(zip(df["user"].tolist(), df["item"].tolist(), df["time"].tolist()))


# -- single steps ----------------------------------------------------------------------------------


def test_drop_incomplete_drops_missing_ids_and_times():
    df = frame([(0, 0, 1.0), (-1, 0, 2.0), (0, -1, 3.0), (1, 1, float("nan")), (1, 1, 5.0)])
    out = steps.drop_incomplete(df)
    assert out.index.tolist() == [0, 4]
    assert len(df) == 5  # the input is unchanged


def test_time_order_breaks_ties_by_input_row():
    df = frame([(0, 0, 5.0), (1, 1, 3.0), (2, 2, 5.0), (3, 3, 3.0)])
    assert steps.time_order(df).index.tolist() == [1, 3, 0, 2]
    ordered = steps.time_order(df)
    assert steps.time_order(ordered) is ordered


def test_keep_min_rating_drops_low_and_missing():
    df = frame([(0, 0, 1.0, 4.0), (0, 1, 2.0, 2.5), (0, 2, 3.0, float("nan")), (0, 3, 4.0, 3.0)])
    assert steps.keep_min_rating(df, 3.0)["item"].tolist() == [0, 3]


def test_drop_repeats_keeps_the_earliest_even_unsorted():
    df = frame([(0, 7, 9.0), (0, 7, 2.0), (1, 7, 4.0), (0, 7, 2.0), (1, 7, 4.0)], index=[10, 11, 12, 13, 14])
    out = steps.drop_repeats(df)
    assert out.index.tolist() == [11, 12]


def test_kcore_iterates_until_stable():
    # user 0 has 2 items; dropping user 2 (1 row) leaves item 2 with 1 row, which then drops user 1's row
    rows = [(0, 0, 1), (0, 1, 2), (1, 0, 3), (1, 1, 4), (1, 2, 5), (2, 2, 6), (3, 0, 7), (3, 1, 8)]
    out = steps.kcore(frame(rows), 2)
    assert sorted(set(out["item"].tolist())) == [0, 1]
    assert 2 not in out["user"].tolist()
    assert len(steps.kcore(frame(rows), 0)) == len(rows)
    sizes = steps.kcore_sizes(frame(rows))
    assert sizes[1] == (4, 3) and sizes[2] == (3, 2) and sizes[4] == (0, 0)


def test_cut_points_round_at_the_ratios():
    assert steps.cut_points(10, (0.8, 0.1, 0.1)) == (8, 9)
    assert steps.cut_points(342_329, (299_987 / 342_329, 22_609 / 342_329, 19_733 / 342_329)) == (299_987, 322_596)
    assert steps.cut_points(3, (1.0, 0.0, 0.0)) == (3, 3)


def test_split_loo_and_short_users():
    rows = [(0, 0, 1), (0, 1, 2), (0, 2, 2), (0, 3, 4), (1, 0, 1), (1, 1, 2), (2, 0, 9)]
    out = steps.split_loo(frame(rows))
    parts = {(u, i): p for u, i, p in zip(out["user"], out["item"], out["part"])}
    assert [parts[(0, i)] for i in range(4)] == [0, 0, 1, 2]
    assert parts[(1, 0)] == parts[(1, 1)] == parts[(2, 0)] == 0


def test_number_users_by_first_interaction_items_by_first_appearance():
    rows = [(5, 9, 3.0), (7, 4, 1.0), (5, 4, 2.0), (7, 9, 1.0)]
    out, numbering = steps.number(frame(rows))
    assert numbering.users.tolist() == [7, 5]
    assert numbering.items.tolist() == [4, 9]
    assert out["uid"].tolist() == [0, 0, 1, 1] and out["iid"].tolist() == [0, 1, 0, 1]


def test_sequences_csr_keeps_time_order():
    df = frame([(0, 0, 3), (1, 1, 1), (0, 1, 1), (1, 0, 2), (0, 2, 0)]).assign(part=np.int8(0))
    out, numbering = steps.number(df)
    seqs = steps.sequences(out, len(numbering.users))
    # user 0 first (t=0), then user 1; items 2 (t=0), 1 (t=1), 0 (t=2)
    assert numbering.users.tolist() == [0, 1] and numbering.items.tolist() == [2, 1, 0]
    assert seqs["train"].lengths().tolist() == [3, 2]
    assert [seqs["train"].of(u).tolist() for u in range(2)] == [[0, 1, 2], [1, 2]]
    assert len(seqs["valid"].items) == len(seqs["test"].items) == 0


# -- titles and phrases -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw, clean", [
    ("  Plain  Title ", "Plain Title"),
    ("Line one\nLine two\r\nthree\tfour", "Line one Line two three four"),
    ("Orcs &amp; Humans &ndash; Tides &#39;x&#39;", "Orcs & Humans \u2013 Tides 'x'"),
    ("Bell\x07 and\x00 nul\x9f", "Bell and nul"),
    ("Pokémon — Édition Spéciale ★ 日本語版", "Pokémon — Édition Spéciale ★ 日本語版"),
    ("\u00a0\u2028 ", ""),
    ("&amp;amp;", "&amp;"),
])
def test_clean_title(raw, clean):
    assert clean_title(raw) == clean


def test_title_lookup_first_usable_title_and_duplicates_kept():
    ids = np.array(["a", "a", "b", "c", "d", None], dtype=object)
    titles = pd.Series(["  ", "Alpha", None, "Same", "Same", "Orphan"], dtype=object)
    found, counts = title_lookup(ids, titles, np.array(["a", "b", "c", "d", "e"], dtype=object))
    assert found.tolist() == ["Alpha", None, "Same", "Same", None]
    assert counts["ids_of_interactions_found"] == 4 and counts["ids_of_interactions_with_usable_title"] == 3
    assert clean_titles(pd.Series([None, 3], dtype=object)).tolist() == [None, "3"]


def test_prompt_phrases():
    p = prompt_phrases("movies")
    assert p == {
        "item_noun": "movies",
        "instruction": "Given the movies that the user interacted with before, please recommend a new movie "
                       "that the user likes to the user.",
        "input_prefix": "The user has interacted with the following movies before, with titles as:",
    }
    assert singular("game products") == "game product" and singular("chess") == "chess"
    assert "a new box that" in prompt_phrases("boxes", "box")["instruction"]
    assert prompt_phrases("items", instruction="Do X.", input_prefix="Seen:")["instruction"] == "Do X."
    with pytest.raises(PrepareError, match="--item_noun"):
        prompt_phrases(" ")


# -- properties on generated logs -------------------------------------------------------------------

logs = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 9), st.integers(0, 6)), min_size=1, max_size=80)
SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def kcore_reference(rows: list[tuple[int, int, float]], k: int) -> set[int]:
    """The row numbers of the k-core, by the textbook loop."""
    alive = set(range(len(rows)))
    while True:
        uc: dict[int, int] = {}
        ic: dict[int, int] = {}
        for r in alive:
            uc[rows[r][0]] = uc.get(rows[r][0], 0) + 1
            ic[rows[r][1]] = ic.get(rows[r][1], 0) + 1
        drop = {r for r in alive if uc[rows[r][0]] < k or ic[rows[r][1]] < k}
        if not drop:
            return alive
        alive -= drop


@SETTINGS
@given(logs, st.integers(0, 4))
def test_kcore_property(rows, k):
    df = frame(rows)
    out = steps.kcore(df, k)
    if k > 1:
        assert (out["user"].value_counts() >= k).all() and (out["item"].value_counts() >= k).all()
        assert set(out.index.tolist()) == kcore_reference(rows, k)
    else:
        assert len(out) == len(df)


@SETTINGS
@given(logs)
def test_drop_repeats_property(rows):
    out = steps.drop_repeats(frame(rows))
    pairs = list(zip(out["user"], out["item"]))
    assert len(pairs) == len(set(pairs)) == len({(u, i) for u, i, _ in rows})
    for idx, (u, i, t) in zip(out.index, triples(out)):
        earliest = min((tt, r) for r, (uu, ii, tt) in enumerate(rows) if (uu, ii) == (u, i))
        assert (t, idx) == earliest


@SETTINGS
@given(logs, st.sampled_from([(0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (1.0, 0.0, 0.0), (0.34, 0.33, 0.33)]))
def test_split_time_property(rows, ratios):
    out = steps.split_time(frame(rows), ratios)
    part, t = out["part"].to_numpy(), out["time"].to_numpy()
    c1, c2 = steps.cut_points(len(rows), ratios)
    assert (part == 0).sum() == c1 and (part == 1).sum() == c2 - c1 and (part == 2).sum() == len(rows) - c2
    assert (np.diff(part) >= 0).all() and (np.diff(t) >= 0).all()
    for u in set(out["user"]):
        mine = out[out["user"] == u]
        train, later = mine[mine["part"] == 0]["time"], mine[mine["part"] > 0]["time"]
        if len(train) and len(later):
            assert later.min() >= train.max()
        valid, test = mine[mine["part"] == 1]["time"], mine[mine["part"] == 2]["time"]
        if len(valid) and len(test):
            assert test.min() >= valid.max()


@SETTINGS
@given(logs)
def test_split_loo_property(rows):
    out = steps.split_loo(frame(rows))
    for _, mine in out.groupby("user"):
        parts = mine["part"].tolist()  # in (time, row) order
        if len(mine) >= 3:
            assert parts == [0] * (len(mine) - 2) + [1, 2]
        else:
            assert parts == [0] * len(mine)


@SETTINGS
@given(logs, st.sampled_from(["time", "loo"]))
def test_sequences_property(rows, split):
    df = frame(rows)
    parted = steps.split_time(df, (0.6, 0.2, 0.2)) if split == "time" else steps.split_loo(df)
    out, numbering = steps.number(parted)
    seqs = steps.sequences(out, len(numbering.users))
    assert sorted(numbering.users.tolist()) == sorted(set(df["user"]))
    for uid, code in enumerate(numbering.users.tolist()):
        mine = sorted((t, r, i) for r, (u, i, t) in enumerate(rows) if u == code)
        expected_items = [numbering.items.tolist().index(i) for _, _, i in mine]
        got = [x for part in steps.PARTS for x in seqs[part].of(uid).tolist()]
        assert got == expected_items
    first_times = [min((t, r) for r, (u, _, t) in enumerate(rows) if u == c) for c in numbering.users.tolist()]
    assert first_times == sorted(first_times)  # users numbered by first interaction
