"""The package's shape, measured: long functions and classes, the top level, import directions.

    python tools/code_shape.py            # prints every breach; exit status 1 if there is one

Rules (``tests/test_layout.py`` asserts them):
- no function or method under ``code/`` longer than 80 lines, no class longer than 200
  (``end_lineno - lineno + 1`` of the ``ast`` node, decorators excluded);
- at most 12 modules at the top level of ``code/dealrec/``; everything else in a subpackage;
- imports point one way: ``core`` imports nothing else of the package, ``data`` only ``core``,
  and the LLM half (``llm``) never the pruning half (``surrogate``, ``scores``, ``select``,
  ``prune``), the study or TIGER (``tiger``), which in turn never imports the pruning half or the
  study.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION, MAX_CLASS, MAX_TOP_MODULES = 80, 200, 12
# subpackage -> the parts of the package it must not import
FORBIDDEN = {
    "core": ("config", "presets", "metrics", "data", "llm", "surrogate", "scores", "select", "prune", "study",
             "tiger"),
    "data": ("llm", "surrogate", "scores", "select", "prune", "study", "tiger"),
    "llm": ("surrogate", "scores", "select", "prune", "study", "tiger"),
    "surrogate": ("llm", "scores", "select", "prune", "study"),
    "select": ("llm", "surrogate", "scores", "prune", "study"),
    "tiger": ("surrogate", "scores", "select", "prune", "study"),
}


def long_definitions(folder: Path = ROOT / "code") -> list[str]:
    """``path:line kind name length`` of every function over MAX_FUNCTION and class over MAX_CLASS lines."""
    out = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            length = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and length > MAX_FUNCTION:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} def {node.name} {length} lines")
            elif isinstance(node, ast.ClassDef) and length > MAX_CLASS:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} class {node.name} {length} lines")
    return out


def top_level_modules(package: Path = ROOT / "code" / "dealrec") -> list[str]:
    return sorted(p.name for p in package.glob("*.py"))


def imported_parts(path: Path) -> set[str]:
    """The first component below ``dealrec`` of every ``dealrec`` import in ``path``."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "dealrec" else [f"dealrec.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        parts.update(n.split(".")[1] for n in names if n.startswith("dealrec."))
    return parts


def wrong_imports(package: Path = ROOT / "code" / "dealrec") -> list[str]:
    out = []
    for sub, forbidden in FORBIDDEN.items():
        for path in sorted((package / sub).rglob("*.py")):
            bad = sorted(imported_parts(path) & set(forbidden))
            if bad:
                out.append(f"{path.relative_to(ROOT)} imports {', '.join(bad)}")
    return out


def main() -> int:
    breaches = long_definitions() + wrong_imports()
    top = top_level_modules()
    if len(top) > MAX_TOP_MODULES:
        breaches.append(f"{len(top)} top-level modules in code/dealrec (at most {MAX_TOP_MODULES}): {', '.join(top)}")
    for line in breaches:
        print(line)
    print(f"{len(breaches)} breach(es); top level: {len(top)} modules ({', '.join(top)})")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
