"""LoRA fine-tuning of the LLM recommender (BIGRec / alpaca-lora ``finetune.py`` flags).

    python finetune.py --train_data_path data/games/train/train-1024.json \
        --val_data_path data/games/valid/valid-1024.json --output_dir model/games/0_1024

Works as a single process (CPU or one GPU) and under ``accelerate launch`` / ``torchrun``
(the accumulation is batch_size / (micro_batch_size x processes)).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dealrec.finetune import FinetuneConfig, train
from dealrec.io import discard_log, setup_logging
from dealrec.llm import ModelError, parse_modules


def str2bool(v: str) -> bool:
    if v.lower() in {"1", "true", "yes", "y"}:
        return True
    if v.lower() in {"0", "false", "no", "n"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def first(v: list[str] | None) -> str | None:
    if not v:
        return None
    if len(v) > 1:
        raise SystemExit("only one --train_data_path / --val_data_path file is supported")
    return v[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base_model", default=None, help="local HF model folder (default: the embedded model)")
    p.add_argument("--train_data_path", nargs="+", required=True)
    p.add_argument("--val_data_path", nargs="*", default=None)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--sample", type=int, default=-1, help="use a random N training examples (-1: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--micro_batch_size", type=int, default=4)
    p.add_argument("--num_epochs", type=float, default=50)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--warmup_steps", type=int, default=20)
    p.add_argument("--cutoff_len", type=int, default=512)
    p.add_argument("--val_set_size", type=int, default=None)
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--lora_alpha", type=int, default=16)
    p.add_argument("--lora_dropout", type=float, default=0.05)
    p.add_argument("--lora_target_modules", nargs="+", default=["q_proj", "v_proj"],
                   help="q_proj v_proj, q_proj,v_proj or the original's [q_proj,v_proj]")
    p.add_argument("--train_on_inputs", type=str2bool, nargs="?", const=True, default=True)
    p.add_argument("--group_by_length", type=str2bool, nargs="?", const=True, default=True)
    p.add_argument("--resume_from_checkpoint", default=None,
                   help="warm-start LoRA adapter folder; its r/alpha/target modules must equal the run's")
    p.add_argument("--eval_steps", type=int, default=100)
    p.add_argument("--early_stopping_patience", type=int, default=5)
    p.add_argument("--max_steps", type=int, default=-1, help="stop after N optimiser steps (demos)")
    p.add_argument("--logging_steps", type=int, default=8)
    p.add_argument("--quantization", choices=["none", "8bit", "4bit"], default="none")
    p.add_argument("--keep_checkpoints", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="train even if the same adapter exists")
    p.add_argument("--log_file", default=None, help="default: <output_dir>/finetune.log")
    a = p.parse_args(argv)

    rank = int(os.environ.get("RANK", 0))
    log = setup_logging((a.log_file or Path(a.output_dir) / "finetune.log") if rank == 0 else None,
                        defer=a.log_file is None)  # inside --output_dir: written once the inputs passed
    cfg = FinetuneConfig(
        train_file=first(a.train_data_path), val_file=first(a.val_data_path), output_dir=a.output_dir,
        base_model=a.base_model, batch_size=a.batch_size, micro_batch_size=a.micro_batch_size,
        num_epochs=a.num_epochs, learning_rate=a.learning_rate, warmup_steps=a.warmup_steps,
        cutoff_len=a.cutoff_len, val_set_size=a.val_set_size, lora_r=a.lora_r, lora_alpha=a.lora_alpha,
        lora_dropout=a.lora_dropout, lora_target_modules=parse_modules(a.lora_target_modules),
        train_on_inputs=a.train_on_inputs, group_by_length=a.group_by_length, eval_steps=a.eval_steps,
        early_stopping_patience=a.early_stopping_patience, resume_from_checkpoint=a.resume_from_checkpoint,
        quantization=None if a.quantization == "none" else a.quantization, seed=a.seed, sample=a.sample,
        max_steps=a.max_steps, logging_steps=a.logging_steps, keep_checkpoints=a.keep_checkpoints,
        overwrite=a.overwrite,
    )
    log.info("fine-tuning with %s", cfg)
    try:
        res = train(cfg)
    except (ModelError, OSError, ValueError) as e:
        log.error("%s", e)
        discard_log()
        return 2
    m = res.manifest
    if rank == 0:
        print(f"adapter: {res.output_dir}  steps: {m.get('global_step')}  train loss: {m.get('train_loss')}  "
              f"best eval loss: {m.get('best_eval_loss')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
