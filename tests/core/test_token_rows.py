"""Padding rows of token ids into a batch (:func:`dealrec.core.token_rows.pad_batch`)."""

from __future__ import annotations

import pytest

from dealrec.core.token_rows import pad_batch


def test_pad_batch_sides():
    ids, mask = pad_batch([[1, 2, 3], [4]], 0, "left")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[1, 2, 3], [4]], 9, "right")
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError, match="side"):
        pad_batch([[1]], 0, "top")
