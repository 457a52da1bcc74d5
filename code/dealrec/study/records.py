"""The study's run records: the small, committed result files a study resumes from.

A record folder (``records/study/<preset>/`` for a named preset) holds, per finished run, what the
report needs and nothing heavy:

- ``selection/<strategy>_s<seed>.json`` — the selected user indices and the selection's summary;
- ``llm/<strategy>_s<seed>.json`` — the LLM signal's metrics, timings and its configuration;
- ``sasrec/<label>_s<seed>.json`` — the SASRec signal's metrics;
- ``tiger/<label>_s<seed>.json`` — the TIGER signal's metrics and timings;
- ``<signal>/<name>.hits.json`` — per test user (the order of ``users/<signal>.json``), the
  0-based rank of each of its targets within the top max(K), or -1 (one compact JSON line);
- ``users/<signal>.json`` — the test users of a signal (the same for every run of it).

Every record carries the ``key`` (a hash of ``params``: the settings that determine the run,
without paths, devices or batch sizes that do not change the result) it was made with, and the
``machine`` that ran it (:func:`dealrec.core.hardware.describe`: its timings are that machine's); a run
whose record has the expected key is never recomputed, so a study resumes from its records on a
machine without the heavy caches (scores, adapters, title embeddings).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dealrec.core.cache import cache_key
from dealrec.core.files import jsonable, read_json, write_compact_json, write_text
from dealrec.core.hardware import describe
from dealrec.study.config import SIGNALS

_NUMBER_LIST = re.compile(r"\[(?:\s|[-+\d.eE,]|null|NaN)*\]")


def write_record_json(path: str | Path, obj: Any) -> None:
    """Indented JSON whose lists of numbers stay on one line (readable diffs, small files)."""
    text = json.dumps(jsonable(obj), indent=1, ensure_ascii=False)
    text = _NUMBER_LIST.sub(lambda m: re.sub(r"\s+", "", m.group()).replace(",", ", "), text)
    write_text(path, text + "\n")


def users_key(users: Sequence[int | None]) -> str:
    return cache_key({"users": list(users)})


class Records:
    """Read and write the records under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, name: str) -> Path:
        return self.root / kind / f"{name.replace(' ', '-')}.json"

    def hits_path(self, kind: str, name: str) -> Path:
        return self.root / kind / f"{name.replace(' ', '-')}.hits.json"

    def get(self, kind: str, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """The record of ``name`` if it exists with the key of ``params`` (and its per-user file,
        for the signals); None otherwise."""
        path = self.path(kind, name)
        if not path.is_file():
            return None
        try:
            rec = read_json(path)
        except (OSError, json.JSONDecodeError):
            return None
        if rec.get("key") != cache_key(params):
            return None
        if kind in SIGNALS and not self.hits_path(kind, name).is_file():
            return None
        return rec

    def put(self, kind: str, name: str, params: dict[str, Any], record: dict[str, Any],
            hit_ranks: Sequence[Sequence[int]] | None = None, users: Sequence[int | None] | None = None) -> dict:
        """Write ``record`` (with its key and params) and, for a signal, its per-user hit ranks
        (first, so that a record never exists without them)."""
        rec = {"key": cache_key(params), **record, "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "machine": describe(), "params": params}
        if hit_ranks is not None:
            if users is None or len(users) != len(hit_ranks):
                raise ValueError(f"{kind}/{name}: per-user hit ranks need their users in the same order")
            rec["users_key"] = users_key(users)
            write_compact_json(self.hits_path(kind, name), {"users_key": rec["users_key"], "hit_ranks": hit_ranks})
        write_record_json(self.path(kind, name), rec)
        return rec

    def hit_ranks(self, kind: str, name: str, rec: dict[str, Any]) -> list[list[int]]:
        """The per-user hit ranks of a record, checked against the record's users."""
        hits = read_json(self.hits_path(kind, name))
        if hits.get("users_key") != rec.get("users_key"):
            raise ValueError(f"{self.hits_path(kind, name)} belongs to other test users than {self.path(kind, name)}")
        return hits["hit_ranks"]

    def write_users(self, signal: str, users: Sequence[int | None]) -> str:
        """``users/<signal>.json``: the test users of a signal (written when they change)."""
        key = users_key(users)
        path = self.root / "users" / f"{signal}.json"
        if not (path.is_file() and read_json(path).get("users_key") == key):
            write_compact_json(path, {"users_key": key, "n": len(users), "users": list(users)})
        return key

    def read_users(self, signal: str) -> list[int | None]:
        return read_json(self.root / "users" / f"{signal}.json")["users"]
