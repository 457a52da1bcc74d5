"""The plan of each LLM stage for a base model, without loading its weights (``--dry_run``).

    python -m dealrec.llm.plan --base_model /models/llama-7b --gpu_id 0 [--quantization 4bit]

For a model folder (or the embedded default) it prints, per stage that touches the LLM — effort
scores (Eq. 12), LoRA fine-tuning, beam-search generation, grounding — where it runs, in which
precision, the parameter count (from ``config.json``: the model is built on the ``meta`` device,
no weight is read) and an *estimate* of the memory it needs. The estimates count the weights,
the LoRA optimiser state, the activations kept for the backward pass and the KV cache from the
model's shapes; allocator overhead, CUDA context (~0.5–1 GiB) and fragmentation come on top, so
treat them as a lower bound until measured.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

from dealrec.core.hardware import cpu_name, cpu_precision
from dealrec.llm.model import LORA_R, LORA_TARGET_MODULES, ModelError, resolve_base_model

GIB = 1024**3
BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "8bit": 1.0, "4bit": 0.5}
# Activation bytes kept per token and hidden unit of one decoder layer for the backward pass
# (attention inputs, MLP intermediates, norms: about 16 tensors of the hidden size at the compute
# dtype); with checkpointing only each layer's input is kept and one layer is recomputed at a time.
ACTIVATION_TENSORS = 16


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need from ``config.json`` and the parameter count."""

    n_params: int
    n_layers: int
    hidden: int
    kv_dim: int  # key/value width per layer (kv heads × head dim)
    vocab: int
    lora_params: int  # LoRA parameters of rank LORA_R on LORA_TARGET_MODULES


@dataclass(frozen=True)
class StagePlan:
    stage: str
    device: str
    precision: str
    memory_gib: float
    note: str


