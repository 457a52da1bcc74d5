"""Base model / tokenizer loading (embedded, offline) and warm-start adapter validation."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from dealrec.llm import model as llm
from dealrec.llm.model import ModelError, check_adapter, lora_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_hf_hub_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"




@pytest.mark.slow
def test_embedded_model_generates(tok, model):
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32  # fp32 on the CPU
    assert tok.padding_side == "left"
    enc = tok(["Hello, my name is", "The best video game of all time is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[:, enc["input_ids"].shape[1]:]
    assert new.shape[0] == 2 and new.shape[1] >= 1
    for row in new:
        assert tok.decode(row, skip_special_tokens=True).strip()
    # Greedy decoding is deterministic.
    with torch.no_grad():
        again = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(out, again)


@pytest.mark.slow
def test_special_ids_come_from_the_tokenizer(tok, model):
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    assert tok.eos_token_id == tok.convert_tokens_to_ids(tok.eos_token)
    assert tok.pad_token_id == tok.convert_tokens_to_ids(tok.pad_token)
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert llm.model_id(None) == llm.EMBEDDED_NAME == llm.model_id("embedded")


@pytest.mark.slow
def test_pad_fallback_when_the_tokenizer_has_none(tmp_path):
    """A tokenizer without a pad token gets unk (≠ eos, as the original's id 0), else eos."""
    src = llm.embedded_model_dir()
    dst = tmp_path / "model"
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":  # the tokenizer needs no weights
            shutil.copy(f, dst / f.name)
    cfg_file = dst / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("pad_token", None)
    cfg_file.write_text(json.dumps(cfg))
    t = llm.load_tokenizer(dst, padding_side="right")
    assert t.pad_token == t.unk_token and t.pad_token_id != t.eos_token_id
    assert t.padding_side == "right"

    cfg.pop("unk_token", None)
    cfg_file.write_text(json.dumps(cfg))
    t = llm.load_tokenizer(dst)
    assert t.unk_token is None
    assert t.pad_token_id == t.eos_token_id


def test_unknown_base_model_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match="no-such-model: no such directory"):
        llm.resolve_base_model(missing)
    with pytest.raises(ModelError, match="no-such-model"):
        llm.load_tokenizer(str(missing))
    with pytest.raises(ModelError, match="no-such-model"):
        llm.load_base_model(str(missing))


def test_directory_without_config(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelError, match="no config.json inside"):
        llm.resolve_base_model(tmp_path)
    with pytest.raises(ModelError, match="no config.json"):
        llm.load_base_model(tmp_path)


def test_quantization_needs_a_gpu():
    with pytest.raises(ModelError, match="needs a GPU"):
        llm.load_base_model(None, device="cpu", quantization="8bit")


def test_default_dtype_on_cpu():
    assert llm.default_dtype("cpu") == torch.float32


# -- warm-start adapters ------------------------------------------------------------------------


