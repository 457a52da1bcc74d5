"""Reading the interactions file and the items file into compact columns.

Only the needed columns are read, with pyarrow's streaming CSV and JSON readers and its Parquet
reader (the engines behind pandas' ``engine="pyarrow"``; they are called directly so that ids stay
text, an id such as ``0000031852`` keeping its zeros, and so that the file is read block by block
rather than whole). Ids become int32 codes right away (dictionary encoding), so a
log of tens of millions of rows takes a few hundred MB. JSON lines that pyarrow cannot take (mixed
value types, Python literals) are read line by line in chunks. Layout recognition:
:mod:`dealrec.data.prepare.sniff` and :mod:`dealrec.data.prepare.columns`.
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from dealrec.data.prepare.columns import ColumnFlags, interaction_columns, item_columns
from dealrec.data.prepare.errors import PrepareError
from dealrec.data.prepare.sniff import GZIP_ERRORS, Layout, corrupt_gzip, open_binary, parquet_source, sniff
from dealrec.data.prepare.times import parse_times

BLOCK = 1 << 22
RECORD_CHUNK = 100_000


@dataclass
class Interactions:
    """The interactions: ``frame`` (see :mod:`dealrec.data.prepare.steps`) and the raw ids of its codes."""

    frame: pd.DataFrame
    user_ids: np.ndarray
    item_ids: np.ndarray
    columns: dict[str, str]
    time_kind: str
    layout: Layout


@dataclass
class Items:
    """The items file: one raw id and one raw title per row, in file order."""

    ids: np.ndarray
    titles: pd.Series
    columns: dict[str, str]
    layout: Layout
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = len(self.ids)


@contextlib.contextmanager
def _reading(layout: Layout) -> Iterator[None]:
    """Turns a reader's failure into one PrepareError naming the file (a corrupt gzip as such)."""
    try:
        yield
    except (PrepareError, MemoryError, KeyboardInterrupt):
        raise
    except GZIP_ERRORS as e:
        raise corrupt_gzip(layout.where, e) from None
    except Exception as e:  # noqa: BLE001 - pyarrow/pandas raise many types for a malformed file
        if layout.gzipped and not gzip_intact(layout):
            raise corrupt_gzip(layout.where, e) from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise PrepareError(f"{layout.where}: cannot read it as {layout.describe()} ({first}); "
                           "fix the file, or convert it to CSV, Parquet or JSON lines") from None


def gzip_intact(layout: Layout) -> bool:
    """Whether the whole gzip stream decompresses (CRC and length checked)."""
    try:
        with gzip.open(layout.path, "rb") as f:
            while f.read(BLOCK):
                pass
    except (*GZIP_ERRORS, OSError):
        return False
    return True


def read_table(layout: Layout, columns: list[str], multiline: bool = False, typed_time: str | None = None
               ) -> pa.Table:
    """The ``columns`` of the file, in file order. Delimited text is read as text, except the column
    ``typed_time``, which pyarrow may read as numbers or timestamps (less memory than text); where
    that fails the file is read again with it as text."""
    with _reading(layout):
        if layout.fmt == "parquet":
            return pq.read_table(parquet_source(layout.path, layout.gzipped), columns=columns)
        if layout.fmt == "json":
            return _read_json(layout, columns)
        if layout.sep == "::":
            return _read_double_colon(layout, columns)
        text = [c for c in columns if c != typed_time]
        try:
            return _read_csv(layout, columns, text, multiline, layout.encoding)
        except pa.ArrowInvalid as e:
            if "UTF8" in str(e) and layout.encoding == "utf-8":
                return _read_csv(layout, columns, columns, multiline, "latin-1")
            if typed_time is None or "conversion error" not in str(e):
                raise
        return _read_csv(layout, columns, columns, multiline, layout.encoding)


def _read_csv(layout: Layout, columns: list[str], text: list[str], multiline: bool, encoding: str) -> pa.Table:
    read = pacsv.ReadOptions(column_names=list(layout.names), skip_rows=1 if layout.header else 0,
                             encoding=encoding, block_size=BLOCK)
    parse = pacsv.ParseOptions(delimiter=layout.sep, quote_char=False if layout.sep == "\t" else '"',
                               newlines_in_values=multiline)
    convert = pacsv.ConvertOptions(include_columns=columns, column_types={c: pa.string() for c in text},
                                   null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True)
    source = pa.input_stream(str(layout.path), compression="gzip" if layout.gzipped else None)
    reader = pacsv.open_csv(source, read_options=read, parse_options=parse, convert_options=convert)
    return pa.Table.from_batches(list(reader), schema=reader.schema)


def _read_double_colon(layout: Layout, columns: list[str]) -> pa.Table:
    """``a::b::c`` lines (MovieLens 1M), with pandas' python engine; Latin-1 where UTF-8 fails
    beyond the sampled lines."""
    for encoding in dict.fromkeys((layout.encoding, "latin-1")):
        try:
            with open_binary(layout.path, layout.gzipped) as f:
                df = pd.read_csv(io.TextIOWrapper(f, encoding=encoding), sep="::", engine="python", header=None,
                                 skiprows=1 if layout.header else 0, names=list(layout.names), usecols=columns,
                                 dtype=str, keep_default_na=False, na_values=[""])
            return pa.Table.from_pandas(df[columns], preserve_index=False)
        except UnicodeDecodeError:
            continue
    raise AssertionError("Latin-1 decodes every byte")


