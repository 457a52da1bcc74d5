"""The ``prepare`` command: interaction logs and an items file -> a data-set folder.

    python code/prepare/prepare.py --interactions ratings.csv --items movies.csv --name ml-latest-small \
        --item_noun movies

Bad input is one line ``error: ...`` on stderr and exit status 2, with nothing written.
"""

from __future__ import annotations

import argparse
import sys

from dealrec.data.prepare.errors import PrepareError
from dealrec.data.prepare.pipeline import PrepareOptions, Result, prepare


def build_parser(default_out_dir: str = "data") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prepare.py", description="Interaction logs and an items file -> a "
                                "data-set folder in the DEALRec authors' format (docs/own-data.md).")
    p.add_argument("--interactions", required=True, help="interactions: CSV/TSV, Parquet, JSON lines (.gz too), "
                   "RecBole .inter, Amazon Reviews, MovieLens ratings.csv/u.data")
    p.add_argument("--items", required=True, help="item titles: same formats, RecBole .item, Amazon meta_*.json(l), "
                   "MovieLens movies.csv/u.item")
    p.add_argument("--name", required=True, help="the data-set name: the folder <out_dir>/<name>/")
    p.add_argument("--out_dir", default=default_out_dir, help="where the folder goes (default: %(default)s)")
    p.add_argument("--kcore", type=int, default=5, help="iterative k-core on users and items; 0: off (default: %(default)s)")
    p.add_argument("--split", default="time", choices=("time", "loo"),
                   help="time (default): global time cut at --ratios, the authors' convention; loo: per user the "
                   "last item is test, the one before valid")
    p.add_argument("--ratios", default="0.8,0.1,0.1", help="train,valid,test shares of --split time (default: %(default)s)")
    p.add_argument("--min_rating", type=float, default=None, help="keep interactions rated at least this")
    p.add_argument("--item_noun", default="items", help="what the items are, plural, for the prompt phrases (default: %(default)s)")
    p.add_argument("--item_noun_singular", default=None, help="its singular (default: --item_noun less one 's')")
    p.add_argument("--instruction", default=None, help="the prompt's instruction, verbatim")
    p.add_argument("--input_prefix", default=None, help="the phrase before the history titles, verbatim")
    for role in ("user", "item", "time", "title", "rating"):
        p.add_argument(f"--{role}_col", default=None, help=f"the {role} column: a header name or a number "
                       "(1 = the first column); default: recognised")
    p.add_argument("--items_item_col", default=None, help="the item id column of --items when its name differs "
                   "from the interactions' item column")
    p.add_argument("--overwrite", action="store_true", help="replace an existing <out_dir>/<name>/")
    return p


def parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise PrepareError(f"--ratios {text}: pass three numbers train,valid,test that sum to 1, e.g. 0.8,0.1,0.1")
    return values  # type: ignore[return-value]


def options(ns: argparse.Namespace) -> PrepareOptions:
    fields = dict(vars(ns))
    fields["ratios"] = parse_ratios(ns.ratios)
    return PrepareOptions(**fields)


def summary(result: Result) -> str:
    card = result.card
    parts = card["splits"]
    return (f"wrote {result.root}: {card['users']} users, {card['items']} items, "
            f"{parts['train']['interactions']}/{parts['valid']['interactions']}/{parts['test']['interactions']} "
            f"train/valid/test interactions; {card['fewshot_pool']['users_with_3_or_more_train_items']} users "
            "with >= 3 training items (card: dataset.json)")


def main(argv: list[str] | None = None, default_out_dir: str = "data") -> int:
    ns = build_parser(default_out_dir).parse_args(argv)
    try:
        result = prepare(options(ns))
    except (ValueError, OSError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    for warning in result.card["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(summary(result))
    return 0
