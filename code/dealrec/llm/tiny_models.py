"""Tiny, randomly initialised model folders in the layouts users bring (tests and GPU checks).

Nothing is downloaded: the tokenizers are trained here, in a second, on the item titles of a
data set (or on a small built-in text list) plus the phrases of the prompt, and the weights are
random. The folders look like the real ones, so that every stage loads them through
``--base_model DIR`` exactly as it loads LLaMA-7B or Qwen:

- :func:`make_llama` — ``LlamaForCausalLM`` + a **sentencepiece** ``tokenizer.model`` (BPE,
  byte fallback, ``<unk>``=0 ``<s>``=1 ``</s>``=2, no pad token), tokenizer files as in the
  LLaMA-7B-hf folders of 2023 (``tokenizer_config.json`` with ``LlamaTokenizer``,
  ``special_tokens_map.json``, no ``tokenizer.json``); config ``pad_token_id`` 0 as
  alpaca-lora sets it. ``tokenizer_json=True`` also writes the converted ``tokenizer.json``
  (the Llama-2-hf layout).
- :func:`make_qwen2` — ``Qwen2ForCausalLM`` (biases in q/k/v, tied embeddings, grouped-query
  attention) + a byte-level BPE ``tokenizer.json`` with Qwen's special tokens: no BOS, pad =
  eos = ``<|endoftext|>`` (as Qwen2.5 base models).

These models recommend nothing; they exercise the code paths (tokenizer ids, padding, labels,
LoRA, generation, grounding) in seconds on a CPU.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from dealrec.data.prompts import DATASET_PHRASES, PREAMBLE, RESPONSE_MARK, clean_title

# Used when no data set is at hand (and to make sure these pieces are in every vocabulary).
BUILTIN_TITLES = [
    "Super Mario Bros. 3", "The Legend of Zelda: Ocarina of Time", "Final Fantasy VII", "Halo 3",
    "Grand Theft Auto V", "Call of Duty: Modern Warfare 2", "Minecraft - Xbox 360 Edition",
    "Pokémon Red Version", "Sonic the Hedgehog 2", "Street Fighter II Turbo", "Tetris DS",
    "Mass Effect 2", "The Elder Scrolls V: Skyrim", "Metal Gear Solid 4: Guns of the Patriots",
    "Resident Evil 4", "Portal 2", "Half-Life 2: The Orange Box", "Red Dead Redemption",
    "Mario Kart 8 Deluxe", "Animal Crossing: New Leaf", "Gran Turismo 5", "FIFA Soccer 13",
    "Madden NFL 25", "NBA 2K14", "Xbox 360 Wireless Controller - Black", "PlayStation 4 Camera",
    "Nintendo 3DS XL - Red/Black", "Turtle Beach Ear Force X12 Gaming Headset", "Dance Dance Revolution",
    "Guitar Hero III: Legends of Rock", "Rock Band 2", "Wii Fit Plus", "Kinect Adventures!",
    "BioShock Infinite", "Borderlands 2", "Fallout: New Vegas", "Diablo III", "StarCraft II",
    "World of Warcraft: Mists of Pandaria", "The Sims 3", "SimCity 4 Deluxe", "Age of Empires II",
    "Civilization V", "Dark Souls", "Demon's Souls", "Uncharted 2: Among Thieves", "God of War III",
    "Batman: Arkham City", "Assassin's Creed II", "Far Cry 3", "Tomb Raider", "Bayonetta",
    "Kingdom Hearts", "Chrono Trigger", "EarthBound", "Metroid Prime", "Donkey Kong Country",
    "Star Fox 64", "GoldenEye 007", "Banjo-Kazooie", "Crash Bandicoot", "Spyro the Dragon",
    "Tony Hawk's Pro Skater 2", "Need for Speed: Most Wanted", "Burnout Paradise", "Forza Motorsport 4",
    "Gears of War", "Killzone 2", "LittleBigPlanet", "Ratchet & Clank", "Jak and Daxter",
    "Sly Cooper", "Okami", "Shadow of the Colossus", "ICO", "Journey", "Limbo", "Braid", "Fez",
    "Plants vs. Zombies", "Angry Birds Trilogy", "Just Dance 4", "Lego Star Wars: The Complete Saga",
    "Disney Infinity Starter Pack", "Skylanders Giants", "Pac-Man Championship Edition DX",
    "Sega Genesis Classics", "Atari Flashback 4", "Game Boy Advance SP", "Memory Card (8MB) for PS2",
    "HDMI Cable 6ft", "Charging Station for Wii Remote", "Steering Wheel for Xbox One",
]


def training_texts(data_dir: str | os.PathLike | None = None, data_name: str = "games") -> list[str]:
    """Item titles of ``data_dir/data_name`` (via :func:`dealrec.data.dataset.load_dataset`) if present,
    else :data:`BUILTIN_TITLES`; plus the prompt phrases and ``BUILTIN_TITLES`` in any case."""
    titles: list[str] = []
    if data_dir is not None and (Path(data_dir) / data_name).is_dir():
        from dealrec.data.dataset import load_dataset

        titles = [clean_title(t) for t in load_dataset(data_dir, data_name, check_dicts=False).titles]
    phrases = [PREAMBLE.strip(), "### Instruction:", "### Input:", RESPONSE_MARK]
    for p in DATASET_PHRASES.values():
        phrases += [p.instruction, p.input_prefix]
    return titles + BUILTIN_TITLES + phrases * 300


def train_sentencepiece(texts: Iterable[str], vocab_size: int = 800) -> bytes:
    """A LLaMA-like sentencepiece model (BPE, byte fallback, digits split, ``<unk>``/``<s>``/``</s>``
    = 0/1/2, no pad) trained on ``texts``; the serialised ``tokenizer.model``."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, normalization_rule_name="identity", character_coverage=0.9995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2, input_sentence_size=0,
        shuffle_input_sentence=False,
    )
    return model.getvalue()


