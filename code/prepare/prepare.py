"""Turn interaction logs and item titles into a data-set folder in the DEALRec authors' format.

    python code/prepare/prepare.py --interactions ratings.csv --items movies.csv --name ml-latest-small \
        --item_noun movies

Options: ``--help``; the page docs/own-data.md describes the format, the options and the data card.
The folder goes to the repository's data/ unless --out_dir says otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO / "code") not in sys.path:
    sys.path.insert(0, str(REPO / "code"))

from dealrec.data.prepare.cli import main  # noqa: E402 - after the path is set

if __name__ == "__main__":
    sys.exit(main(default_out_dir=str(REPO / "data")))
