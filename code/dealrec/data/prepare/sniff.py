"""Recognising an input file: compression, format, delimiter, header and text encoding.

A file is gzipped when it starts with the gzip magic bytes, whatever its name says. The format
comes from the name without ``.gz`` (``.parquet``/``.pq``: Parquet; ``.json``/``.jsonl``/
``.ndjson``: JSON lines) or, for any other name, from the content (``PAR1``: Parquet; a first
line starting with ``{``: JSON lines; anything else: delimited text). JSON lines that are Python
literals (``{'asin': ...}``, the Amazon 2014 metadata files) are recognised by their first line.

Delimited text: the delimiter is the first of tab, comma, semicolon, ``|`` and space that splits
the first lines into one constant number (> 1) of fields (``::`` when every line holds it, as in
MovieLens 1M); a tab-separated file has no quoting (as RecBole's atomic files). The first line is
a header when one of its fields is a known column name (:mod:`dealrec.data.prepare.columns`) or
a name given by a flag, or when none of its fields is a number while the second line has one.
Text is UTF-8 when the first lines decode as UTF-8, else Latin-1 (MovieLens ``u.item``).
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from dealrec.data.prepare.columns import KNOWN_NAMES, normalise
from dealrec.data.prepare.errors import PrepareError

GZIP_MAGIC = b"\x1f\x8b"
SAMPLE_LINES = 50
SAMPLE_BYTES = 1 << 22
DELIMITERS = ("\t", ",", ";", "|", " ")
GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


@dataclass(frozen=True)
class Layout:
    """How to read one input file."""

    path: Path
    flag: str  # the flag that named it, for messages
    fmt: str  # "delimited" | "parquet" | "json"
    gzipped: bool
    names: tuple[str, ...]  # column names: the header's, or "1", "2", ... without one
    sep: str | None = None
    header: bool = True
    encoding: str = "utf-8"
    literal: bool = False  # JSON lines written as Python literals
    json_types: tuple[tuple[str, str], ...] = ()  # JSON lines: (key, pyarrow type name) seen in the sample

    @property
    def where(self) -> str:
        return f"{self.flag} {self.path}"

    def describe(self) -> str:
        """A short human-readable name of the layout, for the data card."""
        kind = {"delimited": f"delimited text (delimiter {self.sep!r}, "
                             f"{'header' if self.header else 'no header'}, {self.encoding})",
                "parquet": "Parquet", "json": "Python-literal lines" if self.literal else "JSON lines"}
        return kind[self.fmt] + (", gzipped" if self.gzipped else "")


def is_gzipped(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_binary(path: Path, gzipped: bool) -> BinaryIO:
    """The file's bytes, decompressed when gzipped."""
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def corrupt_gzip(where: str, e: BaseException) -> PrepareError:
    return PrepareError(f"{where}: corrupt or truncated gzip file ({type(e).__name__}: {e}); "
                        "download or compress it again (check it with: gzip -t FILE)")


def _sample(path: Path, gzipped: bool, where: str) -> list[bytes]:
    """The first complete, non-empty lines (at most SAMPLE_LINES, about SAMPLE_BYTES); ``[b"PAR1"]``
    for a Parquet file."""
    lines: list[bytes] = []
    try:
        with open_binary(path, gzipped) as f:
            if f.read(4) == b"PAR1":
                return [b"PAR1"]
            f.seek(0)
            size = 0
            while len(lines) < SAMPLE_LINES and size < SAMPLE_BYTES:
                line = f.readline()
                if not line:
                    break
                size += len(line)
                if line.strip():
                    lines.append(line.rstrip(b"\r\n"))
    except GZIP_ERRORS as e:
        raise corrupt_gzip(where, e) from None
    return lines


def parquet_source(path: Path, gzipped: bool) -> Any:
    """What pyarrow reads a Parquet file from: the path, or the decompressed bytes of a gzipped one."""
    import pyarrow as pa

    if not gzipped:
        return str(path)
    with gzip.open(path, "rb") as f:
        return pa.BufferReader(f.read())


def sniff(path: str | Path, flag: str, flag_names: tuple[str, ...] = ()) -> Layout:
    """The :class:`Layout` of ``path`` (named by ``flag``); ``flag_names`` are column names
    given by flags, which mark a first line as a header."""
    path = Path(path)
    where = f"{flag} {path}"
    if path.is_dir():
        raise PrepareError(f"{where}: a folder, not a file; pass the file itself")
    if not path.is_file():
        raise PrepareError(f"{where}: no such file; check the path")
    gz = is_gzipped(path)
    lines = _sample(path, gz, where)
    if not lines:
        raise PrepareError(f"{where}: the file is empty; pass a file with one row per "
                           f"{'interaction' if flag == '--interactions' else 'item'}")
    suffix = path.suffixes[-2] if gz and path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
    if suffix.lower() in (".parquet", ".pq") or lines[0] == b"PAR1":
        return _parquet_layout(path, flag, gz)
    if suffix.lower() in (".json", ".jsonl", ".ndjson") or lines[0].lstrip().startswith(b"{"):
        return _json_layout(path, flag, gz, lines)
    return _delimited_layout(path, flag, gz, lines, flag_names)


