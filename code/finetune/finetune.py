"""LoRA fine-tuning of the LLM recommender (BIGRec / alpaca-lora ``finetune.py`` flags).

    python finetune.py --train_data_path data/games/train/train-1024.json \
        --val_data_path data/games/valid/valid-1024.json --output_dir model/games/0_1024
    python finetune.py --preset cpu-demo ...     # the demo's sizes (dealrec.presets)

Works as a single process (CPU or one GPU) and under ``accelerate launch`` / ``torchrun``
(the accumulation is batch_size / (micro_batch_size x processes)). The options are built from
:class:`dealrec.llm.finetune.FinetuneConfig` (its defaults: the original recipe); every flag of the
original ``finetune.py`` is accepted under its name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from dealrec.config import Alias, build_parser, parse
from dealrec.core.dist import dist_info
from dealrec.core.logs import discard_log, setup_logging
from dealrec.llm.finetune import FinetuneConfig, train
from dealrec.llm.model import ModelError
from dealrec.presets import finetune_preset


def _one(files: list[str]) -> str:
    if len(files) > 1:
        raise SystemExit("only one --train_data_path / --val_data_path file is supported")
    return files[0]


_WANDB = "accepted for the original's command lines; this build does not report to Weights & Biases"
ALIASES: dict[str, Alias] = {
    "train_data_path": Alias(("train_file",), nargs="+", reduce=_one, note="training examples (alpaca JSON)"),
    "val_data_path": Alias(("val_file",), nargs="*", reduce=lambda v: _one(v) if v else None,
                           note="validation examples (alpaca JSON)"),
    "train_precision": Alias(("precision",), note="CPU: fp32, bf16 (autocast where the CPU has native bf16) or auto"),
    **{f"wandb_{k}": Alias(ignored=True, type=str, note=_WANDB) for k in ("project", "run_name", "watch", "log_model")},
}
PRESETS = finetune_preset("finetune")


def main(argv: list[str] | None = None) -> int:
    p = build_parser(FinetuneConfig, ALIASES, PRESETS, description=__doc__)
    p.add_argument("--log_file", default=None, help="default: <output_dir>/finetune.log")
    p.add_argument("--dry_run", action="store_true",
                   help="print the plan of the LLM stages for --base_model (device, precision, parameters, "
                        "estimated memory) without loading the weights, and stop")
    cfg, a, ignored = parse(FinetuneConfig, argv, ALIASES, PRESETS, parser=p)
    if a.dry_run:
        from dealrec.llm.plan import main as plan_main

        gpu = "0" if torch.cuda.is_available() else "cpu"
        return plan_main(["--gpu_id", gpu, "--cutoff_len", str(cfg.cutoff_len), "--micro_batch_size",
                          str(cfg.micro_batch_size), *(["--base_model", cfg.base_model] if cfg.base_model else []),
                          *(["--quantization", cfg.quantization] if cfg.quantization else []),
                          *(["--gradient_checkpointing"] if cfg.gradient_checkpointing else [])])
    if not cfg.train_file or not cfg.output_dir:
        p.error("--train_data_path and --output_dir are required")
    main_rank = dist_info().main
    log = setup_logging((a.log_file or Path(cfg.output_dir) / "finetune.log") if main_rank else None,
                        defer=a.log_file is None)  # inside --output_dir: written once the inputs passed
    for flag, value in ignored.items():
        log.warning("--%s %s has no effect: %s", flag, value, ALIASES[flag].note)
    log.info("fine-tuning with %s", cfg)
    try:
        res = train(cfg)
    except (ModelError, OSError, ValueError) as e:
        log.error("%s", e)
        discard_log()
        return 2
    m = res.manifest
    if main_rank:
        print(f"adapter: {res.output_dir}  steps: {m.get('global_step')}  train loss: {m.get('train_loss')}  "
              f"best eval loss: {m.get('best_eval_loss')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
