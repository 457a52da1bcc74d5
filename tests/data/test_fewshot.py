"""Few-shot files of the fine-tuning stage: content, alignment with the raw files, truncation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from dealrec.core.files import read_json, save_tensor, write_json
from dealrec.data.dataset import DataError, load_dataset
from dealrec.data.fewshot import fewshot_paths, load_selection, write_fewshot
from dealrec.data.prompts import clean_title, prompt_of, tokenize_prompt
from dealrec.llm import model as llm

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "data"
CUTOFF = 128

pytestmark = pytest.mark.skipif(not (DATA_DIR / "games").is_dir(), reason="data/games not linked")


@pytest.fixture(scope="module")
def games():
    return load_dataset(DATA_DIR, "games", check_dicts=False)



def ends_with_newest(tok, example: dict, title: str) -> bool:
    """The input ends with the newest history title, or with its start (cut by tokens), or,
    when the target title alone nearly fills the cutoff, the history is empty."""
    text = example["input"]
    if text.endswith(title + ";"):
        return True
    if ": " not in text:  # no history left: only when nothing else fits
        return len(tok(prompt_of(example))["input_ids"]) >= CUTOFF - 3
    kept = text[:-1].split(": ", 1)[1]  # the only title left, shortened by tokens
    return len(kept) > 0 and title.startswith(kept)


def raw_lines(name: str) -> list[list[int]]:
    """``sequential_<name>.txt`` parsed independently of dealrec.data.dataset: 0-based item ids per user."""
    with open(DATA_DIR / "games" / f"sequential_{name}.txt") as f:
        return [[int(x) - 1 for x in line.split()[1:]] for line in f]


@pytest.fixture(scope="module")
def selection(games) -> list[int]:
    """A few users with a validation item, a few without, and the user with the longest history."""
    longest = max(range(games.n_users), key=lambda u: len(games.train[u]))
    with_valid = games.valid_users[:4]
    without = [u for u in range(50) if not games.valid[u]][:3]
    return [longest, *with_valid, *without]


@pytest.fixture(scope="module")
def written(games, tok, selection, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fewshot")
    sel_file = tmp / "selected" / "games_8.pt"
    save_tensor(sel_file, selection)
    write_json(sel_file.with_name(sel_file.name + ".json"), {"data_name": "games", "n": len(selection)})
    users = load_selection(sel_file, games)
    assert users == selection
    paths = write_fewshot(games, users, tmp / "out", tok, CUTOFF, 8, selection_file=sel_file,
                          max_test_users=12, progress=False)
    return paths, sel_file


def test_files_and_manifests(written, selection):
    paths, sel_file = written
    assert paths == fewshot_paths(paths["train"].parents[1], 8)
    for split, path in paths.items():
        assert path.is_file()
        m = read_json(path.with_name(path.name + ".json"))
        assert m["data_name"] == "games" and m["split"] == split
        assert m["cutoff_len"] == CUTOFF and m["base_model"] == llm.EMBEDDED_NAME
        assert m["n_examples"] == len(read_json(path))
    assert read_json(paths["train"].with_name("train-8.json.json"))["selection_file"] == str(sel_file)
    assert len(read_json(paths["train"])) == len(selection)


def test_train_alignment(written, selection, games, tok):
    train_lines, titles = raw_lines("train"), games.titles
    rows = read_json(written[0]["train"])
    assert [r["user"] for r in rows] == selection
    for r in rows:
        seq = train_lines[r["user"]]
        assert set(r) >= {"instruction", "input", "output", "user", "target_ids"}
        assert r["target_ids"] == [seq[-1]]
        assert r["output"] == clean_title(titles[seq[-1]])
        # the newest history title is kept, closed by ';'
        assert ends_with_newest(tok, r, clean_title(titles[seq[-2]]))


def test_valid_and_test_alignment(written, selection, games, tok):
    train_lines, valid_lines, test_lines = raw_lines("train"), raw_lines("valid"), raw_lines("test")
    valid = read_json(written[0]["valid"])
    assert [r["user"] for r in valid] == [u for u in selection if valid_lines[u]]
    for r in valid:
        assert r["target_ids"] == [valid_lines[r["user"]][0]]
        assert ends_with_newest(tok, r, clean_title(games.titles[train_lines[r["user"]][-1]]))
    test = read_json(written[0]["test"])
    assert [r["user"] for r in test] == [u for u, s in enumerate(test_lines) if s][:12]
    for r in test:
        targets = test_lines[r["user"]]
        assert r["target_ids"] == targets
        assert r["output"] == [clean_title(games.titles[i]) for i in targets]
        history = train_lines[r["user"]] + valid_lines[r["user"]]
        assert ends_with_newest(tok, r, clean_title(games.titles[history[-1]]))


def test_truncation_fits_cutoff(written, tok, selection, games):
    rows = read_json(written[0]["train"])
    longest = rows[0]
    assert len(games.train[selection[0]]) > 30  # this user's history cannot fit 128 tokens
    n_titles = longest["input"].count(";")
    assert 1 <= n_titles < len(games.train[selection[0]]) - 1
    for split in ("train", "valid", "test"):
        for r in read_json(written[0][split]):
            ids = tok(prompt_of(r))["input_ids"]
            assert len(ids) + 1 <= CUTOFF  # + the EOS appended in training
            assert len(tokenize_prompt(tok, r, CUTOFF)["input_ids"]) <= CUTOFF


def test_rerun_keeps_up_to_date_files(written, games, tok, selection):
    paths, sel_file = written
    before = {s: p.stat().st_mtime_ns for s, p in paths.items()}
    write_fewshot(games, selection, paths["train"].parents[1], tok, CUTOFF, 8, selection_file=sel_file,
                  max_test_users=12, progress=False)
    assert {s: p.stat().st_mtime_ns for s, p in paths.items()} == before


def test_bad_selection_index(games, tmp_path):
    f = tmp_path / "games_2.pt"
    save_tensor(f, [3, games.n_users])
    with pytest.raises(DataError, match=r"games_2\.pt.*out of range"):
        load_selection(f, games)


def test_selection_of_another_data_set(games, tmp_path):
    f = tmp_path / "book_2.pt"
    save_tensor(f, [1, 2])
    write_json(f.with_name(f.name + ".json"), {"params": {"data_name": "book"}})
    with pytest.raises(DataError, match=r"'book'.*'games'"):
        load_selection(f, games)


def test_missing_duplicate_and_malformed_selection(games, tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_selection(tmp_path / "games_9.pt", games)
    f = tmp_path / "dup.pt"
    save_tensor(f, torch.tensor([4, 4, 5]))
    with pytest.raises(DataError, match="duplicate"):
        load_selection(f, games)
    save_tensor(f, {"users": [1]})
    with pytest.raises(DataError, match="plain list"):
        load_selection(f, games)
    save_tensor(f, torch.tensor([7, 8]))
    assert load_selection(f, games) == [7, 8]


def _script(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gen_fewshot_script(tmp_path, selection, capsys):
    gen = _script("code/finetune/data/gen_fewshot.py")
    sel = tmp_path / "games_8.pt"
    save_tensor(sel, selection)
    out = tmp_path / "games"
    rc = gen.main(["--data_name", "games", "--n_sample", "8", "--selected", str(sel), "--cutoff_len", "256",
                   "--max_test_users", "3", "--out_dir", str(out)])
    assert rc == 0
    assert len(read_json(out / "train" / "train-8.json")) == 8
    assert len(read_json(out / "test" / "test.json")) == 3
    assert "train-8.json" in capsys.readouterr().out
    # a missing selection file is a clear error, not a traceback
    rc = gen.main(["--data_name", "games", "--n_sample", "5", "--selected", str(tmp_path / "nope.pt"),
                   "--out_dir", str(out)])
    assert rc == 2
