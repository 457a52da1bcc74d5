"""Reproduction study: DEALRec against random and the baselines, few-shot BIGRec + SASRec signals.

    python bench/reproduce.py --preset cpu            # ~90 min on 2 CPU cores, embedded model
    python bench/reproduce.py --preset gpu --gpu_id 0 # the paper's scale (n = 1024, all test users)
    python bench/reproduce.py --preset full --gpu_id 0 # issue 15: n = 1024 of all users, paired statistics

Writes ``results/<data>_<n>/REPORT.md`` and ``report.png`` (see :mod:`dealrec.study.runner`). Each
finished run's small files (selection, metrics, per-user hit ranks) land in the record folder
(``--record_dir``; default ``docs/study/<preset>`` of this repository for a named preset, else
``<out_dir>/records``): a run recorded there is never recomputed, so a later call, even on a
fresh machine without ``results/``, resumes from the records. Everything else is cached too. To use two processes (e.g. two CPU cores with
one thread each, as ``bench/reproduce_cpu.sh`` does): ``--only prune`` and ``--only embed`` in
parallel, then ``--only runs`` with disjoint ``--strategies`` in parallel, then ``--only report``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None):
    """(StudyConfig, namespace of --only/--log_file): the defaults, the preset, then the options —
    every setting of :class:`dealrec.study.runner.StudyConfig` by its flat name (``--n``, ``--lamda``,
    ``--learning_rate`` …) or dotted name (``--finetune.lora_r``); lists comma-separated."""
    from dealrec.config import Alias, build_parser, namespace_values, override
    from dealrec.core.hardware import resolve_device
    from dealrec.study.runner import ONLY, PER_RUN, PRESETS, STUDY_ALIASES, StudyConfig

    aliases = {**STUDY_ALIASES, "gpu_id": Alias(("prune.device",), type=lambda s: str(resolve_device(s)),
                                                note="GPU index or 'cpu' (default: cpu)")}
    p = build_parser(StudyConfig, aliases, base=StudyConfig.flat(data_dir=str(REPO / "data")), hidden=PER_RUN,
                     description=__doc__)
    p.add_argument("--only", choices=ONLY, default="all",
                   help="one part: prune (scores), embed (item titles for grounding), runs, report")
    p.add_argument("--log_file", default=None)
    ns = p.parse_args(argv)
    values, _ = namespace_values(ns, StudyConfig, aliases)
    preset = values.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        p.error(f"--preset: choose from {', '.join(PRESETS)}")
    cfg = override(StudyConfig.from_preset(preset, data_dir=str(REPO / "data")), values)
    if cfg.record_dir is None and cfg.preset:  # a named preset's records: docs/study/<preset> of this repository
        cfg = override(cfg, {"record_dir": str(REPO / "docs" / "study" / cfg.preset)})
    return cfg, ns


def main(argv: list[str] | None = None) -> int:
    from dealrec.core.logs import discard_log, setup_logging
    from dealrec.study.runner import run_study

    cfg, args = parse_args(argv)
    try:
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
