"""DEALRec pruning: surrogate → influence → effort → coverage-enhanced selection.

    python prune.py --data_name games --lamda 0.3 --k 50 --n_fewshot 1024
    python prune.py --preset demo --data_name games          # the demo's CPU sizes (make demo)

Every option of the original ``utils.py`` is accepted under its name (``--hidden_size``,
``--epochs``, ``--lr``, ``--lora_r`` …); every setting also has a dotted name
(``--surrogate.train.hidden_size``, ``--effort.lora_r``, ``--select.lamda``). ``--stage`` runs
one stage (each stage computes what it needs that is not cached in ``--score_dir``). The
options are built from :class:`dealrec.prune.pipeline.PruneConfig` (every option: docs/commands.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from dealrec.config import Alias, build_parser, parse
from dealrec.core.hardware import resolve_device
from dealrec.core.logs import setup_logging
from dealrec.presets import PRUNE_PRESETS
from dealrec.prune.pipeline import PRUNE_ALIASES, PruneConfig, run

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

ALIASES = {**PRUNE_ALIASES, "gpu_id": Alias(("device",), type=lambda s: str(resolve_device(s)),
                                             note="GPU index or 'cpu' (default: cpu)")}


def base_config() -> PruneConfig:
    """The defaults of this script: the repository's data and this folder's selected/."""
    return PruneConfig(data_dir=str(REPO / "data"), selected_dir=str(HERE / "selected"))


def parser():
    p = build_parser(PruneConfig, ALIASES, PRUNE_PRESETS, base_config(), description=__doc__)
    p.add_argument("--out", default=None, help="also write the selection to this path")
    p.add_argument("--log_name", default=None,
                   help="the log file: a name under code/prune/logs/ (<name>.log), or a path (its folder is created)")
    p.add_argument("--write_prompts", default=None, help="also write the full-training prompt set as alpaca JSON to this file")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[PruneConfig, object, dict]:
    """(config, namespace of the script's own options, ignored flags). ``--score_dir`` defaults to
    code/prune/scores/<data>[_first<max_users>]."""
    cfg, ns, ignored = parse(PruneConfig, argv, ALIASES, PRUNE_PRESETS, base_config(), parser())
    if cfg.score_dir is None:
        subset = f"_first{cfg.max_users}" if cfg.max_users else ""
        cfg = cfg.set(score_dir=str(HERE / "scores" / f"{cfg.data_name}{subset}"))
    return cfg, ns, ignored


def main(argv: list[str] | None = None) -> int:
    cfg, args, ignored = parse_args(argv)
    log_name = args.log_name or time.strftime(f"{cfg.data_name}_%Y%m%d-%H%M%S")
    log = setup_logging(HERE / "logs" / f"{log_name}.log")
    log.info("prune %s", " ".join(sys.argv[1:] if argv is None else argv))
    for flag, value in ignored.items():
        log.warning("--%s %s has no effect: %s", flag, value, ALIASES[flag].note)
    try:
        if args.write_prompts:
            from dealrec.prune.pipeline import write_prompt_set

            write_prompt_set(cfg, args.write_prompts)
        manifest = run(cfg)
        if manifest and args.out:
            from dealrec.core.files import save_tensor, write_json

            save_tensor(args.out, manifest["indices"])
            write_json(f"{args.out}.json", manifest)
    except (ValueError, OSError) as e:  # bad input, an unwritable output, another run on --score_dir
        log.error("%s", e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
