"""The study's command line (``python -m dealrec.study``, ``python bench/reproduce.py``).

Every setting of :class:`~dealrec.study.config.StudyConfig` is an option, by its flat name
(``--n``, ``--lamda``, ``--learning_rate`` …) or its dotted name (``--finetune.lora_r``); lists
are comma-separated; ``--preset`` is applied first. Paths that the study sets per run are not
options. A named preset's records go to ``records/study/<preset>`` under the root folder (the
repository for ``bench/reproduce.py``, else the working directory).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dealrec.config import Alias, build_parser, namespace_values, override
from dealrec.core.hardware import resolve_device
from dealrec.core.logs import discard_log, setup_logging
from dealrec.presets import STUDY_PRESETS as PRESETS
from dealrec.study.config import PER_RUN_FLAGS, RECORDS_ROOT, STUDY_ALIASES, StudyConfig
from dealrec.study.runner import ONLY, run_study

USAGE = """Reproduction study: DEALRec against random and the baselines, few-shot BIGRec + SASRec (+ TIGER) signals.

    python -m dealrec.study --preset cpu             # 2 CPU cores, the embedded model
    python -m dealrec.study --preset gpu --gpu_id 0  # the paper's scale (n = 1024, all test users)
    python -m dealrec.study --preset full            # n = 1024 of all users, paired statistics

Writes <out_dir>/REPORT.md, results.json and report.png. Each finished run's small files
(selection, metrics, per-user hit ranks) land in the record folder (--record_dir; default
records/study/<preset> for a named preset, else <out_dir>/records): a run recorded there is never
recomputed, so a later call, even on a fresh machine without results/, resumes from the records.
Two processes (two CPU cores with one thread each): --only prune and --only embed in parallel,
then --only runs with disjoint --strategies in parallel, then --only report.
"""


def parse_args(argv: list[str] | None = None, root: Path | None = None) -> tuple[StudyConfig, argparse.Namespace]:
    """(StudyConfig, namespace of --only/--log_file): the defaults, the preset, then the options.
    ``root``: the folder holding ``data/`` and ``records/`` (default: the working directory)."""
    root = Path.cwd() if root is None else Path(root)
    aliases = {**STUDY_ALIASES, "gpu_id": Alias(("prune.device",), type=lambda s: str(resolve_device(s)),
                                                note="GPU index or 'cpu' (default: cpu)")}
    p = build_parser(StudyConfig, aliases, base=StudyConfig.flat(data_dir=str(root / "data")), hidden=PER_RUN_FLAGS,
                     description=USAGE)
    p.add_argument("--only", choices=ONLY, default="all",
                   help="one part: prune (the pruning scores), embed (item titles for grounding), runs, report")
    p.add_argument("--log_file", default=None)
    ns = p.parse_args(argv)
    values, _ = namespace_values(ns, StudyConfig, aliases)
    preset = values.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        p.error(f"--preset: choose from {', '.join(PRESETS)}")
    cfg = override(StudyConfig.from_preset(preset, data_dir=str(root / "data")), values)
    if cfg.record_dir is None and cfg.preset:  # a named preset's records: under the root folder
        cfg = override(cfg, {"record_dir": str(root / RECORDS_ROOT / cfg.preset)})
    return cfg, ns


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    cfg, args = parse_args(argv, root)
    try:
        log_file = args.log_file or cfg.out / "logs" / time.strftime(f"study-{args.only}_%Y%m%d-%H%M%S.log")
        log = setup_logging(log_file, defer=args.log_file is None)  # inside --out_dir: once the inputs passed
        log.info("study %s", " ".join(sys.argv[1:] if argv is None else argv))
        path = run_study(cfg, args.only)
    except (ValueError, OSError) as e:
        discard_log()
        print(f"error: {e}", file=sys.stderr)
        return 2
    if path:
        print(f"report: {path}")
    return 0