def _parquet_layout(path: Path, flag: str, gz: bool) -> Layout:
    import pyarrow.parquet as pq

    try:
        names = tuple(pq.read_schema(parquet_source(path, gz)).names)
    except GZIP_ERRORS as e:
        raise corrupt_gzip(f"{flag} {path}", e) from None
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise PrepareError(f"{flag} {path}: not a readable Parquet file ({e}); write it again") from None
    return Layout(path, flag, "parquet", gz, names)


def _json_layout(path: Path, flag: str, gz: bool, lines: list[bytes]) -> Layout:
    """Column names: every key of the sample lines (a key may be absent from the first ones);
    ``json_types``: the value type of each key in the sample (what pyarrow is asked to read)."""
    records, literal = [], False
    for raw in lines:
        text = raw.decode("utf-8", errors="replace")
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            try:
                record, literal = ast.literal_eval(text), True
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                if records:
                    break  # a line cut by the sample's size limit
                raise PrepareError(f"{flag} {path}: the first line is neither JSON nor a Python dict "
                                   f"literal ({text[:60]!r}); pass JSON lines (one object per line)") from None
        if not isinstance(record, dict):
            raise PrepareError(f"{flag} {path}: a line is not an object ({text[:60]!r}); pass JSON lines "
                               "with one object per line")
        records.append(record)
    types: dict[str, set[str]] = {}
    for record in records:
        for k, v in record.items():
            types.setdefault(str(k), set()).add(_json_type(v))
    json_types = tuple((k, _arrow_type(t)) for k, t in types.items())
    return Layout(path, flag, "json", gz, tuple(types), literal=literal, json_types=json_types)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "int" if isinstance(value, int) else "float"
    return "string" if isinstance(value, str) else "other"


def _arrow_type(seen: set[str]) -> str:
    """The pyarrow type name to read a JSON field with; "other" (lists, objects, a mix): read as text
    line by line."""
    seen = seen - {"null"}
    if seen <= {"string"}:
        return "string"
    if seen <= {"int"}:
        return "int64"
    if seen <= {"int", "float"}:
        return "float64"
    return "bool" if seen == {"bool"} else "other"


def _delimited_layout(path: Path, flag: str, gz: bool, raw: list[bytes],
                      flag_names: tuple[str, ...]) -> Layout:
    try:
        lines, encoding = [r.decode("utf-8-sig") for r in raw], "utf-8"
    except UnicodeDecodeError:
        lines, encoding = [r.decode("latin-1") for r in raw], "latin-1"
    sep = delimiter(lines)
    if sep is None:
        raise PrepareError(f"{flag} {path}: cannot tell the delimiter (tab, comma, ';', '|', space or '::'"
                           f" splitting every line into the same number of columns); first line: "
                           f"{lines[0][:80]!r}")
    rows = split_rows(lines[:2], sep)
    header = has_header(rows, flag_names)
    names = tuple(f.strip() for f in rows[0]) if header else tuple(str(i + 1) for i in range(len(rows[0])))
    return Layout(path, flag, "delimited", gz, names, sep=sep, header=header, encoding=encoding)


def split_rows(lines: list[str], sep: str) -> list[list[str]]:
    if sep == "::":
        return [line.split("::") for line in lines]
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    return list(csv.reader(lines, delimiter=sep, quoting=quoting))


def delimiter(lines: list[str]) -> str | None:
    """The delimiter that splits every sample line into the same number (> 1) of fields."""
    if all("::" in line for line in lines):
        return "::"
    for sep in DELIMITERS:
        counts = {len(row) for row in split_rows(lines, sep)}
        if len(counts) == 1 and counts.pop() > 1:
            return sep
    return None


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def has_header(rows: list[list[str]], flag_names: tuple[str, ...] = ()) -> bool:
    """Whether the first of ``rows`` names the columns (see the module docstring)."""
    known = set(KNOWN_NAMES) | {normalise(n) for n in flag_names if not n.isdigit()}
    first = rows[0]
    if any(normalise(f) in known for f in first):
        return True
    if len(rows) > 1 and not any(_is_number(f) for f in first):
        return any(_is_number(f) for f in rows[1])
    return False
