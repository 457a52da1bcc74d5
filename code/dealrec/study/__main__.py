"""``python -m dealrec.study``: the study's command line (:mod:`dealrec.study.cli`)."""

import sys

from dealrec.study.cli import main

sys.exit(main())
