"""TIGER, DEALRec's second recommender, trained on a selection's few-shot files and scored.

    python tiger.py --train_data_path data/games/train/train-1024.json \
        --val_data_path data/games/valid/valid-1024.json --test_data_path data/games/test/test.json \
        --output_dir model/games/tiger_0_1024 --result_file results/games/tiger_0_1024.json

``finetune.sh <data> --backend tiger`` runs it after gen_fewshot.py. The options are built from
:class:`dealrec.tiger.cli.TigerConfig` (``--help`` lists them).
"""

from __future__ import annotations

import sys
from pathlib import Path

from dealrec.tiger.cli import TigerConfig, main

REPO = Path(__file__).resolve().parents[2]

if __name__ == "__main__":
    sys.exit(main(base=TigerConfig(data_dir=str(REPO / "data"))))