def _read_json(layout: Layout, columns: list[str]) -> pa.Table:
    types = dict(layout.json_types)
    if not layout.literal and all(types.get(c, "string") != "other" for c in columns):
        schema = pa.schema([(c, pa.type_for_alias(types.get(c, "string"))) for c in columns])
        opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        try:
            source = pa.input_stream(str(layout.path), compression="gzip" if layout.gzipped else None)
            read = pajson.ReadOptions(block_size=BLOCK)
            if not hasattr(pajson, "open_json"):  # pyarrow < 19 has no streaming JSON reader
                return pajson.read_json(source, read_options=read, parse_options=opts)
            reader = pajson.open_json(source, read_options=read, parse_options=opts)
            return pa.Table.from_batches(list(reader), schema=reader.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass  # a type that changes after the sample, or a line longer than a block: line by line
    return _read_records(layout, columns)


def _parse_record(line: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return ast.literal_eval(line)


def _read_records(layout: Layout, columns: list[str]) -> pa.Table:
    """JSON or Python-literal lines, one object each, read in chunks keeping only ``columns`` (as text)."""
    chunks, rows = [], {c: [] for c in columns}
    with open_binary(layout.path, layout.gzipped) as f:
        for lineno, line in enumerate(io.TextIOWrapper(f, encoding="utf-8", errors="replace"), start=1):
            if not line.strip():
                continue
            try:
                record = _parse_record(line)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise PrepareError(f"{layout.where}:{lineno}: not a JSON object or Python dict literal "
                                   f"({line.strip()[:60]!r}); fix or remove that line") from None
            if not isinstance(record, dict):
                raise PrepareError(f"{layout.where}:{lineno}: not an object ({line.strip()[:60]!r})")
            for c in columns:
                v = record.get(c)
                rows[c].append(None if v is None else str(v))
            if len(rows[columns[0]]) >= RECORD_CHUNK:
                chunks.append(pa.table({c: pa.array(v, pa.string()) for c, v in rows.items()}))
                rows = {c: [] for c in columns}
    chunks.append(pa.table({c: pa.array(v, pa.string()) for c, v in rows.items()}))
    return pa.concat_tables(chunks)


def id_codes(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, ids)``: int32 codes (-1: missing or empty) and the raw id (str) of each code. Ids
    are compared without surrounding whitespace (trimmed in the dictionary, not in every row)."""
    if pa.types.is_floating(col.type):
        with contextlib.suppress(pa.ArrowInvalid):
            col = pc.cast(col, pa.int64())
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = pc.cast(col, pa.string())
    encoded = col.dictionary_encode()
    if len({len(c.dictionary) for c in encoded.chunks}) > 1:  # one memo table gives every chunk one dictionary
        encoded = encoded.unify_dictionaries()
    if encoded.num_chunks == 0:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=object)
    dictionary = encoded.chunks[0].dictionary
    codes = np.empty(len(encoded), dtype=np.int32)
    start = 0
    for chunk in encoded.chunks:
        codes[start: start + len(chunk)] = chunk.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        start += len(chunk)
    del encoded
    trimmed = pc.utf8_trim_whitespace(dictionary).dictionary_encode()
    ids = np.array(trimmed.dictionary.to_pylist(), dtype=object)
    if len(ids) == len(dictionary) and not (ids == "").any():
        return codes, ids  # no two ids merged by trimming, none empty: the codes stand
    remap = np.append(trimmed.indices.to_numpy(zero_copy_only=False).astype(np.int32), np.int32(-1))
    empty = np.flatnonzero(ids == "")
    if len(empty):
        remap[remap == empty[0]] = -1
    return remap[codes], ids  # code -1 picks remap's last entry, -1


def _pop(table: pa.Table, name: str) -> tuple[pa.ChunkedArray, pa.Table]:
    """The column and the table without it (so that its memory goes once the column is converted)."""
    return table.column(name), table.drop_columns([name])


def read_interactions(path: str, flags: ColumnFlags, with_rating: bool = False) -> Interactions:
    """The interactions file as an interaction frame with int32 id codes."""
    layout = sniff(path, "--interactions", flags.names())
    cols = interaction_columns(layout, flags, with_rating)
    table = read_table(layout, list(dict.fromkeys(cols.values())), typed_time=cols["time"])
    col, table = _pop(table, cols["user"])
    user, user_ids = id_codes(col)
    col, table = _pop(table, cols["item"])
    item, item_ids = id_codes(col)
    col, table = _pop(table, cols["time"])
    time, kind = parse_times(col, layout.where, cols["time"])
    del col
    frame = pd.DataFrame({"user": user, "item": item, "time": time})
    if "rating" in cols:
        rating = pc.cast(table.column(cols["rating"]), pa.string()).to_pandas()
        frame["rating"] = pd.to_numeric(rating, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    del table
    pa.default_memory_pool().release_unused()
    return Interactions(frame, user_ids, item_ids, cols, kind, layout)


def read_items(path: str, flags: ColumnFlags, item_col: str) -> Items:
    """The items file's ids and raw titles (``item_col``: the interactions' item column name)."""
    layout = sniff(path, "--items", flags.names() + (item_col,))
    cols = item_columns(layout, flags, item_col)
    table = read_table(layout, [cols["item"], cols["title"]], multiline=True)
    ids = pc.utf8_trim_whitespace(pc.cast(table.column(cols["item"]), pa.string()))
    titles = pc.cast(table.column(cols["title"]), pa.string()).to_pandas().astype(object)
    return Items(np.array(ids.to_pylist(), dtype=object), titles, cols, layout)