def model_shape(base_model: str | None, lora_r: int = LORA_R,
                targets: tuple[str, ...] = LORA_TARGET_MODULES) -> ModelShape:
    """The shape of ``base_model`` from its ``config.json``, the model built on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_base_model(base_model)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    lora = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets and isinstance(module, torch.nn.Linear):
            lora += lora_r * (module.in_features + module.out_features)
    heads = getattr(config, "num_attention_heads", 1)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return ModelShape(n_params, config.num_hidden_layers, config.hidden_size, kv_heads * head_dim,
                      config.vocab_size, lora)


def _weights(shape: ModelShape, precision: str) -> float:
    return shape.n_params * BYTES[precision]


def _activations(shape: ModelShape, tokens: int, precision: str, checkpointing: bool) -> float:
    per_layer = tokens * shape.hidden * BYTES[precision]
    kept = shape.n_layers * per_layer * (1 if checkpointing else ACTIVATION_TENSORS)
    return kept + (ACTIVATION_TENSORS * per_layer if checkpointing else 0.0)


def plan(shape: ModelShape, gpu_id: str = "cpu", cutoff_len: int = 512, micro_batch_size: int = 4,
         quantization: str | None = None, gradient_checkpointing: bool = False, num_beams: int = 4,
         gen_batch_size: int = 8, max_new_tokens: int = 64, effort_batch_tokens: int = 4096) -> list[StagePlan]:
    """The stages' plans for a model of ``shape`` on ``gpu_id`` with the given sizes."""
    on_gpu = str(gpu_id).lower() not in {"cpu", "-1", ""}  # planned for a GPU even where none is visible
    if quantization and not on_gpu:
        raise ValueError(f"--quantization {quantization} needs a GPU (bitsandbytes); give --gpu_id")
    gpu_dtype = "fp16" if on_gpu and torch.cuda.is_available() and not torch.cuda.is_bf16_supported() else "bf16"
    train_prec = gpu_dtype if on_gpu else cpu_precision("auto", "cpu", "--train_precision", auto="bf16", warn=False)
    weight_prec = quantization or (gpu_dtype if on_gpu else "fp32")
    compute = train_prec if on_gpu or train_prec == "bf16" else "fp32"
    checkpointing = gradient_checkpointing or bool(quantization)
    lora_state = shape.lora_params * 4 * 4  # fp32 weights, gradients and two Adam moments
    tokens = micro_batch_size * cutoff_len
    logits = micro_batch_size * cutoff_len * shape.vocab * 4  # fp32 logits of every position (upper bound)
    train = _weights(shape, weight_prec) + lora_state + _activations(shape, tokens, compute, checkpointing) + logits
    frozen = gpu_dtype if on_gpu else "fp32"  # the effort stage never quantizes: its gradients must be exact
    effort = (_weights(shape, frozen) + _activations(shape, effort_batch_tokens, compute, False)
              + effort_batch_tokens * shape.vocab * 4)
    seq = cutoff_len + max_new_tokens
    kv = 2 * shape.n_layers * shape.kv_dim * seq * gen_batch_size * num_beams * BYTES[compute]
    generate = _weights(shape, weight_prec) + kv + gen_batch_size * num_beams * shape.vocab * 4
    ground = _weights(shape, "fp32" if not on_gpu else gpu_dtype) + _activations(shape, 64 * 64, compute, False)
    where = f"cuda:{gpu_id}" if on_gpu else "cpu"
    ckpt = "gradient checkpointing on" if checkpointing else "gradient checkpointing off (--gradient_checkpointing)"
    return [
        StagePlan("effort (prune)", where, f"{frozen} weights, {compute} compute", effort / GIB,
                  f"one backward per prompt batch of ≤ {effort_batch_tokens} tokens"),
        StagePlan("LoRA fine-tuning", where, f"{weight_prec} weights, {compute} compute", train / GIB,
                  f"micro batch {micro_batch_size} × {cutoff_len} tokens, {shape.lora_params:,} LoRA parameters, {ckpt}"),
        StagePlan("generation", where, f"{weight_prec} weights", generate / GIB,
                  f"batch {gen_batch_size} × {num_beams} beams, KV cache for {seq} tokens"),
        StagePlan("grounding", where, "fp32" if not on_gpu else gpu_dtype, ground / GIB,
                  "last-token states of item titles and generations, batches of 64 × 64 tokens"),
    ]


def render(base_model: str | None, shape: ModelShape, plans: list[StagePlan]) -> str:
    machine = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{cpu_name()} (no GPU visible)"
    lines = [f"model: {resolve_base_model(base_model)}",
             f"parameters: {shape.n_params:,} ({shape.n_params / 1e9:.2f} B); {shape.n_layers} layers, hidden "
             f"{shape.hidden}, vocabulary {shape.vocab:,}; machine: {machine}",
             f"{'stage':<18s} {'device':<8s} {'precision':<28s} {'memory (est.)':>14s}  what"]
    for p in plans:
        lines.append(f"{p.stage:<18s} {p.device:<8s} {p.precision:<28s} {p.memory_gib:>10.1f} GiB  {p.note}")
    lines.append("Estimates from the model's shapes (weights, LoRA state, activations, KV cache); runtime overhead "
                 "comes on top. Nothing was loaded.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base_model", default=None, help="a local Hugging Face model folder (default: the embedded model)")
    p.add_argument("--gpu_id", default="cpu")
    p.add_argument("--cutoff_len", type=int, default=512)
    p.add_argument("--micro_batch_size", type=int, default=4)
    p.add_argument("--quantization", choices=("8bit", "4bit"), default=None)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--num_beams", type=int, default=4)
    p.add_argument("--gen_batch_size", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=64)
    a = p.parse_args(argv)
    try:
        shape = model_shape(a.base_model)
        plans = plan(shape, a.gpu_id, a.cutoff_len, a.micro_batch_size, a.quantization,
                     a.gradient_checkpointing, a.num_beams, a.gen_batch_size, a.max_new_tokens)
    except (ModelError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(a.base_model, shape, plans))
    return 0


if __name__ == "__main__":
    sys.exit(main())
