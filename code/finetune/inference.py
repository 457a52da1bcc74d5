"""Beam-search generation for the test users (BIGRec ``inference.py`` / ``inference_ddp.py``).

    python inference.py --lora_weights model/games/0_1024 \
        --test_data_path data/games/test/test.json --result_json_data results/games/0_1024.json
    torchrun --nproc_per_node 4 inference.py ...   # shards the test users over 4 processes

Interrupted runs resume: answers are saved per batch beside the result file. The options are
built from :class:`dealrec.llm.generate.InferenceConfig`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dealrec.config import Alias, build_parser, parse
from dealrec.core.dist import dist_info
from dealrec.core.logs import discard_log, setup_logging
from dealrec.llm.generate import InferenceConfig, run_inference
from dealrec.llm.model import ModelError
from dealrec.presets import finetune_preset

ALIASES: dict[str, Alias] = {
    "test_data_path": Alias(("test_file",)),
    "result_json_data": Alias(("result_file",), note="output JSON (results/<data>/<run>.json)"),
    "gen_engine": Alias(("engine",), note="fast: each prompt prefilled once, the shared prefix once (CPU "
                        "default); hf: transformers' generate (the reference; GPU default); auto"),
    "gen_precision": Alias(("precision",), note="fp32; bf16: the fast path in bf16 on a CPU with native bf16 "
                           "(not exact: docs/performance.md); auto"),
}
PRESETS = finetune_preset("inference")


def main(argv: list[str] | None = None) -> int:
    p = build_parser(InferenceConfig, ALIASES, PRESETS, description=__doc__)
    p.add_argument("--log_file", default=None, help="default: <result>.log (rank 0)")
    cfg, a, _ = parse(InferenceConfig, argv, ALIASES, PRESETS, parser=p)
    if not cfg.test_file or not cfg.result_file:
        p.error("--test_data_path and --result_json_data are required")
    result = Path(cfg.result_file)
    log_file = a.log_file or result.with_name(result.stem + ".inference.log")
    log = setup_logging(log_file if dist_info().main else None, defer=a.log_file is None)
    try:
        records = run_inference(cfg)
    except (ModelError, OSError, ValueError) as e:
        log.error("%s", e)
        discard_log()
        return 2
    if records is not None:
        print(f"{len(records)} answers written to {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
