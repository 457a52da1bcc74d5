"""Effort scores (paper Eq. 12) with the shared prompt prefix computed once, and the frozen
layers below the target layer optionally in bf16 or int8.

Every full-training prompt starts with the same tokens (preamble, instruction, input phrase).
With ``C`` = (longest common token prefix of the prompts) − 1:

- the first ``C`` tokens go through the model once; their keys/values (every layer) are kept
  and each sample runs only its suffix (tokens ``C..``) on top of them;
- the loss terms of positions ``0..C-1`` predict common tokens ``1..C``: their gradient
  ``G_c = Σ_t g_t x_tᵀ`` is the same for every sample and computed once;
- the suffix's losses also reach φ through the target layer's *prefix* positions (the
  suffix attends to their values): for ``v_proj`` the last layer's cached prefix values are
  made a leaf of the graph, so ``∂L/∂v`` at the prefix positions comes out of the same backward
  pass; ``q_proj``/``o_proj``/MLP outputs at prefix positions only reach prefix losses (already
  in ``G_c``); ``k_proj`` is not supported here (the exact batched path is used).

So ``∂L(s)/∂φ = (G_c + Σ_{t ∈ prefix} g^s_t x_tᵀ + Σ_{t ∈ suffix} g^s_t x_tᵀ) / (T_s − 1)``, the
same quantity as :meth:`EffortModel.batch_norms` (exact up to float summation order). Suffixes
are right-padded, so no real token ever attends to padding.

Precision of the frozen layers below the target (the target layer and the loss head stay fp32):
``bf16`` runs them under ``torch.autocast`` (worth it only where the CPU multiplies bf16
natively: detected at run time), ``int8`` replaces their linear layers by dynamically
quantised ones (``torch.ao.quantization.quantize_dynamic``, CPU only, LoRA merged first).
``bf16_head`` is ``bf16`` plus the loss head's matmul in bf16 (logits, softmax and the
cross-entropy in fp32): opt-in, its agreement with fp32 is in docs/performance.md.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from dealrec.core.hardware import PrecisionError, cpu_precision
from dealrec.core.token_rows import pad_batch
from dealrec.llm.model import ModelError, cache_kwarg, output_cache
from dealrec.scores.grad_hook import frobenius_sq, weight_grads

EFFORT_PRECISIONS = ("fp32", "bf16", "bf16_head", "int8", "auto")
BF16_MODES = ("bf16", "bf16_head")  # bf16 autocast below the target; bf16_head: the loss head's matmul too
PREFIX_MODULES = ("v_proj", "q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Agreement of each mode with the fp32 path, measured by bench/bench_effort.py on real Games
# prompts (see docs/performance.md); ``auto`` picks the fastest mode that met the aim.
AGREEMENT_AIM = 0.99  # Spearman


def resolve_precision(requested: str, device: torch.device | str, quantization: str | None = None,
                      force: bool = False) -> str:
    """The precision that will run: ``auto`` = bf16 on a CPU with native bf16, else fp32.

    bf16 asked on a CPU without native bf16 warns and falls back to fp32 (``force``: an error);
    int8 is refused on a GPU and with a quantized base model (it quantizes the fp32 weights).
    """
    device = torch.device(device)
    if requested not in EFFORT_PRECISIONS:
        raise ValueError(f"--effort_precision must be one of {EFFORT_PRECISIONS}, got {requested!r}")
    if requested == "int8":
        if device.type != "cpu":
            raise ModelError(f"--effort_precision int8 is a CPU mode (dynamic int8 matmuls); on {device} use "
                             "--quantization 8bit for 8-bit base weights, or --effort_precision fp32/bf16")
        if quantization:
            raise ModelError(f"--effort_precision int8 needs fp32 base weights, but --quantization {quantization} "
                             "is set: drop one of the two")
        return "int8"
    if requested == "auto" and quantization:
        return "fp32"  # a quantized base model keeps its own weights
    if requested == "bf16_head":  # as bf16 (native bf16 only, else fp32), plus the loss head
        return "bf16_head" if resolve_precision("bf16", device, quantization, force) == "bf16" else "fp32"
    try:  # fp32 | bf16 | auto (= bf16 where native); on a GPU the model's own dtype
        return cpu_precision(requested, device, "--effort_precision", auto="bf16",
                             force="--force_precision" if force else None)
    except PrecisionError as e:
        raise ModelError(str(e)) from None


def _unwrap_lora(module: torch.nn.Module) -> None:
    """Replace peft LoRA linears below ``module`` by their base linear with the adapter merged."""
    for name, child in list(module.named_children()):
        if hasattr(child, "get_base_layer") and hasattr(child, "merge"):
            child.merge()
            setattr(module, name, child.get_base_layer())
        else:
            _unwrap_lora(child)


def quantize_lower_layers(layers: Any, target_index: int) -> None:
    """int8 dynamic quantization (per output channel: per-tensor scales lose too much on LLM
    weights with outliers) of every decoder layer below the target, in place."""
    n = len(layers)
    target_index %= n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice about moving to torchao
        for i in range(target_index):
            _unwrap_lora(layers[i])
            torch.ao.quantization.quantize_dynamic(
                layers[i], {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, inplace=True
            )


@contextmanager
def lower_layers_in_bf16(layers: Any, target_index: int, device: torch.device):
    """bf16 autocast for the decoder layers below the target; the target layer and everything
    after it (final norm, loss head) in fp32."""
    target = layers[target_index]
    state: dict[str, Any] = {}

    def pre(_mod, args, kwargs):
        ctx = torch.autocast(device.type, enabled=False)
        ctx.__enter__()
        state["ctx"] = ctx
        if args:
            args = (args[0].float(), *args[1:])
        else:
            kwargs["hidden_states"] = kwargs["hidden_states"].float()
        return args, kwargs

    def post(_mod, _args, _kwargs, _out):
        state.pop("ctx").__exit__(None, None, None)

    h1 = target.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = target.register_forward_hook(post, with_kwargs=True)
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    finally:
        if "ctx" in state:  # an error inside the target layer
            state.pop("ctx").__exit__(None, None, None)
        h1.remove()
        h2.remove()


@dataclass
class Prefix:
    """What the shared prefix contributes: its cache, the target's inputs there, and G_c."""

    ids: list[int]  # the C cached tokens
    cache: Any  # KV cache of the C tokens, batch 1, detached
    x: torch.Tensor  # [C, in] inputs of the hooked linear at the prefix positions
    g_const: torch.Tensor  # [out, in] gradient of the sum of the prefix's own loss terms


