"""MicroLens-50K as the authors released it (data/microlens-50k): what the Games runs never met —
users without training items, micro-video titles in Chinese and English, titles of over a thousand
tokens — on the real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dealrec.data.dataset import load_dataset
from dealrec.data.fewshot import build_examples
from dealrec.data.prompts import phrases, tokenize_prompt
from dealrec.prune.pipeline import eligible_mask

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
CUTOFF = 512


@pytest.fixture(scope="module")
def microlens():
    if not (DATA_DIR / "microlens-50k").is_dir():
        pytest.skip("data/microlens-50k is absent: link the authors' MicroLens-50K folder (make data)")
    return load_dataset(DATA_DIR, "microlens-50k")


@pytest.fixture(scope="module")
def tokenizer():
    from dealrec.llm.model import load_tokenizer

    return load_tokenizer(None)


def test_counts_of_the_release(microlens):
    s = microlens.summary()
    assert (s["users"], s["items"]) == (49_887, 19_217)
    assert (s["train_interactions"], s["valid_interactions"], s["test_interactions"]) == (287_768, 35_970, 35_310)
    assert (s["valid_users"], s["test_users"]) == (21_611, 20_748)
    lengths = [len(seq) for seq in microlens.train]
    assert sum(n == 0 for n in lengths) == 471 and sum(n < 3 for n in lengths) == 3_699


def test_users_without_training_items_have_no_sample(microlens, tokenizer):
    """A user with no training item gives no training prompt and cannot be selected."""
    empty = [u for u, seq in enumerate(microlens.train) if not seq][:5]
    assert empty and build_examples(microlens, empty, "train", tokenizer, CUTOFF, progress=False) == []
    assert not eligible_mask(microlens)[empty].any()


def test_prompts_fit_with_titles_of_a_thousand_tokens(microlens, tokenizer):
    """The longest titles (up to 1,723 tokens with the embedded tokenizer) never push a training
    prompt past the cutoff: older titles are dropped, and a history title longer than the budget
    is cut by tokens; the target title stays whole whenever the prompt without history fits."""
    lengths = np.array([len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in microlens.titles])
    long_items = set(np.flatnonzero(lengths > 400).tolist())
    assert len(long_items) == 3
    users = [u for u, seq in enumerate(microlens.train) if len(seq) >= 2 and set(seq[:-1]) & long_items][:20]
    assert users
    for ex in build_examples(microlens, users, "train", tokenizer, CUTOFF, progress=False):
        ids = tokenize_prompt(tokenizer, ex, CUTOFF)["input_ids"]
        assert len(ids) <= CUTOFF and ids[-1] == tokenizer.eos_token_id
        assert ex["output"] == microlens.titles[microlens.train[ex["user"]][-1]].replace("\n", "")
    assert "micro-video" in phrases("microlens-50k").instruction


def test_titles_keep_their_scripts(microlens):
    """The 88 titles in Chinese reach the prompts unchanged (no ASCII folding), beside English ones."""
    from dealrec.data.prompts import build_example

    cjk = [t for t in microlens.titles if any("\u4e00" <= ch <= "\u9fff" for ch in t)]
    assert len(cjk) == 88 and all(t.strip() for t in microlens.titles)
    ex = build_example("microlens-50k", cjk[1:3], cjk[0])
    assert ex["output"] == cjk[0].replace("\n", "") and cjk[1].replace("\n", "") in ex["input"]
