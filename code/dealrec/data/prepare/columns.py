"""Which column holds the user, the item, the time, the rating and the title (recognised, or
given by the column flags of :class:`ColumnFlags`).

Column names are compared after :func:`normalise` (lower case, RecBole's ``:type`` suffix and
every non-alphanumeric character removed), so ``user_id``, ``userId``, ``UserID`` and
``user_id:token`` are one name. Each role has tiers of known names, best first: the first tier
with exactly one match wins, a tier with two matches is ambiguous (an error that asks for the
flag). The tiers cover the common layouts: MovieLens (``userId``, ``movieId``, ``timestamp``,
``title``), Amazon Reviews 2014/2018 (``reviewerID``, ``asin``, ``unixReviewTime``, ``overall``)
and 2023 (``user_id``, ``parent_asin`` before ``asin``, ``timestamp``, ``rating``), RecBole atomic
files (``user_id:token``, ``item_id:token``, ``timestamp:float``, ``movie_title:token_seq``).

A file without a header has the column names ``"1"``, ``"2"``, ... (1 = the first column). Its
roles are positional: interactions with 3 columns are ``user item time``, with 4 columns
``user item rating time`` (MovieLens ``u.data``/``ratings.dat``); items are ``id title ...``
(MovieLens ``u.item``/``movies.dat``). A flag (``--user_col`` ...) names a column of the header
or, for either kind of file, a column number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dealrec.data.prepare.errors import PrepareError

if TYPE_CHECKING:
    from dealrec.data.prepare.sniff import Layout

ROLE_TIERS: dict[str, tuple[tuple[str, ...], ...]] = {
    "user": (("userid", "reviewerid", "uid"), ("user", "customerid", "visitorid", "memberid")),
    "item": (("itemid", "parentasin", "movieid", "productid", "bookid", "iid"), ("item", "asin")),
    "time": (("timestamp", "unixreviewtime", "time", "datetime", "ts"), ("date", "reviewtime")),
    "rating": (("rating", "overall", "score", "stars"),),
    "title": (("title", "movietitle", "itemtitle", "producttitle", "booktitle"),
              ("itemname", "productname", "name")),
}
FLAGS = {"user": "--user_col", "item": "--item_col", "time": "--time_col", "rating": "--rating_col",
         "title": "--title_col"}
KNOWN_NAMES = frozenset(n for tiers in ROLE_TIERS.values() for tier in tiers for n in tier)
HEADERLESS_INTERACTIONS = {3: {"user": "1", "item": "2", "time": "3"},
                           4: {"user": "1", "item": "2", "rating": "3", "time": "4"}}
HEADERLESS_ITEMS = {"item": "1", "title": "2"}


@dataclass
class ColumnFlags:
    """Column names (or 1-based numbers) given on the command line; None: recognise them."""

    user: str | None = None
    item: str | None = None
    time: str | None = None
    rating: str | None = None
    title: str | None = None
    items_item: str | None = None  # the items file's id column, when its name differs from --item_col

    def names(self) -> tuple[str, ...]:
        return tuple(v for v in vars(self).values() if v)


def normalise(name: str) -> str:
    """``"user_id:token"`` -> ``"userid"``: the form in which column names are compared."""
    base = name.rsplit(":", 1)[0] if re.search(r":[a-z_]+$", name) else name
    return re.sub(r"[^0-9a-z]", "", base.lower())


def resolve_flag(names: list[str], value: str, flag: str, where: str) -> str:
    """The column that ``flag value`` names: a header name (exact, then normalised) or a number."""
    if value in names:
        return value
    matches = [n for n in names if normalise(n) == normalise(value)]
    if len(matches) == 1:
        return matches[0]
    if value.isdigit() and 1 <= int(value) <= len(names):
        return names[int(value) - 1]
    raise PrepareError(f"{where}: {flag} {value}: no such column (columns: {_show(names)}); pass a "
                       f"column name or a number from 1 to {len(names)}")


def guess(names: list[str], role: str, where: str, required: bool = True) -> str | None:
    """The column of ``role`` among the header ``names`` (None when absent and not required)."""
    for tier in ROLE_TIERS[role]:
        found = [n for n in names if normalise(n) in tier]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise PrepareError(f"{where}: columns {_show(found)} could each be the {role} column; "
                               f"pass {FLAGS[role]} NAME")
    if required:
        raise PrepareError(f"{where}: no {role} column (looked for {', '.join(_examples(role))}; "
                           f"columns: {_show(names)}); pass {FLAGS[role]} NAME")
    return None


def positional(names: list[str], role: str, table: dict[str, str], where: str,
               required: bool = True) -> str | None:
    """The column of ``role`` in a file without a header, by the positions of ``table``."""
    if role in table:
        return table[role]
    if required:
        raise PrepareError(f"{where}: the file has no header and {len(names)} columns, so the {role} "
                           f"column is unknown; pass {FLAGS[role]} N (1 = the first column)")
    return None


def _examples(role: str) -> list[str]:
    return [n for tier in ROLE_TIERS[role] for n in tier][:6]


def _show(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:12])
    return shown + (f" and {len(names) - 12} more" if len(names) > 12 else "")


def _choose(layout: Layout, role: str, flag_value: str | None, table: dict[str, str],
            required: bool) -> str | None:
    names = list(layout.names)
    if flag_value:
        return resolve_flag(names, flag_value, FLAGS[role], layout.where)
    if not layout.header:
        return positional(names, role, table, layout.where, required)
    return guess(names, role, layout.where, required)


def _distinct(layout: Layout, columns: dict[str, str]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for role, col in columns.items():
        if col in seen:
            raise PrepareError(f"{layout.where}: column {col!r} would be both the {seen[col]} and the {role} "
                               f"column; pass {FLAGS[seen[col]]} and {FLAGS[role]} with different columns")
        seen[col] = role
    return columns


def interaction_columns(layout: Layout, flags: ColumnFlags, with_rating: bool) -> dict[str, str]:
    """``{role: column}`` of the interactions file (``rating`` only when ``with_rating``)."""
    table = HEADERLESS_INTERACTIONS.get(len(layout.names), {})
    roles = ("user", "item", "time") + (("rating",) if with_rating else ())
    cols = {role: _choose(layout, role, getattr(flags, role), table, True) for role in roles}
    return _distinct(layout, {k: v for k, v in cols.items() if v is not None})


def item_columns(layout: Layout, flags: ColumnFlags, item_col: str) -> dict[str, str]:
    """``{"item": id column, "title": title column}`` of the items file; the id column is
    ``--items_item_col``, else the interactions' item column name when the items file has it."""
    names = list(layout.names)
    if flags.items_item:
        item = resolve_flag(names, flags.items_item, "--items_item_col", layout.where)
    elif not layout.header:
        item = HEADERLESS_ITEMS["item"]
    elif item_col in names or sum(normalise(n) == normalise(item_col) for n in names) == 1:
        item = resolve_flag(names, item_col, "--item_col", layout.where)
    else:
        item = guess(names, "item", layout.where)
    title = _choose(layout, "title", flags.title, HEADERLESS_ITEMS, True)
    return _distinct(layout, {"item": item, "title": title})
