"""The package's shape (``tools/code_shape.py``): short functions and classes, a small top
level, imports that point one way."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _shape():
    spec = importlib.util.spec_from_file_location("code_shape", REPO / "tools" / "code_shape.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_long_function_or_class_under_code():
    assert _shape().long_definitions() == []


def test_top_level_of_the_package_is_small():
    shape = _shape()
    assert len(shape.top_level_modules()) <= shape.MAX_TOP_MODULES


def test_imports_point_one_way():
    assert _shape().wrong_imports() == []


def test_the_checks_see_a_breach(tmp_path):
    """The measurement itself: a long function, a long class and a wrong import are found."""
    shape = _shape()
    code = tmp_path / "code" / "dealrec" / "llm"
    code.mkdir(parents=True)
    body = "\n".join(f"    x{i} = {i}" for i in range(85))
    (code / "m.py").write_text(f"from dealrec.scores import effort\n\n\ndef f():\n{body}\n\n\nclass C:\n"
                               + "\n".join(f"    a{i} = {i}" for i in range(205)) + "\n")
    shape.ROOT = tmp_path
    found = shape.long_definitions(tmp_path / "code")
    assert [line.split()[1:3] for line in found] == [["def", "f"], ["class", "C"]]
    assert shape.wrong_imports(tmp_path / "code" / "dealrec") == ["code/dealrec/llm/m.py imports scores"]