# Qwen2's pre-tokenizer pattern (tokenizer.json of Qwen2/2.5).
_QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def train_byte_bpe(texts: Iterable[str], vocab_size: int = 700) -> object:
    """A Qwen2-like byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts``."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(QWEN_SPECIAL), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(list(texts), trainer)
    return tk


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _save_model(model: torch.nn.Module, out: Path) -> None:
    model.save_pretrained(str(out), safe_serialization=True)


def make_llama(
    out: str | os.PathLike,
    texts: Sequence[str] | None = None,
    *,
    tokenizer_json: bool = False,
    vocab_size: int = 800,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    seed: int = 0,
    sp_model: bytes | None = None,
) -> Path:
    """A LLaMA-7B-style folder at ``out`` (see the module doc); returns ``out``."""
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if sp_model is None:
        sp_model = train_sentencepiece(texts if texts is not None else training_texts(), vocab_size)
    (out / "tokenizer.json").unlink(missing_ok=True)  # a stale one would win over tokenizer.model
    (out / "tokenizer.model").write_bytes(sp_model)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    _write_json(out / "special_tokens_map.json", special)
    _write_json(out / "tokenizer_config.json", {
        **special, "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "legacy": False, "model_max_length": 2048, "pad_token": None, "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    })
    import sentencepiece as spm

    n_vocab = spm.SentencePieceProcessor(model_proto=sp_model).get_piece_size()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=n_vocab, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads or heads, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    _save_model(model, out)
    if tokenizer_json:
        tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
        tok.save_pretrained(str(out))
    return out


def make_qwen2(
    out: str | os.PathLike,
    texts: Sequence[str] | None = None,
    *,
    vocab_size: int = 700,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    seed: int = 0,
) -> Path:
    """A Qwen2.5-base-style folder at ``out`` (see the module doc); returns ``out``."""
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tk = train_byte_bpe(texts if texts is not None else training_texts(), vocab_size)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save_pretrained(str(out))
    cfg_file = out / "tokenizer_config.json"
    tcfg = json.loads(cfg_file.read_text())
    tcfg.update({"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "unk_token": None, "add_prefix_space": False,
                 "errors": "replace", "model_max_length": 32768, "split_special_tokens": False})
    tcfg.pop("backend", None)
    _write_json(cfg_file, tcfg)
    eos = tk.token_to_id("<|endoftext|>")
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=tk.get_vocab_size(), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos,
        use_sliding_window=False,
    )
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    _save_model(model, out)
    return out


def copy_model(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    dst = Path(dst)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst


def write_synthetic_dataset(
    data_dir: str | os.PathLike,
    name: str = "games",
    n_users: int = 200,
    n_items: int | None = None,
    seed: int = 0,
    titles: Sequence[str] | None = None,
) -> Path:
    """A data set folder in the authors' format (``sequential_*.txt`` + ``title_maps.npy``) with
    random sequences over ``titles`` (default :data:`BUILTIN_TITLES`); for checks on machines
    without the real data. Every user has ≥ 3 train items, one validation and one test item."""
    titles = list(titles if titles is not None else BUILTIN_TITLES)
    n_items = n_items or len(titles)
    titles = [titles[i % len(titles)] + (f" ({i // len(titles) + 1})" if i >= len(titles) else "") for i in range(n_items)]
    rng = np.random.default_rng(seed)
    root = Path(data_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    seqs = [rng.choice(n_items, size=int(rng.integers(5, 14)), replace=False).tolist() for _ in range(n_users)]
    splits = {"train": [s[:-2] for s in seqs], "valid": [s[-2:-1] for s in seqs], "test": [s[-1:] for s in seqs]}
    for split, rows in splits.items():
        lines = [" ".join(str(x) for x in [u + 1] + [i + 1 for i in s]) for u, s in enumerate(rows)]
        (root / f"sequential_{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    np.save(root / "title_maps.npy", {"seqid2title": {str(i + 1): t for i, t in enumerate(titles)}})
    return root
