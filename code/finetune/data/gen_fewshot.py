"""Write the few-shot fine-tuning files of a data set (the original ``gen_fewshot.py``).

    python gen_fewshot.py --data_name games --n_sample 1024

reads the selection ``code/prune/selected/{data}_{label}.pt`` (``--n_sample`` equal to the number
of users means all users: full-data fine-tuning, no selection file) and writes
``<out_dir>/train/train-{label}.json``, ``<out_dir>/valid/valid-{label}.json`` and
``<out_dir>/test/test.json`` (every test user) with a manifest ``<file>.json`` each. The options
are built from :class:`dealrec.data.fewshot.FewshotConfig`. The label is ``{n}`` for the
``dealrec`` strategy (the original's names) and ``{n}_{strategy}`` for another ``--strategy``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dealrec.config import build_parser, parse
from dealrec.core.logs import discard_log, setup_logging
from dealrec.data.dataset import DataError, load_dataset
from dealrec.data.fewshot import FewshotConfig, check_fewshot_args, load_selection, write_fewshot
from dealrec.llm.model import ModelError, load_tokenizer
from dealrec.presets import finetune_preset
from dealrec.select import STRATEGIES, run_label

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PRESETS = finetune_preset("gen_fewshot")


def main(argv: list[str] | None = None) -> int:
    base = FewshotConfig(data_dir=str(REPO / "data"))
    p = build_parser(FewshotConfig, {}, PRESETS, base, description=__doc__)
    p.add_argument("--log_file", default=None)
    a, ns, _ = parse(FewshotConfig, argv, {}, PRESETS, base, parser=p)

    out_dir = Path(a.out_dir) if a.out_dir else HERE / a.data_name
    log = setup_logging(ns.log_file or out_dir / "gen_fewshot.log", defer=ns.log_file is None)
    try:
        check_fewshot_args(a.n_sample, a.cutoff_len, a.max_test_users)
        if a.strategy not in STRATEGIES:
            raise ValueError(f"--strategy {a.strategy!r}: unknown; registered: {', '.join(sorted(STRATEGIES))}")
        data = load_dataset(a.data_dir, a.data_name)
        selection_file = None
        if a.n_sample == data.n_users and a.selected is None:
            users = list(range(data.n_users))
            log.info("n_sample = %d = all users: full-data fine-tuning", a.n_sample)
        else:
            label = run_label(a.n_sample, a.strategy)
            selection_file = Path(a.selected) if a.selected else REPO / "code" / "prune" / "selected" / f"{a.data_name}_{label}.pt"
            users = load_selection(selection_file, data)
            if len(users) != a.n_sample:
                log.warning("%s holds %d users, --n_sample is %d (the files are labelled %d)",
                            selection_file, len(users), a.n_sample, a.n_sample)
        tokenizer = load_tokenizer(a.base_model)
        paths = write_fewshot(
            data, users, out_dir, tokenizer, a.cutoff_len, run_label(a.n_sample, a.strategy),
            selection_file=selection_file, base_model=a.base_model, max_test_users=a.max_test_users,
            overwrite=a.overwrite,
        )
    except (DataError, ModelError, ValueError, OSError) as e:
        log.error("%s", e)
        discard_log()
        return 2
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
