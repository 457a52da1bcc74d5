"""The alpaca prompt of BIGRec/DEALRec: exact text, data set phrases, cleaning, truncation."""

from __future__ import annotations

import pytest

from dealrec.data import prompts
from dealrec.data.prompts import (
    DATASET_PHRASES,
    build_example,
    clean_title,
    extract_response,
    format_input,
    generate_prompt,
    phrases,
    prompt_of,
    register_dataset,
    tokenize_prompt,
)

# The original gen_fewshot.py / BIGRec template, verbatim (note the space after "request.").
TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n"
    "\n"
    "### Instruction:\n"
    "{instruction}\n"
    "\n"
    "### Input:\n"
    "{input}\n"
    "\n"
    "### Response:\n"
    "{output}"
)

ORIGINAL_PHRASES = {
    "games": (
        "Given the game products that the user purchased before, please recommend a new game product "
        "that the user likes to the user.",
        "The user has purchased the following game products before, with titles as:",
    ),
    "book": (
        "Given the books that the user purchased before, please recommend a new book that the user "
        "likes to the user.",
        "The user has purchased the following books before, with titles as:",
    ),
    "microlens-50k": (
        "Given the micro-videos that the user watched before, please recommend a new micro-video that "
        "the user likes to the user.",
        "The user has watched the following micro-videos before, with titles as:",
    ),
}


def test_template_text():
    assert prompts.PREAMBLE == (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request. "
    )
    got = generate_prompt("INSTR", "IN", "OUT")
    assert got == TEMPLATE.format(instruction="INSTR", input="IN", output="OUT")
    assert generate_prompt("INSTR", "IN") == TEMPLATE.format(instruction="INSTR", input="IN", output="")
    assert got.endswith("\n\n### Response:\nOUT")


@pytest.mark.parametrize("name", sorted(ORIGINAL_PHRASES))
def test_dataset_prompt_exact(name):
    instruction, prefix = ORIGINAL_PHRASES[name]
    assert phrases(name).instruction == instruction
    assert phrases(name).input_prefix == prefix
    ex = build_example(name, ["A", "B; c", "D"], "Target")
    assert ex == {"instruction": instruction, "input": f"{prefix} A; B; c; D;", "output": "Target"}
    expected = (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request. \n\n"
        f"### Instruction:\n{instruction}\n\n"
        f"### Input:\n{prefix} A; B; c; D;\n\n"
        "### Response:\nTarget"
    )
    assert prompt_of(ex) == expected
    assert prompt_of(ex, with_output=False) == expected[: -len("Target")]


def test_prompt_of_list_output():
    ex = {"instruction": "I", "input": "X", "output": ["First", "Second"]}
    assert prompt_of(ex).endswith("### Response:\nFirst")
    assert prompt_of({**ex, "output": []}).endswith("### Response:\n")


def test_empty_history():
    ex = build_example("games", [], "T")
    assert ex["input"] == ORIGINAL_PHRASES["games"][1]


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError) as err:
        phrases("movies")
    msg = str(err.value)
    assert "'movies'" in msg
    for name in ("book", "games", "microlens-50k"):
        assert name in msg
    assert "register_dataset" in msg
    with pytest.raises(ValueError, match="unknown data set 'movies'"):
        build_example("movies", ["a"], "b")


def test_register_dataset():
    try:
        register_dataset("movies", "Recommend a movie.", "The user watched:")
        assert phrases("movies").instruction == "Recommend a movie."
        ex = build_example("movies", ["Heat", "Alien"], "Ran")
        assert ex == {"instruction": "Recommend a movie.", "input": "The user watched: Heat; Alien;", "output": "Ran"}
        assert "movies" in str(pytest.raises(ValueError, phrases, "nope").value)
    finally:
        DATASET_PHRASES.pop("movies", None)
    assert "movies" not in DATASET_PHRASES


def test_newline_removal():
    assert clean_title("a\nb") == "ab"
    assert clean_title("a\r\nb\rc\n") == "abc"
    assert clean_title("no newline; \"quoted\" ★") == "no newline; \"quoted\" ★"
    ex = build_example("games", ["Line one\nLine two", "x\r\ny"], "Tar\nget")
    assert "\n" not in ex["input"] and "\r" not in ex["input"]
    assert ex["input"].endswith(": Line oneLine two; xy;")
    assert ex["output"] == "Target"
    assert format_input("games", ["p\nq"]).endswith(" pq;")


def test_extract_response():
    text = generate_prompt("I", "X", "  Half-Life 2 \n")
    assert extract_response(text) == "Half-Life 2"
    assert extract_response("### Response: a ### Response:\nb\n") == "b"
    assert extract_response("no marker at all ") == "no marker at all"
    assert extract_response("### Response:") == ""


