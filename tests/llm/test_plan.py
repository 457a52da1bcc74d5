"""The plan of the LLM stages (--dry_run): parameter counts from config.json alone, estimates that
respond to the settings, nothing loaded."""

from __future__ import annotations

import json

import pytest

from dealrec.llm import plan as plan_mod

# LLaMA-7B's configuration (decapoda-research/llama-7b-hf layout): 6.74 B parameters.
LLAMA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False}


@pytest.fixture
def llama7b(tmp_path):
    folder = tmp_path / "llama-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_7B))
    return str(folder)  # no weights: the plan must not need them


def test_parameter_count_from_the_configuration(llama7b):
    shape = plan_mod.model_shape(llama7b)
    assert shape.n_params == 6_738_415_616
    assert shape.lora_params == 8 * 32 * 2 * (4096 + 4096)  # r 8 on q_proj and v_proj of 32 layers
    assert shape.kv_dim == 4096 and shape.n_layers == 32


def test_estimates_follow_the_settings(llama7b):
    shape = plan_mod.model_shape(llama7b)
    full = {p.stage: p for p in plan_mod.plan(shape, "0")}
    q4 = {p.stage: p for p in plan_mod.plan(shape, "0", quantization="4bit")}
    ckpt = {p.stage: p for p in plan_mod.plan(shape, "0", gradient_checkpointing=True)}
    lora = "LoRA fine-tuning"
    assert full[lora].device == "cuda:0" and "bf16" in full[lora].precision
    assert full[lora].memory_gib > 6.738e9 * 2 / 2**30  # at least the bf16 weights
    assert q4[lora].memory_gib < ckpt[lora].memory_gib < full[lora].memory_gib
    assert "gradient checkpointing on" in q4[lora].note
    assert full["effort (prune)"].precision.startswith("bf16")  # the effort stage never quantizes
    with pytest.raises(ValueError, match="--quantization 4bit needs a GPU"):
        plan_mod.plan(shape, "cpu", quantization="4bit")


def test_command_prints_the_plan(llama7b, capsys):
    assert plan_mod.main(["--base_model", llama7b, "--gpu_id", "0"]) == 0
    out = capsys.readouterr().out
    assert "6,738,415,616" in out and "LoRA fine-tuning" in out and "Nothing was loaded" in out
    assert plan_mod.main(["--base_model", llama7b + "-missing"]) == 2
