"""Title clean-up: the text the prompts show for an item.

:func:`clean_title` unescapes HTML entities once (``&amp;`` -> ``&``, as Amazon's metadata holds
them), drops control characters, turns every run of whitespace (newlines and tabs included) into
one space and strips the ends. A title that is missing or empty after the clean-up is not usable:
its item is dropped (the data card counts them). Two items with the same title stay two items.
"""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd

CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # control characters that are not whitespace
SPACE = re.compile(r"\s+")


def clean_title(text: str) -> str:
    """The cleaned title (may be empty)."""
    if "&" in text:
        text = html.unescape(text)
    return SPACE.sub(" ", CONTROL.sub("", text)).strip()


def clean_titles(titles: pd.Series) -> pd.Series:
    """:func:`clean_title` of each title (object dtype; missing stays None, non-text becomes text)."""
    titles = titles.astype(object)
    present = titles.notna().to_numpy()
    out = np.full(len(titles), None, dtype=object)
    out[present] = [clean_title(str(t)) for t in titles.to_numpy()[present]]
    return pd.Series(out, index=titles.index, dtype=object)


def title_lookup(ids: np.ndarray, titles: pd.Series, wanted: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """The cleaned title of each raw id in ``wanted`` (None where the items file has no usable one) and
    counts for the data card. An id listed more than once takes its first usable title."""
    cleaned = clean_titles(titles)
    usable = cleaned.notna().to_numpy() & (cleaned.to_numpy() != "") & pd.notna(ids) & (ids != "")
    table = pd.DataFrame({"id": ids[usable], "title": cleaned.to_numpy()[usable]})
    first = table.drop_duplicates("id", keep="first")
    pos = pd.Index(first["id"]).get_indexer(wanted)
    found = np.full(len(wanted), None, dtype=object)
    found[pos >= 0] = first["title"].to_numpy()[pos[pos >= 0]]
    counts = {
        "rows": len(ids),
        "distinct_ids": int(pd.Series(ids).nunique()),
        "rows_without_usable_title": int((~usable).sum()),
        "ids_of_interactions_found": int(pd.Series(wanted).isin(ids).sum()),
        "ids_of_interactions_with_usable_title": int((pos >= 0).sum()),
    }
    return found, counts