# -- truncation with the real tokenizer ---------------------------------------------------------



def n_tok(tok, text: str) -> int:
    return len(tok(text)["input_ids"])


def check_fits(tok, ex: dict, cutoff: int, target: str) -> dict:
    enc = tokenize_prompt(tok, ex, cutoff)
    assert len(enc["input_ids"]) <= cutoff
    assert ex["output"] == clean_title(target)  # the target title is never cut
    # Nothing was cut by tokenize_prompt: the ids are the whole prompt followed by EOS.
    assert enc["input_ids"][:-1] == tok(prompt_of(ex))["input_ids"]
    assert enc["input_ids"][-1] == tok.eos_token_id
    assert enc["labels"] == enc["input_ids"]
    return enc


HISTORY = [f"Game number {i}: The Adventure of Item {i} - PC Edition" for i in range(60)]


TARGET = "Super Long Target Title: Collector's Edition; with \"quotes\" — ★ Deluxe\nPack"


@pytest.mark.slow
@pytest.mark.parametrize("cutoff", [160, 256, 400])  # the bare prompt is 84 tokens
def test_truncation_keeps_newest_titles_and_whole_target(tok, cutoff):
    ex = build_example("games", HISTORY, TARGET, tok, cutoff)
    check_fits(tok, ex, cutoff, TARGET)
    # The kept titles are the newest k, whole (titles contain ": " themselves, so match suffixes).
    k = next(
        (k for k in range(len(HISTORY), 0, -1) if ex["input"].endswith(" " + "; ".join(HISTORY[-k:]) + ";")), 0
    )
    assert 1 <= k < len(HISTORY)
    assert ex["input"] == format_input("games", HISTORY[-k:])
    # Maximal: one more (older) title would not fit.
    longer = build_example("games", HISTORY[-(k + 1):], TARGET)
    assert n_tok(tok, prompt_of(longer)) + 1 > cutoff


@pytest.mark.slow
def test_truncation_to_part_of_newest_title(tok):
    """At 112 tokens the bare prompt and target leave room for part of one title only."""
    cutoff = 112
    ex = build_example("games", HISTORY, TARGET, tok, cutoff)
    check_fits(tok, ex, cutoff, TARGET)
    assert n_tok(tok, prompt_of(build_example("games", HISTORY[-1:], TARGET))) + 1 > cutoff
    kept = ex["input"][len(ORIGINAL_PHRASES["games"][1]) + 1 : -1]
    assert kept and HISTORY[-1].startswith(kept)


@pytest.mark.slow
def test_no_truncation_when_it_fits(tok):
    ex = build_example("games", HISTORY[:3], "T", tok, 512)
    assert ex["input"] == format_input("games", HISTORY[:3])
    assert ex == build_example("games", HISTORY[:3], "T")


@pytest.mark.slow
def test_newest_title_kept_when_one_title_does_not_fit(tok):
    cutoff = 128
    long_title = "Ultra " + " ".join(f"word{i}" for i in range(300))
    history = ["Old Game A", "Old Game B", long_title]
    target = "The Target Game"
    ex = build_example("games", history, target, tok, cutoff)
    check_fits(tok, ex, cutoff, target)
    kept = ex["input"][len(ORIGINAL_PHRASES["games"][1]) + 1 : -1]
    assert kept and long_title.startswith(kept)  # a prefix of the newest title, not an older one
    assert "Old Game" not in ex["input"]


@pytest.mark.slow
def test_target_alone_too_long_does_not_crash(tok):
    cutoff = 64
    target = "Target " + " ".join(f"w{i}" for i in range(200))
    ex = build_example("games", ["a", "b"], target, tok, cutoff)
    assert ex["output"] == target
    enc = tokenize_prompt(tok, ex, cutoff)
    assert len(enc["input_ids"]) <= cutoff


@pytest.mark.slow
def test_tokenize_prompt_masks_inputs(tok):
    ex = build_example("games", HISTORY[:2], "Target Game")
    enc = tokenize_prompt(tok, ex, 512, train_on_inputs=False)
    n_user = n_tok(tok, prompt_of(ex, with_output=False))
    assert enc["labels"][:n_user] == [-100] * n_user
    assert enc["labels"][n_user:] == enc["input_ids"][n_user:]
    assert enc["attention_mask"] == [1] * len(enc["input_ids"])
    assert tokenize_prompt(tok, ex, 512, add_eos=False)["input_ids"][-1] != tok.eos_token_id
