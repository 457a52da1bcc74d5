"""Reproduction study from a checkout: ``python -m dealrec.study`` anchored at this repository
(its ``data/`` and ``records/study/<preset>``). ``--help`` lists every option.

    python bench/reproduce.py --preset cpu             # 2 CPU cores, the embedded model
    python bench/reproduce.py --preset gpu --gpu_id 0  # the paper's scale
    python bench/reproduce.py --preset full            # n = 1024 of all users, paired statistics
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "code"))

from dealrec.study.cli import main as study_main  # noqa: E402


def parse_args(argv: list[str] | None = None):
    """(StudyConfig, namespace of --only/--log_file), anchored at this repository."""
    from dealrec.study.cli import parse_args as study_parse_args

    return study_parse_args(argv, root=REPO)


def main(argv: list[str] | None = None) -> int:
    return study_main(argv, root=REPO)


if __name__ == "__main__":
    sys.exit(main())
