"""Learning effort of the LLM for each training sample (paper Eq. 12).

    effort(s) = ‖∂L(s)/∂φ‖₂

L(s) is the mean next-token cross-entropy over the real tokens of s's full prompt (labels =
inputs, as the original trains on inputs) and φ the declared parameter: by default the
``lora_B`` of ``v_proj`` in the last decoder layer (the original's choice), with the LoRA
recipe of :mod:`dealrec.llm.model` (r 8, α 16) and no dropout (the score is a deterministic gradient
norm). ``target="base"`` takes the frozen ``v_proj`` weight of the same layer instead:
the gradient that a fresh random LoRA ``A`` only projects (seed-free).

Batched per-sample gradient norms from ONE backward pass per padded batch: a forward hook on
the target linear layer keeps its input x and makes its output the only thing that requires
grad (so no autograd graph is built for the frozen network below it); the backward pass gives
the output gradient g, and for a linear layer the per-sample weight gradient is Σ_t g_t x_tᵀ:

- ``lora_B`` (r columns): materialised per sample as ``einsum('bto,btr->bor')`` (small);
- ``base``: ‖Σ_t g_t x_tᵀ‖²_F, as Σ_{t,t'} (g_t·g_t')(x_t·x_t') for short prompts and from the
  materialised matrices for long ones (:func:`.grad_hook.frobenius_sq`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dealrec.core import faults
from dealrec.core.dist import dist_info
from dealrec.core.files import atomic_path, load_tensor, read_json, write_json
from dealrec.core.logs import LOG, Timer
from dealrec.core.token_rows import common_prefix_len, pad_batch
from dealrec.data.prompts import tokenize_prompt
from dealrec.llm.model import (
    LORA_ALPHA,
    LORA_R,
    LORA_TARGET_MODULES,
    add_lora,
    causal_lm,
    load_base_model,
    load_tokenizer,
    lora_config,
)
from dealrec.scores.effort_prefix import (
    BF16_MODES,
    PrefixEffort,
    lower_layers_in_bf16,
    quantize_lower_layers,
    resolve_precision,
)
from dealrec.scores.grad_hook import OutputGrad, frobenius_sq, weight_grads
from dealrec.scores.loss_head import head_grad, head_grad_autograd

EFFORT_TARGETS = ("lora_B", "base")


@dataclass
class EffortConfig:
    base_model: str | None = None
    target: str = "lora_B"
    module: str = "v_proj"
    layer: int = -1  # decoder layer index (-1 = last)
    lora_r: int = LORA_R
    lora_alpha: int = LORA_ALPHA
    lora_target_modules: tuple[str, ...] = LORA_TARGET_MODULES
    resume_from_checkpoint: str | None = None
    cutoff_len: int = 512
    max_batch_tokens: int = 4096
    max_batch_size: int = 16
    seed: int = 42  # LoRA initialisation
    quantization: str | None = None
    chunk_size: int = 512  # users per resumable chunk
    precision: str = "fp32"  # frozen layers below the target: fp32 | bf16 | bf16_head | int8 | auto (effort_prefix)
    force_precision: bool = False  # bf16 on a CPU without native bf16: error instead of fp32
    prefix_reuse: bool = True  # compute the prompts' common prefix once (exact; effort_prefix)

    def validate(self, device: torch.device | str = "cpu") -> None:
        if self.target not in EFFORT_TARGETS:
            raise ValueError(f"--effort_target must be one of {EFFORT_TARGETS}, got {self.target!r}")
        if self.target == "lora_B" and self.module not in self.lora_target_modules:
            raise ValueError(
                f"effort on lora_B of {self.module!r} needs it among --lora_target_modules {self.lora_target_modules}"
            )
        resolve_precision(self.precision, device, self.quantization, self.force_precision)

    def resolved_precision(self, device: torch.device | str = "cpu") -> str:
        """The precision that runs on ``device`` (``auto`` resolved; recorded in manifests)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return resolve_precision(self.precision, device, self.quantization, self.force_precision)


def _decoder_layers(model: Any) -> Any:
    base = causal_lm(model)
    inner = getattr(base, "model", base)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers in {type(base).__name__}; expected model.model.layers")
    return layers