class PrefixEffort:
    """Per-sample ‖∂L(s)/∂φ‖₂ for many prompts sharing a prefix (see the module docstring)."""

    def __init__(self, em: Any) -> None:  # em: EffortModel
        self.em = em
        self.cache_kwarg = cache_kwarg(em.model)
        self.layer_index = em.cfg.layer % len(em.layers)
        self.scaling = 1.0
        if em.cfg.target == "lora_B":  # v = base(x) + scaling · lora_B(lora_A(x))
            mod = em.target_module
            self.scaling = float(mod.scaling[next(iter(mod.lora_B.keys()))])

    @staticmethod
    def supports(cfg: Any, n_layers: int) -> bool:
        return cfg.module in PREFIX_MODULES and cfg.layer % n_layers == n_layers - 1

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, cache: Any = None) -> Any:
        em = self.em
        kw = {self.cache_kwarg: cache} if cache is not None else {}
        with em.precision_context():
            return em.model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True,
                            output_hidden_states=True, logits_to_keep=1, **kw)

    def prefix(self, ids: list[int]) -> Prefix:
        """Run the C common tokens once (labels: tokens 1..C, all common)."""
        em = self.em
        c = len(ids) - 1
        t = torch.tensor([ids], device=em.device)
        with em.capture() as hook:
            with torch.enable_grad():
                out = self._forward(t[:, :c], torch.ones(1, c, dtype=torch.long, device=em.device),
                                    torch.arange(c, device=em.device)[None])
                hidden = out.hidden_states[-1][0]
                _, dh = em.head_grad(hidden, t[0, 1:], torch.ones(c, device=em.device))  # summed loss
                (g,) = torch.autograd.grad(hidden, hook.out, grad_outputs=dh.to(hidden.dtype))
        x = hook.take()[0][0].float()
        cache = output_cache(out)
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.detach(), layer.values.detach()
        return Prefix(ids[:c], cache, x, g[0].float().T @ x)

    def batch_norms(self, pre: Prefix, suffixes: list[list[int]]) -> torch.Tensor:
        """Norms for prompts ``pre.ids + suffix`` (each suffix ≥ 1 token), one backward pass."""
        em = self.em
        b, c = len(suffixes), len(pre.ids)
        ids, smask = pad_batch(suffixes, em.tokenizer.pad_token_id, "right", em.device)
        width = ids.shape[1]
        cache = copy.deepcopy(pre.cache)
        cache.batch_repeat_interleave(b)
        leaf = None
        if em.cfg.module == "v_proj":
            last = cache.layers[self.layer_index]
            leaf = last.values.detach().clone().requires_grad_(True)
            last.values = leaf
        mask = torch.cat([torch.ones(b, c, dtype=torch.long, device=em.device), smask], 1)
        position_ids = (c + torch.arange(width, device=em.device))[None].expand(b, -1)
        with em.capture() as hook:
            with torch.enable_grad():
                hidden = self._forward(ids, mask, position_ids, cache).hidden_states[-1]
                real = (smask[:, 1:] > 0) & (smask[:, :-1] > 0)
                sel = hidden[:, :-1][real]
                _, dh = em.head_grad(sel, ids[:, 1:][real], torch.ones(len(sel), device=em.device))  # summed
                wrt = [hook.out] + ([leaf] if leaf is not None else [])
                grads = torch.autograd.grad(sel, wrt, grad_outputs=dh.to(sel.dtype))
        x = hook.take()[0].float()
        keep = smask[..., None].bool()
        g = torch.where(keep, grads[0].float(), 0.0)
        x = torch.where(keep, x, 0.0)
        if leaf is not None:  # ∂L/∂v at the prefix positions: [b, kv_heads, C, d] -> [b, C, out]
            gp = grads[1].float().transpose(1, 2).reshape(b, c, -1) * self.scaling
            g = torch.cat([gp, g], 1)
            x = torch.cat([pre.x.expand(b, -1, -1), x], 1)
        n_tok = (c + smask.sum(1) - 1).float()
        gc = pre.g_const
        if em.cfg.target == "lora_B":
            per = weight_grads(g, x) + gc
            return per.flatten(1).norm(dim=1) / n_tok
        # base: ‖G_c + Σ_t g_t x_tᵀ‖²_F, materialising the per-sample matrices only when cheaper
        return frobenius_sq(g, x, gc).clamp(min=0).sqrt() / n_tok
