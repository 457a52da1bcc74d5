"""Timestamps: numbers (seconds, milliseconds, ...) or date strings, as float64 for ordering.

Numbers are kept as they are (only their order matters); their unit is named from their size for
the data card. Date strings and date columns are parsed with pandas (time-zone aware, UTC) and
become seconds since 1970. An empty cell is a missing time (the row is dropped later and counted);
a cell that is neither a number nor a date is an error naming the column and the value.
"""

from __future__ import annotations

import warnings
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from dealrec.data.prepare.errors import PrepareError

UNITS = ((1e17, "nanoseconds"), (1e14, "microseconds"), (1e11, "milliseconds"))
UNIT_SCALE = {"nanoseconds": 1e9, "microseconds": 1e6, "milliseconds": 1e3, "seconds": 1.0}


def numeric_unit(values: np.ndarray) -> str:
    """The unit of epoch numbers, from their largest magnitude (1e11 s is the year 5138)."""
    finite = values[np.isfinite(values)]
    top = float(np.abs(finite).max()) if len(finite) else 0.0
    return next((name for bound, name in UNITS if top >= bound), "seconds")


def parse_times(col: pa.ChunkedArray, where: str, name: str) -> tuple[np.ndarray, str]:
    """``(values, kind)``: float64 values in input order (NaN = missing) and what they are
    (``"seconds"``, ``"milliseconds"``, ... or ``"dates"``, then in seconds)."""
    kind = col.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        values = _to_float(col)
        return values, numeric_unit(values)
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return _seconds(pd.to_datetime(col.to_pandas(), utc=True)), "dates"
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        col = pc.cast(col, pa.string())
    col = pc.utf8_trim_whitespace(col)
    try:
        values = _to_float(pc.cast(col, pa.float64()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        text = col.to_pandas().astype(object)
        numbers = pd.to_numeric(text, errors="coerce")
        if numbers.notna().any():  # a column of numbers with some other values in it
            _bad_value(text, numbers.isna() & text.notna() & (text != ""), where, name)
        return _seconds(_parse_dates(text, where, name)), "dates"
    return values, numeric_unit(values)


def _to_float(col: pa.ChunkedArray) -> np.ndarray:
    """float64 values, NaN where null (filled chunk by chunk: one full-size copy only)."""
    out = np.empty(len(col), dtype=np.float64)
    start = 0
    for chunk in col.chunks:
        values = pc.cast(chunk, pa.float64()).to_numpy(zero_copy_only=False)
        out[start: start + len(values)] = values
        start += len(values)
    return out


def _parse_dates(text: pd.Series, where: str, name: str) -> pd.Series:
    """Date strings -> UTC timestamps; an unparsable non-empty value is a PrepareError."""
    text = text.astype(object).where(text.notna() & (text.astype(object) != ""), None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(text, errors="coerce", utc=True)
        bad = parsed.isna() & text.notna()
        if bad.any():
            parsed[bad] = pd.to_datetime(text[bad], errors="coerce", utc=True, format="mixed")
            bad = parsed.isna() & text.notna()
    _bad_value(text, bad, where, name)
    return parsed


def _bad_value(text: pd.Series, bad: pd.Series, where: str, name: str) -> None:
    """A PrepareError naming the first value of ``text`` where ``bad`` holds (none: no error)."""
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise PrepareError(f"{where}: column {name!r}, data row {row + 1}: {text.iloc[row]!r} is neither a "
                           f"number nor a date ({int(bad.sum())} such values); fix them, or pass --time_col with "
                           "the time column")


def _seconds(stamps: pd.Series) -> np.ndarray:
    delta = stamps - pd.Timestamp(0, tz="UTC")
    return (delta / pd.Timedelta(1, "s")).to_numpy(dtype=np.float64, na_value=np.nan)


def iso_range(values: np.ndarray, kind: str) -> list[str]:
    """``[first, last]`` of the times as ISO dates (UTC), for the data card; empty when none."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return []
    scale = UNIT_SCALE.get(kind, 1.0)
    out = []
    for v in (finite.min(), finite.max()):
        try:
            out.append(datetime.fromtimestamp(v / scale, tz=timezone.utc).isoformat(timespec="seconds"))
        except (OverflowError, OSError, ValueError):
            out.append(str(v))
    return out
