"""The one error type of ``prepare``: bad input or options, reported as one line that names the
file, the column or the flag and the fix; raised before anything is written."""

from __future__ import annotations


class PrepareError(ValueError):
    """An input file, column or option that ``prepare`` cannot use; the message says how to fix it."""
