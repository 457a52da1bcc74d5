"""The documentation: README.md and docs/ link only to what exists, the README stays short, and no
page narrates development history (the pages describe what is and why)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"

README_MAX_LINES = 250
README_MAX_BYTES = 20_000

# Words that narrate how the project got here rather than what it is (split in this source so
# that the same search over the tests does not find the list itself).
HISTORY = re.compile("|".join(("issue [0-9]+", "sit" "ting", "super" "seded", "earlier " "session",
                               "first " "attempt", "as " "before", "old " "flat")), re.IGNORECASE)

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target) and ![alt](target); the text may hold one level of brackets.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+[\"'(][^)]*)?\)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.IGNORECASE)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def relative_links(text: str) -> list[str]:
    """The targets of the Markdown links and images in ``text`` that point into the repository:
    not in code blocks or code spans, not http(s)/mailto/other schemes, not bare ``#anchors``;
    the ``#anchor`` and ``?query`` parts removed."""
    text = CODE_SPAN.sub("code", FENCE.sub("", text))
    targets = []
    for m in LINK.finditer(text):
        target = m.group(1).strip("<>").strip()
        if not target or target.startswith("#") or EXTERNAL.match(target):
            continue
        target = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if target:
            targets.append(target)
    return targets


def test_relative_links_are_found_in_link_syntax():
    text = (
        "See [a](docs/a.md), [b](b.md#part), ![c](img/c.png \"title\"), [d](https://x.org/d), "
        "[e](mailto:e@x.org), [f](#local), `[g](code.md)`, [h](<with space.md>), [`i`](i/).\n"
        "```\n[j](fenced.md)\n```\n"
    )
    assert relative_links(text) == ["docs/a.md", "b.md", "img/c.png", "with space.md", "i/"]


@pytest.mark.parametrize("page", markdown_files(), ids=_rel)
def test_every_relative_link_resolves(page: Path):
    missing = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        resolved = (REPO / target.lstrip("/")) if target.startswith("/") else (page.parent / target)
        if not resolved.resolve().exists():
            missing.append(target)
    assert not missing, f"{_rel(page)} links to paths that do not exist: {missing}"


def test_readme_is_short():
    data = README.read_bytes()
    lines = data.decode("utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    assert len(data) <= README_MAX_BYTES, f"README.md has {len(data)} bytes (at most {README_MAX_BYTES})"


def _text_files() -> list[Path]:
    """README.md and every text file under docs/ (binary files, such as the charts, skipped)."""
    files = [README]
    for path in sorted(DOCS.rglob("*")):
        if path.is_file() and b"\0" not in path.read_bytes():
            files.append(path)
    return files


@pytest.mark.parametrize("path", _text_files(), ids=_rel)
def test_no_development_history(path: Path):
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        m = HISTORY.search(line)
        if m:
            found.append(f"{number}: {m.group(0)!r} in {line.strip()[:120]}")
    assert not found, f"{_rel(path)} narrates history (state what is, and why):\n" + "\n".join(found)
