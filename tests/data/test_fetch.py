"""Fetching the paper's data sets: a sparse checkout of a local git repository (the URL from
$DEALREC_DATA_REPO), the shipped hash list, a mismatching file, no network."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from dealrec.data import fetch as fetch_mod

REPO = Path(__file__).resolve().parents[2]
FILES = {"sequential_train.txt": "1 1 2\n2 2 3\n", "title_maps.npy": "not really a pickle\n"}


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin"})


@pytest.fixture
def origin(tmp_path, monkeypatch):
    """A git repository holding data/toy/ and data/other/ (plus a folder that must not be fetched),
    and a hash list of toy's files."""
    repo = tmp_path / "origin"
    for name in ("toy", "other"):
        (repo / "data" / name).mkdir(parents=True)
        for f, text in FILES.items():
            (repo / "data" / name / f).write_text(text)
    (repo / "code").mkdir()
    (repo / "code" / "big.bin").write_bytes(b"x" * 1000)
    _git("init", "-q", "-b", "main", cwd=repo)
    _git("config", "uploadpack.allowFilter", "true", cwd=repo)
    _git("add", ".", cwd=repo)
    _git("commit", "-q", "-m", "data", cwd=repo)
    sums = tmp_path / "checksums.sha256"
    sums.write_text("# hashes\n" + "".join(f"{hashlib.sha256(t.encode()).hexdigest()}  {n}/{f}\n"
                                           for n in ("toy", "other") for f, t in FILES.items()))
    monkeypatch.setattr(fetch_mod, "CHECKSUMS", sums)
    monkeypatch.setenv(fetch_mod.URL_ENV, f"file://{repo}")
    return repo


def test_fetch_links_the_checked_folder(origin, tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    assert fetch_mod.main(["toy", "--data_dir", str(data), "--cache", str(cache)]) == 0
    link = data / "toy"
    assert link.is_symlink() and link.resolve() == (cache / "toy").resolve()
    assert {p.name: p.read_text() for p in link.iterdir()} == FILES
    assert not (data / "other").exists()  # only what was asked
    assert fetch_mod.fetch(["toy"], data, cache) == []  # already there: nothing fetched


def test_a_mismatching_file_links_nothing(origin, tmp_path, capsys):
    (origin / "data" / "toy" / "title_maps.npy").write_text("version https://git-lfs.github.com/spec/v1\n")
    _git("commit", "-q", "-am", "pointer", cwd=origin)
    data, cache = tmp_path / "data", tmp_path / "cache"
    assert fetch_mod.main(["other", "toy", "--data_dir", str(data), "--cache", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "toy/title_maps.npy: sha256" in err and "expects" in err
    assert not data.exists() or not any(data.iterdir())  # not even the data set that matched
    assert not cache.exists() or not any(cache.iterdir())


def test_no_network_says_what_to_copy_where(origin, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(fetch_mod.URL_ENV, f"file://{tmp_path / 'nowhere'}")
    assert fetch_mod.main(["toy", "--data_dir", str(tmp_path / "data"), "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "git could not fetch" in err and "copy the folders data/toy/" in err and str(tmp_path / "data") in err


def test_unknown_name_is_refused(origin, tmp_path):
    with pytest.raises(fetch_mod.FetchError, match="no hash list for book"):
        fetch_mod.fetch(["book"], tmp_path / "data", tmp_path / "c")


def test_shipped_hash_list_describes_the_authors_folders():
    """data/checksums.sha256 names every file of games and microlens-50k; where the data is
    linked here, each file matches."""
    sums = fetch_mod.read_checksums(REPO / "data" / "checksums.sha256")
    assert set(sums) == {"games", "microlens-50k"}
    assert {"sequential_train.txt", "sequential_valid.txt", "sequential_test.txt", "title_maps.npy"} <= set(sums["games"])
    for name, files in sums.items():
        folder = REPO / "data" / name
        if (folder / "sequential_train.txt").is_file():
            fetch_mod.verify(folder, name, files)