def target_module(model: Any, cfg: EffortConfig) -> torch.nn.Module:
    """The module named ``cfg.module`` in decoder layer ``cfg.layer`` (a LoRA wrapper or a linear)."""
    layer = _decoder_layers(model)[cfg.layer]
    found = [m for n, m in layer.named_modules() if n.split(".")[-1] == cfg.module]
    if not found:
        raise ValueError(f"no module named {cfg.module!r} in decoder layer {cfg.layer}")
    return found[0]


def target_linear(model: Any, cfg: EffortConfig) -> torch.nn.Linear:
    """The linear layer whose weight is φ (``lora_B`` of the module, or its frozen base weight)."""
    mod = target_module(model, cfg)
    if cfg.target == "lora_B":
        if not hasattr(mod, "lora_B"):
            raise ValueError(f"{cfg.module} has no LoRA adapter; add it to --lora_target_modules")
        return mod.lora_B[next(iter(mod.lora_B.keys()))]
    return getattr(mod, "base_layer", mod)


@dataclass
class EffortModel:
    model: Any
    tokenizer: Any
    linear: torch.nn.Linear
    cfg: EffortConfig
    device: torch.device
    precision: str = "fp32"  # what runs below the target layer, and bf16_head (cfg.precision resolved)
    fused_head: bool = True  # the loss head's gradient without autograd (:mod:`.loss_head`)
    head_bf16: torch.Tensor | None = field(default=None, repr=False)  # bf16_head: the head weight, cast once

    @property
    def layers(self) -> Any:
        return _decoder_layers(self.model)

    @property
    def target_module(self) -> torch.nn.Module:
        return target_module(self.model, self.cfg)

    def precision_context(self) -> Any:
        """Autocast for the frozen layers below the target (bf16 modes); the rest stays fp32."""
        if self.precision in BF16_MODES:
            return lower_layers_in_bf16(self.layers, self.cfg.layer % len(self.layers), self.device)
        return contextlib.nullcontext()

    @classmethod
    def load(cls, cfg: EffortConfig, device: torch.device | str = "cpu") -> EffortModel:
        device = torch.device(device)
        cfg.validate(device)
        precision = resolve_precision(cfg.precision, device, cfg.quantization, cfg.force_precision)
        tok = load_tokenizer(cfg.base_model, padding_side="right")
        model = load_base_model(cfg.base_model, device=device, quantization=cfg.quantization)
        if cfg.target == "lora_B" or cfg.resume_from_checkpoint:
            torch.manual_seed(cfg.seed)  # the fresh LoRA A initialisation
            lcfg = lora_config(cfg.lora_r, cfg.lora_alpha, 0.0, cfg.lora_target_modules)
            model = add_lora(model, lcfg, cfg.resume_from_checkpoint, trainable=False)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if precision == "int8":
            quantize_lower_layers(_decoder_layers(model), cfg.layer)
        LOG.info("effort: frozen layers below the target in %s (asked: %s)", precision, cfg.precision)
        return cls(model, tok, target_linear(model, cfg), cfg, device, precision)

    def _lm_head(self) -> torch.nn.Module:
        return causal_lm(self.model).get_output_embeddings()

    def head_grad(self, hidden: torch.Tensor, targets: torch.Tensor,
                  token_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position cross-entropy and ∂(Σ_t w_t ce_t)/∂hidden of the loss head (fp32;
        ``bf16_head``: its two products on a bf16 copy of the weight), see :mod:`.loss_head`.
        A head that is not a plain linear layer (or ``fused_head`` False: the reference, and the
        benches' old path) goes through autograd instead."""
        head = self._lm_head()
        if not (self.fused_head and isinstance(head, torch.nn.Linear)):
            return head_grad_autograd(head, hidden, targets, token_weight, bf16=self.precision == "bf16_head")
        w16 = None
        if self.precision == "bf16_head":
            if self.head_bf16 is None:
                self.head_bf16 = head.weight.detach().to(torch.bfloat16)
            w16 = self.head_bf16
        return head_grad(hidden, head.weight, targets, token_weight, head.bias, w16)

    def capture(self) -> OutputGrad:
        """The per-sample-gradient hook on the target linear layer (:mod:`.grad_hook`)."""
        return OutputGrad(self.linear)

    def batch_norms(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-sample ‖∂L(s)/∂φ‖₂ for a padded batch, from one backward pass."""
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # correct under left padding
        with self.capture() as hook:
            with torch.enable_grad():
                with self.precision_context():
                    hidden = self.model(
                        input_ids=input_ids,
                        attention_mask=attention_mask,
                        position_ids=position_ids,
                        use_cache=False,
                        output_hidden_states=True,
                        logits_to_keep=1,
                    ).hidden_states[-1]
                real = (attention_mask[:, 1:] > 0) & (attention_mask[:, :-1] > 0)
                rows = real.nonzero(as_tuple=True)[0]
                sel = hidden[:, :-1][real]  # real positions only
                n_tok = real.sum(1).clamp(min=1)
                # L(s) = mean over s's tokens: each position weighs 1 / T_s
                _, dh = self.head_grad(sel, input_ids[:, 1:][real], 1.0 / n_tok[rows])
                (g,) = torch.autograd.grad(sel, hook.out, grad_outputs=dh.to(sel.dtype))
        x = hook.take()[0].float()
        mask = attention_mask[..., None].bool()
        g = torch.where(mask, g.float(), 0.0)
        x = torch.where(mask, x, 0.0)
        if self.cfg.target == "lora_B":
            return weight_grads(g, x).flatten(1).norm(dim=1)
        return frobenius_sq(g, x).clamp(min=0).sqrt()  # base: [out, in] per sample, materialised only if cheaper

    def encode(self, examples: list[dict]) -> list[list[int]]:
        return [tokenize_prompt(self.tokenizer, ex, self.cfg.cutoff_len)["input_ids"] for ex in examples]

    def batches(self, token_ids: list[list[int]]) -> list[list[int]]:
        """Length-sorted batches under a token budget (limits padding)."""
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
        out, cur = [], []
        for i in order:
            longest = max(len(token_ids[i]), max((len(token_ids[j]) for j in cur), default=0))
            if cur and (len(cur) + 1 > self.cfg.max_batch_size or (len(cur) + 1) * longest > self.cfg.max_batch_tokens):
                out.append(cur)
                cur = []
            cur.append(i)
        if cur:
            out.append(cur)
        return out

    def pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_batch(rows, self.tokenizer.pad_token_id, self.tokenizer.padding_side, self.device)

    def norms(self, token_ids: list[list[int]], progress: bool = True, desc: str = "effort",
              bar: Any = None) -> torch.Tensor:
        """Per-sample norms: the shared-prefix path when ``cfg.prefix_reuse`` and the target allows
        it (exact, see :mod:`.effort_prefix`), else padded length-sorted batches. ``bar``: a tqdm
        bar advanced per batch (by samples)."""
        out = torch.zeros(len(token_ids))
        own = bar is None and progress
        if own:
            bar = tqdm(total=len(token_ids), desc=desc, unit="prompt", leave=False)
        fast = PrefixEffort(self) if self.cfg.prefix_reuse and PrefixEffort.supports(self.cfg, len(self.layers)) else None
        c = common_prefix_len(token_ids) - 1 if fast is not None else 0
        if c >= 1:
            pre = fast.prefix(token_ids[0][:c + 1])
            suffixes = [row[c:] for row in token_ids]
            for batch in self.batches(suffixes):
                out[torch.tensor(batch)] = fast.batch_norms(pre, [suffixes[i] for i in batch]).cpu()
                faults.step("effort")
                if bar is not None:
                    bar.update(len(batch))
        else:
            for batch in self.batches(token_ids):
                ids, mask = self.pad([token_ids[i] for i in batch])
                out[torch.tensor(batch)] = self.batch_norms(ids, mask).cpu()
                faults.step("effort")
                if bar is not None:
                    bar.update(len(batch))
        if own:
            bar.close()
        return out

    def norms_loop(self, token_ids: list[list[int]]) -> torch.Tensor:
        """Reference: one sample at a time, autograd on the real parameter (the original way)."""
        weight = self.linear.weight
        out = torch.zeros(len(token_ids))
        for i, row in enumerate(token_ids):
            weight.requires_grad_(True)
            try:
                ids = torch.tensor([row], device=self.device)
                logits = self.model(input_ids=ids, use_cache=False).logits
                loss = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
                (gw,) = torch.autograd.grad(loss, weight)
            finally:
                weight.requires_grad_(False)
            out[i] = gw.float().norm()
        return out


def effort_scores(
    em: EffortModel,
    examples: list[dict | None],
    chunk_dir: str | os.PathLike,
    key: str,
    progress: bool = True,
) -> torch.Tensor:
    """One score per example (0 for None = no prompt), resumable in chunks of users.

    Chunks are written atomically to ``chunk_dir``; a rerun with the same ``key`` skips the
    chunks already there. ``times_rank<r>.json`` there records each chunk's seconds and prompts
    (:func:`chunk_timing` sums them over runs that resume). Under ``torchrun``/``accelerate launch`` rank r takes chunks r, r+W, …
    and rank 0 assembles (all ranks return the full tensor after a barrier).
    """
    chunk_dir = Path(chunk_dir)
    chunk_dir.mkdir(parents=True, exist_ok=True)
    key_file = chunk_dir / "key.json"
    rank, world, _ = dist_info()
    if rank == 0:
        if key_file.exists() and read_json(key_file).get("key") != key:
            for f in [*chunk_dir.glob("chunk_*.pt"), *chunk_dir.glob("times_rank*.json")]:
                f.unlink()
        write_json(key_file, {"key": key})
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    size = em.cfg.chunk_size
    starts = list(range(0, len(examples), size))
    mine = [(ci, s) for ci, s in enumerate(starts) if ci % world == rank]
    todo = [s for _, s in mine if not (chunk_dir / f"chunk_{s:08d}.pt").exists()]
    n_todo = sum(sum(ex is not None for ex in examples[s:s + size]) for s in todo)
    bar = tqdm(total=n_todo, desc=f"effort (rank {rank})" if world > 1 else "effort", unit="prompt",
               disable=not progress, smoothing=0.05)
    times_file = chunk_dir / f"times_rank{rank}.json"  # per chunk: seconds and prompts, across resumed runs
    times = read_json(times_file) if times_file.is_file() else {}
    with Timer() as t:
        n_done = 0
        for start in todo:
            f = chunk_dir / f"chunk_{start:08d}.pt"
            part = examples[start:start + size]
            have = [i for i, ex in enumerate(part) if ex is not None]
            vals = torch.zeros(len(part))
            with Timer() as tc:
                if have:
                    ids = em.encode([part[i] for i in have])
                    vals[torch.tensor(have)] = em.norms(ids, progress=False, bar=bar)
            with atomic_path(f) as tmp:
                torch.save(vals, tmp)
            times[str(start)] = {"seconds": round(tc.seconds, 2), "prompts": len(have)}
            write_json(times_file, times)
            n_done += len(part)
    bar.close()
    if n_done:
        LOG.info("effort: %d samples in %.1f s (%.2f samples/s) on rank %d", n_done, t.seconds, n_done / t.seconds, rank)
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return torch.cat([load_tensor(chunk_dir / f"chunk_{s:08d}.pt") for s in starts]) if starts else torch.zeros(0)


def chunk_timing(chunk_dir: str | os.PathLike) -> dict[str, float]:
    """Compute seconds and prompts of the timed chunks in ``chunk_dir`` (all ranks, every resumed run
    that ran them; chunks made before timings were kept are not counted)."""
    seconds = prompts = chunks = 0.0
    for f in Path(chunk_dir).glob("times_rank*.json"):
        for v in read_json(f).values():
            seconds, prompts, chunks = seconds + v["seconds"], prompts + v["prompts"], chunks + 1
    return {"chunks_timed": int(chunks), "prompts_timed": int(prompts), "compute_seconds": round(seconds, 1)}