def write_adapter(path, r=8, alpha=16, targets=("q_proj", "v_proj"), weights="adapter_model.safetensors", state=None):
    """An adapter folder whose weights file holds one lora_A/lora_B pair per target (or ``state``)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(
        json.dumps({"r": r, "lora_alpha": alpha, "target_modules": list(targets), "peft_type": "LORA"})
    )
    if state is None:
        state = {f"base_model.model.model.layers.0.self_attn.{t}.lora_{ab}.weight": torch.ones(r, r)
                 for t in targets for ab in "AB"}
    if weights == "adapter_model.safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path / weights))
    elif weights:
        torch.save(state, path / weights)
    return path


def test_check_adapter_accepts_matching(tmp_path):
    cfg = lora_config(r=8, alpha=16, target_modules=("q_proj", "v_proj"))
    good = write_adapter(tmp_path / "a", targets=("v_proj", "q_proj"))  # order does not matter
    assert check_adapter(good, cfg) == good
    bin_only = write_adapter(tmp_path / "b", weights="adapter_model.bin")
    assert check_adapter(bin_only, cfg) == bin_only


def test_check_adapter_missing_dir(tmp_path):
    with pytest.raises(ModelError, match="nothere: no such directory"):
        check_adapter(tmp_path / "nothere", lora_config())


def test_check_adapter_missing_config(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\0")
    with pytest.raises(ModelError, match="no adapter_config.json"):
        check_adapter(tmp_path, lora_config())


def test_check_adapter_missing_weights(tmp_path):
    path = write_adapter(tmp_path / "a", weights=None)
    with pytest.raises(ModelError, match="neither adapter_model.safetensors nor adapter_model.bin"):
        check_adapter(path, lora_config())


@pytest.mark.parametrize(
    "saved, wanted",
    [
        ({"r": 16}, {}),
        ({"alpha": 32}, {}),
        ({"targets": ("q_proj", "k_proj", "v_proj")}, {}),
        ({}, {"target_modules": ("q_proj",)}),
    ],
)
def test_check_adapter_mismatch(tmp_path, saved, wanted):
    path = write_adapter(tmp_path / "a", **saved)
    with pytest.raises(ModelError, match="adapter_config.json has .* but the run asks for"):
        check_adapter(path, lora_config(**wanted))


def test_check_adapter_refuses_empty_or_unreadable_weights(tmp_path):
    cfg = lora_config()
    with pytest.raises(ModelError, match="holds 0 tensor.*saved empty"):
        check_adapter(write_adapter(tmp_path / "a", state={}), cfg)
    with pytest.raises(ModelError, match="saved empty"):  # the old alpaca-lora symptom, .bin
        check_adapter(write_adapter(tmp_path / "b", weights="adapter_model.bin", state={}), cfg)
    bad = write_adapter(tmp_path / "c")
    (bad / "adapter_model.safetensors").write_bytes(b"\0")
    with pytest.raises(ModelError, match="cannot read adapter_model.safetensors"):
        check_adapter(bad, cfg)
    prefix = write_adapter(tmp_path / "d")
    cfg_json = json.loads((prefix / "adapter_config.json").read_text())
    (prefix / "adapter_config.json").write_text(json.dumps({**cfg_json, "peft_type": "PREFIX_TUNING"}))
    with pytest.raises(ModelError, match="PREFIX_TUNING adapter, not LoRA"):
        check_adapter(prefix, cfg)


def test_check_adapter_mismatch_message_names_both_and_the_fix(tmp_path):
    path = write_adapter(tmp_path / "a", r=16, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    with pytest.raises(ModelError) as err:
        check_adapter(path, lora_config())
    msg = str(err.value)
    assert "has r=16, lora_alpha=16, target_modules=[k_proj, o_proj, q_proj, v_proj]" in msg
    assert "the run asks for r=8, lora_alpha=16, target_modules=[q_proj, v_proj]" in msg
    assert "--lora_r 16 --lora_alpha 16 --lora_target_modules k_proj o_proj q_proj v_proj" in msg
    assert "LORA_R=16 LORA_ALPHA=16 LORA_TARGET_MODULES=k_proj,o_proj,q_proj,v_proj" in msg


@pytest.mark.parametrize("given", [["q_proj", "v_proj"], ["q_proj,v_proj"], ["[q_proj,v_proj]"], ["['q_proj', 'v_proj']"],
                                   "q_proj,v_proj"])
def test_parse_modules(given):
    assert llm.parse_modules(given) == ["q_proj", "v_proj"]


def test_lora_wrapping_emits_no_future_warning(tmp_path):
    """Wrapping a model in LoRA (fresh, then loaded from the saved adapter for training and for
    generation) passes no FutureWarning of peft's own code on to the user."""
    import warnings

    import transformers

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                   max_position_embeddings=32, pad_token_id=0)
    config = lora_config(4, 8, 0.0, ["q_proj", "v_proj"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm.add_lora(transformers.LlamaForCausalLM(cfg), config, None).save_pretrained(tmp_path)
        llm.add_lora(transformers.LlamaForCausalLM(cfg), config, tmp_path)
        llm.load_adapter(transformers.LlamaForCausalLM(cfg), tmp_path)  # generation's path
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
