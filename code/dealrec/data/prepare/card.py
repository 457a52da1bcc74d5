"""The data card ``<NAME>/dataset.json`` and the prompt phrases it carries.

The card records where the data came from (each file's size and the first 16 hex digits of its
SHA-256, its recognised layout and columns), every option, each step's rows in and out and why
rows were dropped, the users/items/interactions per split, the few-shot pool (users with at least
3 training items, the users that ``--n_fewshot`` draws from) and, under ``"prompt"``, the
instruction and input phrase of the prompts (``item_noun``, ``instruction``, ``input_prefix``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from dealrec.data.prepare.errors import PrepareError
from dealrec.data.prepare.steps import PARTS, Sequences

FEWSHOT_N = 1024
FEWSHOT_POOL_MIN = 1400  # 1,024 after 10 % hard pruning, with room for strata that run short
INSTRUCTION = "Given the {noun} that the user interacted with before, please recommend a new {singular} " \
              "that the user likes to the user."
INPUT_PREFIX = "The user has interacted with the following {noun} before, with titles as:"


def singular(noun: str) -> str:
    """``"items"`` -> ``"item"``, ``"game products"`` -> ``"game product"``: one trailing "s" off
    (not of "ss"); pass ``--item_noun_singular`` where that is wrong ("boxes", "series")."""
    return noun[:-1] if noun.endswith("s") and not noun.endswith("ss") else noun


def prompt_phrases(noun: str = "items", singular_noun: str | None = None, instruction: str | None = None,
                   input_prefix: str | None = None) -> dict[str, str]:
    """``{"item_noun", "instruction", "input_prefix"}``: built from the noun unless given verbatim."""
    noun = noun.strip()
    if not noun:
        raise PrepareError("--item_noun: empty; pass the plural noun of the items, e.g. --item_noun movies")
    one = (singular_noun or singular(noun)).strip()
    out = {
        "item_noun": noun,
        "instruction": instruction if instruction is not None else INSTRUCTION.format(noun=noun, singular=one),
        "input_prefix": input_prefix if input_prefix is not None else INPUT_PREFIX.format(noun=noun),
    }
    for key in ("instruction", "input_prefix"):
        if not out[key].strip():
            raise PrepareError(f"--{key}: empty; pass the phrase, or leave the flag out to build it from --item_noun")
    return out


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()[:16]


def source_entry(path: str, layout_text: str, columns: dict[str, str], **extra: Any) -> dict[str, Any]:
    p = Path(path)
    return {"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256_16": file_digest(p),
            "layout": layout_text, "columns": columns, **extra}


def split_summary(seqs: dict[str, Sequences]) -> dict[str, dict[str, int]]:
    """Per split: users with items, distinct items, interactions."""
    return {part: {"users_with_items": int((s.lengths() > 0).sum()),
                   "items": int(len(np.unique(s.items))),
                   "interactions": int(len(s.items))} for part, s in seqs.items()}


def fewshot_pool(seqs: dict[str, Sequences]) -> tuple[dict[str, Any], list[str]]:
    """The users with >= 3 training items, and a warning when they are too few for n = 1,024."""
    n = int((seqs["train"].lengths() >= 3).sum())
    pool = {"users_with_3_or_more_train_items": n, "recommended_minimum_for_n_1024": FEWSHOT_POOL_MIN}
    warnings = []
    if n < FEWSHOT_POOL_MIN:
        warnings.append(
            f"only {n} users have >= 3 training items; DEALRec at --n_fewshot {FEWSHOT_N} needs at least "
            f"~{FEWSHOT_POOL_MIN} (10% are hard-pruned first and strata may run short): use a smaller "
            "--n_fewshot, a smaller --kcore, or more data")
    return pool, warnings


def build_card(name: str, sources: dict[str, Any], options: dict[str, Any], steps: list[dict[str, Any]],
               items_file: dict[str, int], seqs: dict[str, Sequences], n_users: int, n_items: int,
               prompt: dict[str, str], time_range: list[str]) -> dict[str, Any]:
    pool, warnings = fewshot_pool(seqs)
    return {
        "name": name,
        "format": "the DEALRec authors' data-set folder (see data/README.md)",
        "sources": sources,
        "options": options,
        "steps": steps,
        "items_file": items_file,
        "users": n_users,
        "items": n_items,
        "interactions": int(sum(len(seqs[p].items) for p in PARTS)),
        "time_range_utc": time_range,
        "splits": split_summary(seqs),
        "fewshot_pool": pool,
        "warnings": warnings,
        "prompt": prompt,
    }
