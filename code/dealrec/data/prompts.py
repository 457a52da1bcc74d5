"""The one alpaca-style prompt of BIGRec/DEALRec, shared by scoring, training and inference.

A prompt is ``preamble / ### Instruction / ### Input / ### Response``; the input lists the
titles of the user's history, oldest first, ``"; "``-separated and closed by ``";"`` as in the
original ``gen_fewshot.py``. Truncation drops the oldest titles until the whole prompt,
*including the full target title* and the end-of-sequence token, fits ``cutoff_len`` tokens.

A data set's two phrases (instruction, input prefix) come from its data card (``dataset.json``,
entry ``prompt``), registered by :func:`dealrec.data.dataset.load_dataset`; the paper's three data
sets are registered here. Code may add others with :func:`register_dataset`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

LOG = logging.getLogger("dealrec")  # = dealrec.core.logs.LOG (this module stays free of torch)

PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request. "
)
RESPONSE_MARK = "### Response:"
_WARNED_CUTOFFS: set[int] = set()


@dataclass(frozen=True)
class DatasetPhrases:
    instruction: str
    input_prefix: str  # followed by " T1; T2; ...;"


DATASET_PHRASES: dict[str, DatasetPhrases] = {}


def register_dataset(name: str, instruction: str, input_prefix: str) -> None:
    """Register the instruction and input phrase of a data set (the one place to add one)."""
    DATASET_PHRASES[name] = DatasetPhrases(instruction, input_prefix)


register_dataset(
    "games",
    "Given the game products that the user purchased before, please recommend a new game product "
    "that the user likes to the user.",
    "The user has purchased the following game products before, with titles as:",
)
register_dataset(
    "microlens-50k",
    "Given the micro-videos that the user watched before, please recommend a new micro-video that "
    "the user likes to the user.",
    "The user has watched the following micro-videos before, with titles as:",
)
register_dataset(
    "book",
    "Given the books that the user purchased before, please recommend a new book that the user likes "
    "to the user.",
    "The user has purchased the following books before, with titles as:",
)


def phrases(data_name: str) -> DatasetPhrases:
    try:
        return DATASET_PHRASES[data_name]
    except KeyError:
        known = ", ".join(sorted(DATASET_PHRASES))
        raise ValueError(
            f"unknown data set {data_name!r}; known: {known}. Give its folder a data card (dataset.json with "
            "a 'prompt' entry: code/prepare/prepare.py --item_noun writes one) or register the phrases with "
            "dealrec.data.prompts.register_dataset(name, instruction, input_prefix)."
        ) from None


def clean_title(title: str) -> str:
    """Titles lose their newlines (as in the original)."""
    return "".join(title.replace("\r", "\n").split("\n"))


def format_input(data_name: str, history_titles: list[str]) -> str:
    prefix = phrases(data_name).input_prefix
    if not history_titles:
        return prefix
    return prefix + " " + "; ".join(clean_title(t) for t in history_titles) + ";"


def generate_prompt(instruction: str, input_text: str, output: str = "") -> str:
    """The alpaca template; ``output`` empty for inference."""
    return (
        f"{PREAMBLE}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n"
        f"{RESPONSE_MARK}\n{output}"
    )


def prompt_of(example: dict[str, Any], with_output: bool = True) -> str:
    out = example["output"] if with_output else ""
    if isinstance(out, list):
        out = out[0] if out else ""
    return generate_prompt(example["instruction"], example["input"], out)


def extract_response(text: str) -> str:
    """The generated text after the last ``### Response:`` marker."""
    return text.split(RESPONSE_MARK)[-1].strip()


def _n_tokens(tokenizer: Any, text: str) -> int:
    """Token count of a full training prompt, counting the appended EOS token."""
    return len(tokenizer(text)["input_ids"]) + 1


def build_example(
    data_name: str,
    history_titles: list[str],
    target_title: str,
    tokenizer: Any | None = None,
    cutoff_len: int = 512,
) -> dict[str, str]:
    """An ``instruction``/``input``/``output`` example, history truncated to fit ``cutoff_len``."""
    instruction = phrases(data_name).instruction
    target = clean_title(target_title)
    history = [clean_title(t) for t in history_titles]

    def full(k: int) -> str:
        kept = history[len(history) - k:] if k else []
        return generate_prompt(instruction, format_input(data_name, kept), target)

    if tokenizer is None or not history or _n_tokens(tokenizer, full(len(history))) <= cutoff_len:
        return {"instruction": instruction, "input": format_input(data_name, history), "output": target}
    # Largest k (newest titles kept) that fits: the token count grows with k.
    lo, hi = 0, len(history)  # full(lo) fits or lo == 0; full(hi) does not fit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _n_tokens(tokenizer, full(mid)) <= cutoff_len:
            lo = mid
        else:
            hi = mid
    if lo >= 1:
        return {"instruction": instruction, "input": format_input(data_name, history[-lo:]), "output": target}
    # Even the newest title alone does not fit: keep it, cut by tokens.
    n_bare = _n_tokens(tokenizer, full(0))
    if n_bare > cutoff_len and cutoff_len not in _WARNED_CUTOFFS:
        _WARNED_CUTOFFS.add(cutoff_len)
        LOG.warning(
            "cutoff_len %d is shorter than the prompt without any history (%d tokens with this tokenizer): "
            "training prompts lose their target title and EOS; raise --cutoff_len", cutoff_len, n_bare,
        )
    budget = cutoff_len - n_bare - 2
    newest_ids = tokenizer(history[-1], add_special_tokens=False)["input_ids"]
    kept_title = tokenizer.decode(newest_ids[: max(budget, 0)]).strip() if budget > 0 else ""
    kept = [kept_title] if kept_title else []
    return {"instruction": instruction, "input": format_input(data_name, kept), "output": target}


def tokenize_prompt(
    tokenizer: Any,
    example: dict[str, Any],
    cutoff_len: int = 512,
    train_on_inputs: bool = True,
    add_eos: bool = True,
) -> dict[str, list[int]]:
    """Token ids, mask and labels of the full prompt (labels = inputs, as the original trains).

    With ``train_on_inputs=False`` the prompt part's labels are -100.
    """
    text = prompt_of(example)
    enc = tokenizer(text, truncation=True, max_length=cutoff_len)
    ids = list(enc["input_ids"])
    eos = tokenizer.eos_token_id
    if add_eos and eos is not None and (not ids or ids[-1] != eos) and len(ids) < cutoff_len:
        ids.append(eos)
    labels = list(ids)
    if not train_on_inputs:
        user = tokenizer(prompt_of(example, with_output=False), truncation=True, max_length=cutoff_len)["input_ids"]
        # The prompt's tokens are a prefix of the full text's, except where a tokenizer merges the
        # last prompt token with the response or appends EOS to the prompt: mask the common prefix.
        n_user = 0
        for a, b in zip(user, ids):
            if a != b:
                break
            n_user += 1
        labels = [-100] * n_user + labels[n_user:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
