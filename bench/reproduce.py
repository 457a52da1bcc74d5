"""Reproduction study: DEALRec against random and the baselines, few-shot BIGRec + SASRec signals.

    python bench/reproduce.py --preset cpu            # ~90 min on 2 CPU cores, embedded model
    python bench/reproduce.py --preset gpu --gpu_id 0 # the paper's scale (n = 1024, all test users)

Writes ``results/<data>_<n>/REPORT.md`` and ``report.png`` (see :mod:`dealrec.study`).
Everything is cached, so a second call resumes. To use two processes (e.g. two CPU cores with
one thread each, as ``bench/reproduce_cpu.sh`` does): ``--only prune`` and ``--only embed`` in
parallel, then ``--only runs`` with disjoint ``--strategies`` in parallel, then ``--only report``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _csv(cast):
    return lambda s: tuple(cast(x) for x in s.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--preset", choices=("cpu", "gpu"), default=None, help="sizes of the study (options below override)")
    a("--only", choices=("prune", "embed", "runs", "report", "all"), default="all",
      help="one part: prune (scores), embed (item titles for grounding), runs, report")
    a("--data_dir", default=str(REPO / "data"))
    a("--data_name", default=None, help="default games")
    a("--out_dir", default=None, help="default results/<data>_<n>")
    a("--n", type=int, default=None, help="selected samples per run")
    a("--strategies", type=_csv(str), default=None, help="comma-separated, e.g. dealrec,random")
    a("--seeds", type=_csv(int), default=None, help="comma-separated, e.g. 0,1,2")
    a("--pool_users", type=int, default=None, help="candidates = the first N users")
    a("--test_users", type=int, default=None, help="fixed random sample of N test users")
    a("--base_model", default=None, help="local HF model dir (default: embedded SmolLM2-135M-Instruct)")
    a("--gpu_id", default="cpu")
    a("--lamda", type=float, default=None)
    a("--k", type=int, default=None)
    a("--surrogate_epochs", type=int, default=None)
    a("--recursion_depth", type=int, default=None)
    a("--cutoff_len", type=int, default=None)
    a("--num_epochs", type=float, default=None, help="LoRA epochs per run")
    a("--learning_rate", type=float, default=None)
    a("--train_on_inputs", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
      help="true: loss on the whole prompt (paper); false: on the response only (cpu preset)")
    a("--max_steps", type=int, default=None, help="LoRA optimiser steps per run (overrides --num_epochs)")
    a("--num_beams", type=int, default=None)
    a("--max_new_tokens", type=int, default=None)
    a("--max_items", type=int, default=None, help="ground among the first N items + targets (tests only)")
    a("--sasrec_epochs", type=int, default=None)
    a("--log_file", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from dealrec.io import discard_log, resolve_device, setup_logging
    from dealrec.study import StudyConfig, run_study

    fields = {f.name for f in dataclasses.fields(StudyConfig)} - {"preset", "device"}
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    overrides["device"] = str(resolve_device(args.gpu_id))
    try:
        cfg = StudyConfig.from_preset(args.preset, **overrides)
        log_file = args.log_file or cfg.out / "logs" / time.strftime(f"study-{args.only}_%Y%m%d-%H%M%S.log")
        log = setup_logging(log_file, defer=args.log_file is None)  # inside --out_dir: once the inputs passed
        log.info("reproduce %s", " ".join(sys.argv[1:] if argv is None else argv))
        path = run_study(cfg, args.only)
    except (ValueError, OSError) as e:
        discard_log()
        print(f"error: {e}", file=sys.stderr)
        return 2
    if path:
        print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
