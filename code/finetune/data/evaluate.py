"""Ground the generations in the item space and score them (BIGRec ``evaluate.py``).

    python evaluate.py --result_file ../results/games/0_1024.json --data_name games --gpu 0

writes ``<result>.metrics.json`` (Recall/NDCG/Precision/MRR at 5/10/20/50) beside the result
file and prints the table. ``--input_dir`` + ``--filename`` is the original's form.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dealrec.data import DataError, load_dataset
from dealrec.ground import evaluate_results, metrics_path, parse_ks, result_data_name
from dealrec.io import discard_log, resolve_device, setup_logging
from dealrec.llm import ModelError
from dealrec.metrics import format_table

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--result_file", default=None, help="result JSON of inference.py")
    p.add_argument("--input_dir", default=str(HERE.parent / "results"), help="with --filename: <input_dir>/<data>/<filename>.json")
    p.add_argument("--filename", default=None)
    p.add_argument("--data_name", default=None, help="default: from the result manifest, else games")
    p.add_argument("--data_dir", default=str(REPO / "data"))
    p.add_argument("--base_model", default=None, help="the BASE model of the fine-tuning (default: embedded)")
    p.add_argument("--gpu", default="cpu", help="GPU index or cpu")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--ks", default="5,10,20,50")
    p.add_argument("--max_items", type=int, default=None, help="demo only: rank among the first N items + targets")
    p.add_argument("--log_file", default=None)
    a = p.parse_args(argv)

    if a.result_file:
        result = Path(a.result_file)
    elif a.filename:
        result = Path(a.input_dir) / (a.data_name or "games") / f"{a.filename}.json"
    else:
        p.error("give --result_file or --filename")
    data_name = a.data_name or result_data_name(result) or "games"
    log = setup_logging(a.log_file or result.with_name(result.stem + ".evaluate.log"), defer=a.log_file is None)
    try:
        ks = parse_ks(a.ks)
        data = load_dataset(a.data_dir, data_name)
        report = evaluate_results(
            result, data, a.base_model, ks, a.batch_size,
            resolve_device(a.gpu), a.max_items,
        )
    except (DataError, ModelError, OSError, ValueError) as e:
        log.error("%s", e)
        discard_log()
        return 2
    print(format_table(report, report["ks"], names=("Recall", "NDCG", "Precision", "MRR")))
    print(f"users {report['n_users']}  empty generations {report['n_empty']}  "
          f"exact title matches {report['exact_title_share']:.3f}  ({report['catalogue']})")
    print(f"metrics: {metrics_path(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
