"""Shared fixtures: the real Games data set and a factory of small synthetic data sets.

Test modules may define fixtures of the same name (e.g. a module-scoped ``games``); theirs win.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dealrec.data.prompts import DATASET_PHRASES

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"

# Titles of the synthetic data set (seq id = index + 1): duplicates, Unicode, punctuation,
# ';', quotes and newlines, as real catalogues have.
TINY_TITLES = [
    "Plain Game",
    "Duplicate Title",
    "Duplicate Title",
    "Pokémon — Édition Spéciale ★ 日本語版",
    "Semi; colon \"double\" and 'single' quotes",
    "Line one\nLine two\r\nLine three",
    "Punctuation!? (Deluxe) [PC] & more, 100% {x} <y> \\ / | ~",
    "Last Item",
]
# 0-based item ids per user: user 1 has an empty train sequence, user 2 a length-1 one.
TINY_TRAIN = [[0, 1, 2, 3], [], [5], [3, 4, 5, 6, 7], [7, 1]]
TINY_VALID = [[4], [], [6], [], [0]]
TINY_TEST = [[5], [6], [], [0, 1], [2]]


def _write_seq(path: Path, seqs: list[list[int]]) -> None:
    lines = [" ".join(str(x) for x in [u + 1] + [i + 1 for i in s]) for u, s in enumerate(seqs)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def games():
    """The authors' Games data set (data/games), loaded once with the dict cross-check."""
    from dealrec.data.dataset import load_dataset

    if not (DATA_DIR / "games").is_dir():
        pytest.skip(
            f"{DATA_DIR / 'games'} is absent: link the authors' Games data set there "
            "(bash tools/setup.sh) to run the real-data tests"
        )
    return load_dataset(DATA_DIR, "games")


@pytest.fixture
def tiny_dataset(tmp_path):
    """Factory ``tiny_dataset(name="tiny", train=..., valid=..., test=..., titles=..., dicts=True,
    item_map=True)`` writing a data set folder in the authors' format under ``tmp_path``, with a
    data card holding the prompt phrases when ``name`` is not one of the paper's data sets.

    Returns a namespace with ``data_dir``, ``name``, ``root`` and the 0-based contents written.
    """

    def make(
        name: str = "tiny",
        train: list[list[int]] | None = None,
        valid: list[list[int]] | None = None,
        test: list[list[int]] | None = None,
        titles: list[str] | None = None,
        dicts: bool = True,
        item_map: bool = True,
    ) -> SimpleNamespace:
        train = [list(s) for s in (TINY_TRAIN if train is None else train)]
        valid = [list(s) for s in (TINY_VALID if valid is None else valid)]
        test = [list(s) for s in (TINY_TEST if test is None else test)]
        titles = list(TINY_TITLES if titles is None else titles)
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        _write_seq(root / "sequential_train.txt", train)
        _write_seq(root / "sequential_valid.txt", valid)
        _write_seq(root / "sequential_test.txt", test)
        asins = [f"B{i:09d}" for i in range(len(titles))]
        maps = {
            "seqid2title": {str(i + 1): t for i, t in enumerate(titles)},
            "recid2title": {i: t for i, t in enumerate(titles)},
            "item2title": {a: t for a, t in zip(asins, titles)},
        }
        np.save(root / "title_maps.npy", maps)
        if item_map:
            np.save(root / "item_map.npy", {a: i for i, a in enumerate(asins)})
        if dicts:
            for fname, seqs in (
                ("training_dict.npy", train),
                ("validation_dict.npy", valid),
                ("testing_dict.npy", test),
            ):
                np.save(root / fname, {u: list(s) for u, s in enumerate(seqs)})
        if name not in DATASET_PHRASES:
            (root / "dataset.json").write_text(json.dumps({"prompt": TINY_PHRASES}), encoding="utf-8")
        return SimpleNamespace(
            data_dir=tmp_path, name=name, root=root, train=train, valid=valid, test=test, titles=titles
        )

    return make


@pytest.fixture(autouse=True)
def _registered_phrases_restored():
    """Loading a folder with a data card registers its phrases under the data set's name for the
    process; each test starts from the phrases the project registers (a prepared folder named
    ``games`` must not change the real Games prompts of a later test)."""
    saved = dict(DATASET_PHRASES)
    yield
    DATASET_PHRASES.clear()
    DATASET_PHRASES.update(saved)


# The phrases of the data card written for a data set name the project does not register.
TINY_PHRASES = {"instruction": "Given the items that the user interacted with before, please recommend a new item.",
                "input_prefix": "The user has interacted with the following items before, with titles as:"}


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread (module scope): on a shared 2-core machine two OpenMP threads thrash as soon
    as another process is busy (a tiny SASRec trains 25x slower), and small ops gain nothing."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tok():
    """The embedded model's tokenizer (loaded once)."""
    from dealrec.llm import model as llm

    return llm.load_tokenizer(None)


@pytest.fixture(scope="module")
def model():
    """The embedded base model (fresh per test module: some tests wrap it with LoRA)."""
    from dealrec.llm import model as llm

    return llm.load_base_model(None)


# -- bring-your-own-LLM fixtures: tiny random models in the layouts users bring ------------------


@pytest.fixture(scope="session")
def byo_data(tmp_path_factory):
    """Games when linked, else a synthetic data set in the authors' format (same phrases)."""
    from dealrec.data.dataset import load_dataset

    if (DATA_DIR / "games").is_dir():
        return load_dataset(DATA_DIR, "games", check_dicts=False)
    from dealrec.llm.tiny_models import write_synthetic_dataset

    root = tmp_path_factory.mktemp("byo_data")
    write_synthetic_dataset(root, "games", n_users=60)
    return load_dataset(root, "games", check_dicts=False)


@pytest.fixture(scope="session")
def byo_models(tmp_path_factory):
    """``{name: folder}``: ``llama-sp`` (LlamaForCausalLM + sentencepiece tokenizer.model only, as the
    LLaMA-7B folders of 2023), ``llama-json`` (the same model and tokenizer as tokenizer.json) and
    ``qwen2`` (Qwen2ForCausalLM, byte-level BPE, q/k/v biases, tied embeddings, pad = eos).
    Tokenizers trained here on the Games titles (or a built-in list): nothing is downloaded."""
    from dealrec.llm.tiny_models import make_llama, make_qwen2, train_sentencepiece, training_texts

    root = tmp_path_factory.mktemp("byo_models")
    texts = training_texts(DATA_DIR)
    sp = train_sentencepiece(texts, vocab_size=800)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = {
            "llama-sp": make_llama(root / "llama-sp", sp_model=sp, seed=0),
            "llama-json": make_llama(root / "llama-json", sp_model=sp, seed=0, tokenizer_json=True),
            "qwen2": make_qwen2(root / "qwen2", texts, vocab_size=800, seed=0),
        }
    finally:
        torch.set_num_threads(n)
    (models["llama-json"] / "tokenizer.model").unlink()  # tokenizer.json alone (as Llama-3 and later)
    return models


@pytest.fixture(scope="module")
def zygote():
    """Pre-imported interpreters to fork the reliability tests' script runs from (None: plain
    subprocesses, ``DEALREC_TEST_NO_FORK=1``)."""
    from _reliability import Zygote, use_fork

    z = Zygote() if use_fork() else None
    yield z
    if z is not None:
        z.close()
