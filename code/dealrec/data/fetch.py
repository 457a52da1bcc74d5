"""The paper's data sets on a fresh machine: fetched from the authors' public repository.

    python -m dealrec.data.fetch [games microlens-50k]      # make data

A shallow, sparse ``git`` checkout of ``data/<name>/`` only (no other folder of the repository,
no history), every file checked against the hashes the project ships (``data/checksums.sha256``),
the checked files kept under ``$DEALREC_CACHE/data/<name>`` (default ``~/.cache/dealrec``) and
linked as ``data/<name>``, as ``tools/setup.sh`` links a shared copy. Nothing is linked unless
every file of a data set matches; without network the error says what to copy where. The
repository's URL comes from ``$DEALREC_DATA_REPO`` when set (tests use a local repository).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
AUTHORS_REPO = "https://github.com/Linxyhaha/DEALRec.git"
URL_ENV = "DEALREC_DATA_REPO"
CHECKSUMS = REPO / "data" / "checksums.sha256"
DEFAULT_NAMES = ("games", "microlens-50k")
GIT_TIMEOUT = 900  # seconds for the clone; the two folders are about 27 MB


class FetchError(RuntimeError):
    """The data could not be fetched or did not match; the message says what to do instead."""


def read_checksums(path: Path | None = None) -> dict[str, dict[str, str]]:
    """{data set: {file name: sha256}} from ``sha256sum``-style lines ``<hash>  <name>/<file>``
    (default: the project's :data:`CHECKSUMS`)."""
    out: dict[str, dict[str, str]] = {}
    for line in (path or CHECKSUMS).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        digest, rel = line.split(maxsplit=1)
        name, _, file = rel.strip().partition("/")
        out.setdefault(name, {})[file] = digest
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manual_fix(names: list[str], data_dir: Path) -> str:
    """What to copy where when the repository cannot be reached."""
    folders = ", ".join(f"data/{n}/" for n in names)
    return (f"copy the folders {folders} of the DEALRec authors' repository (github.com/Linxyhaha/DEALRec) to "
            f"{data_dir}/<name>/ (or set DEALREC_DATA_SOURCE to a folder holding them and run tools/setup.sh)")


def sparse_checkout(url: str, names: list[str], into: Path) -> None:
    """``data/<name>`` of ``url``'s default branch into ``into``: depth 1, blobs of those folders only."""
    steps = [
        ["git", "clone", "--quiet", "--depth", "1", "--filter=blob:none", "--sparse", url, str(into)],
        ["git", "-C", str(into), "sparse-checkout", "set", *[f"data/{n}" for n in names]],
    ]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    for cmd in steps:
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=GIT_TIMEOUT, env=env)
        except FileNotFoundError:
            raise FetchError("git is not installed (apt-get install git)") from None
        except subprocess.TimeoutExpired:
            raise FetchError(f"git did not finish within {GIT_TIMEOUT} s fetching {url}") from None
        except subprocess.CalledProcessError as e:
            said = (e.stderr or e.stdout or "").strip().splitlines()
            raise FetchError(f"git could not fetch {url} ({said[-1] if said else f'exit {e.returncode}'})") from None


def verify(folder: Path, name: str, expected: dict[str, str]) -> None:
    """Every file of the hash list is in ``folder`` with its hash (others are not needed)."""
    for file, digest in sorted(expected.items()):
        path = folder / file
        if not path.is_file():
            raise FetchError(f"{name}/{file}: missing from the fetched folder; the repository changed, "
                             "so the project's data/checksums.sha256 no longer describes it")
        got = sha256(path)
        if got != digest:
            raise FetchError(f"{name}/{file}: sha256 {got[:16]}… but data/checksums.sha256 expects {digest[:16]}…; "
                             "the file is not the authors' release (a large-file pointer or a changed file)")


def install(src: Path, name: str, expected: dict[str, str], cache: Path, data_dir: Path) -> Path:
    """The checked files of ``name`` into ``cache/<name>`` (written whole, then renamed) and the
    link ``data_dir/<name>`` to it."""
    final = cache / name
    if not final.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache))
        for file in expected:
            shutil.copy2(src / file, tmp / file)
        os.replace(tmp, final)
    link = data_dir / name
    if link.is_symlink() and not link.exists():
        link.unlink()  # a broken link from an earlier copy
    if not link.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        link.symlink_to(final)
    return link


def fetch(names: list[str], data_dir: Path, cache: Path, url: str | None = None) -> list[Path]:
    """Fetch, check and link each of ``names`` that ``data_dir`` lacks; returns the links made."""
    sums = read_checksums()
    unknown = [n for n in names if n not in sums]
    if unknown:
        raise FetchError(f"no hash list for {', '.join(unknown)}; fetchable: {', '.join(sorted(sums))}")
    wanted = [n for n in names if not (data_dir / n / "sequential_train.txt").is_file()]
    if not wanted:
        return []
    url = url or os.environ.get(URL_ENV) or AUTHORS_REPO
    with tempfile.TemporaryDirectory(prefix="dealrec-fetch-") as tmp:
        checkout = Path(tmp) / "repo"
        try:
            sparse_checkout(url, wanted, checkout)
        except FetchError as e:
            raise FetchError(f"{e}; instead, {manual_fix(wanted, data_dir)}") from None
        for n in wanted:  # check all before linking any
            verify(checkout / "data" / n, n, sums[n])
        return [install(checkout / "data" / n, n, sums[n], cache, data_dir) for n in wanted]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", default=list(DEFAULT_NAMES), help="data sets (default: games microlens-50k)")
    p.add_argument("--data_dir", default=str(REPO / "data"))
    p.add_argument("--cache", default=str(Path(os.environ.get("DEALREC_CACHE", Path.home() / ".cache" / "dealrec"))
                                          / "data"))
    args = p.parse_args(argv)
    try:
        links = fetch(args.names, Path(args.data_dir), Path(args.cache))
    except FetchError as e:
        print(f"fetch: error: {e}", file=sys.stderr)
        return 2
    for link in links:
        print(f"fetch: linked {link} -> {link.resolve()}")
    if not links:
        print(f"fetch: {', '.join(args.names)} already under {args.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
