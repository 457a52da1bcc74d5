"""Beam-search generation for the test users (BIGRec ``inference.py`` / ``inference_ddp.py``).

    python inference.py --lora_weights model/games/0_1024 \
        --test_data_path data/games/test/test.json --result_json_data results/games/0_1024.json
    torchrun --nproc_per_node 4 inference.py ...   # shards the test users over 4 processes

Interrupted runs resume: answers are saved per batch beside the result file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dealrec.generate import InferenceConfig, run_inference
from dealrec.io import discard_log, setup_logging
from dealrec.llm import ModelError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base_model", default=None, help="local HF model folder (default: the embedded model)")
    p.add_argument("--lora_weights", default=None, help="adapter folder of finetune.py (none: the base model)")
    p.add_argument("--test_data_path", required=True)
    p.add_argument("--result_json_data", required=True, help="output JSON (results/<data>/<run>.json)")
    p.add_argument("--num_beams", type=int, default=4)
    p.add_argument("--max_new_tokens", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_test_users", type=int, default=None)
    p.add_argument("--cutoff_len", type=int, default=512, help="longest prompt (oldest tokens dropped)")
    p.add_argument("--quantization", choices=["none", "8bit", "4bit"], default="none")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--log_file", default=None, help="default: <result>.log (rank 0)")
    a = p.parse_args(argv)

    rank = int(os.environ.get("RANK", 0))
    result = Path(a.result_json_data)
    log_file = a.log_file or result.with_name(result.stem + ".inference.log")
    log = setup_logging(log_file if rank == 0 else None, defer=a.log_file is None)
    cfg = InferenceConfig(
        test_file=a.test_data_path, result_file=a.result_json_data, base_model=a.base_model,
        lora_weights=a.lora_weights, num_beams=a.num_beams, max_new_tokens=a.max_new_tokens,
        batch_size=a.batch_size, max_test_users=a.max_test_users, cutoff_len=a.cutoff_len,
        quantization=None if a.quantization == "none" else a.quantization, overwrite=a.overwrite,
    )
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
