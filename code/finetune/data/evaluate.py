"""Ground the generations in the item space and score them (BIGRec ``evaluate.py``).

    python evaluate.py --result_file ../results/games/0_1024.json --data_name games --gpu 0

writes ``<result>.metrics.json`` (Recall/NDCG/Precision/MRR at 5/10/20/50) beside the result
file and prints the table. ``--input_dir`` + ``--filename`` is the original's form. The
options are built from :class:`dealrec.llm.ground.EvaluateConfig`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dealrec.config import build_parser, parse
from dealrec.core.hardware import resolve_device
from dealrec.core.logs import discard_log, setup_logging
from dealrec.data.dataset import DataError, load_dataset
from dealrec.llm.ground import EvaluateConfig, evaluate_results, metrics_path, parse_ks, result_data_name
from dealrec.llm.model import ModelError
from dealrec.metrics import format_table
from dealrec.presets import finetune_preset

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PRESETS = finetune_preset("evaluate")


def main(argv: list[str] | None = None) -> int:
    base = EvaluateConfig(input_dir=str(HERE.parent / "results"), data_dir=str(REPO / "data"))
    p = build_parser(EvaluateConfig, {}, PRESETS, base, description=__doc__)
    p.add_argument("--log_file", default=None)
    a, ns, _ = parse(EvaluateConfig, argv, {}, PRESETS, base, parser=p)

    if a.result_file:
        result = Path(a.result_file)
    elif a.filename:
        result = Path(a.input_dir) / (a.data_name or "games") / f"{a.filename}.json"
    else:
        p.error("give --result_file or --filename")
    data_name = a.data_name or result_data_name(result) or "games"
    log = setup_logging(ns.log_file or result.with_name(result.stem + ".evaluate.log"), defer=ns.log_file is None)
    try:
        ks = parse_ks(",".join(map(str, a.ks)))
        data = load_dataset(a.data_dir, data_name)
        report = evaluate_results(
            result, data, a.base_model, ks, a.batch_size,
            resolve_device(a.gpu), a.max_items, precision=a.ground_precision,
            layout=a.embed_layout,
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
