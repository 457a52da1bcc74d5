"""DEALRec pruning: surrogate → influence → effort → coverage-enhanced selection.

    python prune.py --data_name games --lamda 0.3 --k 50 --n_fewshot 1024

Every option of the original ``utils.py`` keeps its name; ``--stage`` runs one stage (each stage
computes what it needs that is not cached in ``--score_dir``). See the README for details.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from dealrec.io import setup_logging
from dealrec.prune import STAGES, PruneConfig, run

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def none_or(cast):
    return lambda s: None if s.lower() in {"none", ""} else cast(s)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = PruneConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--data_dir", default=str(REPO / "data"), help="folder holding <data_name>/")
    a("--data_name", "--data", dest="data_name", default=d.data_name)
    a("--surrogate", "--model_name", dest="surrogate", default=d.surrogate,
      help="registered surrogate: SASRec (default), BERT4Rec or GRU4Rec")
    a("--stage", choices=STAGES, default=d.stage)
    a("--strategy", default=d.strategy, help="dealrec, dealrec-stable, random, influence, effort, greedy, el2n, grand, ccs")
    a("--lamda", type=float, default=d.lamda, help="weight of the effort score (Eq. 13)")
    a("--k", type=int, default=d.k, help="number of strata")
    a("--hard_prune", type=float, default=d.hard_prune)
    a("--n_fewshot", type=int, default=d.n_fewshot)
    a("--seed", type=int, default=d.seed)
    a("--max_users", type=none_or(int), default=None, help="restrict every stage to the first N users")
    a("--gpu_id", default="cpu", help="GPU index or 'cpu'")
    a("--score_dir", "--out_dir", dest="score_dir", default=None, help="cache of surrogate/influence/effort (default code/prune/scores/<data>[_first<max_users>])")
    a("--selected_dir", default=str(HERE / "selected"))
    a("--out", default=None, help="also write the selection to this path")
    a("--log_name", default=None, help="log file name under code/prune/logs/")
    a("--write_prompts", default=None, help="also write the full-training prompt set as alpaca JSON to this file")
    # surrogate
    a("--surrogate_checkpoint", default=None, help="state_dict to load instead of training")
    a("--epochs", type=int, default=d.epochs)
    a("--batch_size", type=int, default=d.batch_size)
    a("--lr", type=float, default=None, help="surrogate learning rate (default: the surrogate's; 1e-3, GRU4Rec 3e-3)")
    a("--patience", type=int, default=d.patience, help="evaluations without improvement before stopping (0 = never)")
    a("--eval_every", type=int, default=d.eval_every)
    a("--surrogate_batching", choices=("split", "padded"), default=d.surrogate_batching,
      help="split: each batch as exact length buckets (same gradient, ~10x faster); padded: the original's")
    # influence
    a("--influence_params", nargs="+", default=None,
      help="surrogate parameter(s) of the influence score (default: the surrogate's registered ones; "
      "SASRec and BERT4Rec item_encoder.layer.1.attention.dense.weight, GRU4Rec dense.weight)")
    a("--recursion_depth", type=int, default=d.recursion_depth)
    a("--iteration", type=int, default=d.iteration)
    a("--damp", type=float, default=d.damp)
    a("--scale", type=float, default=d.scale)
    a("--solver", choices=("lissa", "cg"), default=d.solver)
    a("--negatives", choices=("sampled", "expected"), default=d.negatives)
    # effort
    a("--base_model", default=None, help="local HF model dir (default: embedded SmolLM2-135M-Instruct)")
    a("--resume_from_checkpoint", default=None, help="LoRA adapter folder to warm-start the effort model")
    a("--cutoff_len", type=int, default=d.cutoff_len)
    a("--lora_r", type=int, default=d.lora_r)
    a("--lora_alpha", type=int, default=d.lora_alpha)
    a("--lora_dropout", type=float, default=0.0, help="ignored while scoring (always 0)")
    a("--lora_target_modules", nargs="+", default=list(d.lora_target_modules))
    a("--effort_target", choices=("lora_B", "base"), default=d.effort_target)
    a("--effort_batch_tokens", type=int, default=d.effort_batch_tokens)
    a("--effort_precision", choices=("fp32", "bf16", "int8", "auto"), default=d.effort_precision,
      help="frozen layers below the effort target layer: auto = bf16 where the CPU has native bf16, else fp32")
    a("--force_precision", action="store_true", help="error instead of falling back to fp32 when bf16 is not native")
    a("--no_effort_prefix", dest="effort_prefix", action="store_false",
      help="run every prompt's shared prefix again (the exact result either way; for comparison)")
    a("--quantization", choices=("8bit", "4bit"), default=None)
    a("--influence_scores", default=None, help="use this influence score file")
    a("--effort_scores", default=None, help="use this effort score file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log_name = args.log_name or time.strftime(f"{args.data_name}_%Y%m%d-%H%M%S")
    log = setup_logging(HERE / "logs" / f"{log_name}.log")
    from dealrec.io import resolve_device
    from dealrec.llm import parse_modules

    fields = {f.name for f in dataclasses.fields(PruneConfig)}
    kwargs = {k: v for k, v in vars(args).items() if k in fields}
    kwargs["device"] = str(resolve_device(args.gpu_id))
    subset = f"_first{args.max_users}" if args.max_users else ""
    kwargs["score_dir"] = args.score_dir or str(HERE / "scores" / f"{args.data_name}{subset}")
    if kwargs["influence_params"] is not None:  # None: the surrogate's registered parameter(s)
        kwargs["influence_params"] = tuple(kwargs["influence_params"])
    kwargs["lora_target_modules"] = tuple(parse_modules(kwargs["lora_target_modules"]))
    cfg = PruneConfig(**kwargs)
    log.info("prune %s", " ".join(sys.argv[1:] if argv is None else argv))
    try:
        if args.write_prompts:
            from dealrec.prune import write_prompt_set

            write_prompt_set(cfg, args.write_prompts)
        manifest = run(cfg)
        if manifest and args.out:
            from dealrec.io import save_tensor, write_json

            save_tensor(args.out, manifest["indices"])
            write_json(f"{args.out}.json", manifest)
    except (ValueError, OSError) as e:  # bad input, an unwritable output, another run on --score_dir
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
