"""LoRA fine-tuning of the LLM recommender (BIGRec's / alpaca-lora's ``finetune.py``, §4 of the paper).

The recipe of the original: the alpaca prompt with the target title as the response, loss on
the whole prompt (``train_on_inputs``), LoRA r=8/alpha=16 on ``q_proj``/``v_proj``, effective
batch 128, lr 1e-4 with 20 warm-up steps, 50 epochs, evaluation on the validation prompts with
early stopping (patience 5) and the best checkpoint kept, optionally warm-started from an
alpaca-lora adapter (``resume_from_checkpoint``).

Differences: fp32 on the CPU, bf16 (or fp16) on GPUs, 8/4-bit only on request
(``prepare_model_for_kbit_training``); batches are padded on the right (positions then start
at 0 for every example); an empty validation set switches evaluation and early stopping off.
The Hugging Face Trainer writes its checkpoints to ``output_dir/checkpoints``, and a killed or
interrupted run resumes from the last of them (:mod:`dealrec.llm.resume`); the final (best) adapter
is written to ``output_dir`` only at the end, the manifest ``output_dir/finetune_manifest.json``
last, so a folder with a manifest is complete.
"""

from __future__ import annotations

import inspect
import math
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dealrec.config import check_minimums
from dealrec.core import faults
from dealrec.core.cache import cache_key, file_hash
from dealrec.core.dist import dist_info
from dealrec.core.files import check_writable, read_json, read_json_checked, write_json
from dealrec.core.hardware import cpu_precision
from dealrec.core.locking import output_lock
from dealrec.core.logs import LOG, Timer
from dealrec.core.model_id import model_id
from dealrec.core.seeds import seed_everything
from dealrec.data.prompts import tokenize_prompt
from dealrec.llm.lm_loss import LOSS_POSITIONS, check_labelled_head, labelled_head
from dealrec.llm.model import (
    LORA_ALPHA,
    LORA_DROPOUT,
    LORA_R,
    LORA_TARGET_MODULES,
    add_lora,
    align_special_tokens,
    check_adapter,
    default_dtype,
    load_base_model,
    load_tokenizer,
    lora_config,
)
from dealrec.llm.resume import resume_point, seconds_at_save

MANIFEST = "finetune_manifest.json"
# Settings that change no number of the adapter (paths, logging; loss_positions: the same loss
# either way, the manifest says which ran; gradient checkpointing: recomputed activations, the
# same gradients): left out of its key, and of the study's run keys.
NOT_IN_KEY = ("train_file", "val_file", "output_dir", "logging_steps", "keep_checkpoints", "overwrite",
              "loss_positions", "gradient_checkpointing")
TRAIN_AUTO = "bf16"  # --train_precision auto on a CPU: bf16 autocast where native (loss within seed noise: docs/performance.md)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


@dataclass
class FinetuneConfig:
    """All parameters of one fine-tuning run (names as the original's command line)."""

    train_file: str = ""  # required (the original's --train_data_path)
    output_dir: str = ""  # required
    val_file: str | None = None
    base_model: str | None = None
    batch_size: int = 128  # effective batch = micro_batch_size * accumulation * world size
    micro_batch_size: int = 4
    num_epochs: float = 50
    learning_rate: float = 1e-4
    warmup_steps: int = 20
    cutoff_len: int = 512
    # Without val_file: that many training examples are held out for validation (0 = none);
    # with val_file: at most that many validation examples are used (None = all).
    val_set_size: int | None = None
    lora_r: int = LORA_R
    lora_alpha: int = LORA_ALPHA
    lora_dropout: float = LORA_DROPOUT
    lora_target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGET_MODULES))
    train_on_inputs: bool = True
    group_by_length: bool = True
    eval_steps: int = 100
    early_stopping_patience: int = 5
    resume_from_checkpoint: str | None = None  # warm-start LoRA adapter folder
    quantization: str | None = None  # None, '8bit' or '4bit' (GPU only; gradient checkpointing on)
    # recompute each layer's activations in the backward pass: less memory (a 7B model on one GPU),
    # about a third more time; always on with --quantization
    gradient_checkpointing: bool = False
    seed: int = 0
    sample: int = -1  # use a random `sample` training examples (-1: all), as the original
    max_steps: int = -1  # > 0 stops after that many optimiser steps (demos, tests)
    logging_steps: int = 8
    keep_checkpoints: bool = False
    overwrite: bool = False
    # CPU only: fp32, or bf16 autocast (a CPU with native bf16; LoRA weights and optimiser stay
    # fp32); auto = TRAIN_AUTO. On a GPU the model's dtype decides (bf16/fp16).
    precision: str = "fp32"
    # labelled: the LM head runs only where a label is set (the same loss, less time: dealrec.llm.lm_loss);
    # all: the model's own forward (every position's logits)
    loss_positions: str = "labelled"

    def check_settings(self) -> None:
        """The numbers alone (no file is read): each setting in its range, naming the argument."""
        check_minimums(self, (("batch_size", 1), ("micro_batch_size", 1), ("warmup_steps", 0), ("cutoff_len", 8),
                              ("lora_r", 1), ("lora_alpha", 1), ("eval_steps", 1), ("early_stopping_patience", 0),
                              ("logging_steps", 1)))
        if self.batch_size < self.micro_batch_size:
            raise ValueError(f"--batch_size {self.batch_size} must be ≥ --micro_batch_size {self.micro_batch_size}")
        if not self.num_epochs > 0:
            raise ValueError(f"--num_epochs must be > 0, got {self.num_epochs}")
        if not self.learning_rate >= 0:  # 0: a warm-started adapter kept exactly (tests)
            raise ValueError(f"--learning_rate must be ≥ 0, got {self.learning_rate}")
        if self.loss_positions not in LOSS_POSITIONS:
            raise ValueError(f"--loss_positions must be one of {', '.join(LOSS_POSITIONS)}, got {self.loss_positions!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        for name in ("sample", "max_steps"):
            if getattr(self, name) == 0 or getattr(self, name) < -1:
                raise ValueError(f"--{name} must be -1 (off) or ≥ 1, got {getattr(self, name)}")
        if self.val_set_size is not None and self.val_set_size < 0:
            raise ValueError(f"--val_set_size must be ≥ 0, got {self.val_set_size}")

    def validate(self) -> None:
        """Fail before the model is loaded or anything is written, naming the argument: the
        settings (:meth:`check_settings`), then the files and folders they name."""
        from dealrec.llm.model import check_model_folder

        self.check_settings()
        if self.quantization and not torch.cuda.is_available():
            raise ValueError(f"--quantization {self.quantization} needs a GPU (bitsandbytes); use none on the CPU")
        if Path(self.output_dir).is_file():
            raise ValueError(f"--output_dir {self.output_dir}: a file, not a folder; choose another path")
        if not _load_examples(self.train_file, "train"):
            raise ValueError(f"--train_data_path {self.train_file}: no training examples; write it with gen_fewshot.py")
        _load_examples(self.val_file, "val")
        check_model_folder(self.base_model)
        if self.resume_from_checkpoint:
            check_adapter(self.resume_from_checkpoint, lora_config(self.lora_r, self.lora_alpha, self.lora_dropout,
                                                                   self.lora_target_modules))

    def settings_key(self) -> dict[str, Any]:
        """The settings that determine the adapter besides its data: every field but
        :data:`NOT_IN_KEY`, the precision only where bf16 runs (what ran decides: an fp32 run's key
        has no precision field), the model by its identity."""
        d = asdict(self)
        for k in NOT_IN_KEY:
            d.pop(k)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if cpu_precision(self.precision, device, "--train_precision", auto=TRAIN_AUTO, warn=False) == "fp32":
            d.pop("precision")
        d["base_model"] = model_id(self.base_model)
        return d

    def key(self) -> dict[str, Any]:
        """The parameters that determine the adapter (for the manifest and reuse): the settings and
        the hashes of the training and validation files."""
        d = self.settings_key()
        d["train_hash"] = file_hash(self.train_file) if Path(self.train_file).is_file() else None
        d["val_hash"] = file_hash(self.val_file) if self.val_file and Path(self.val_file).is_file() else None
        return d


@dataclass
class FinetuneResult:
    output_dir: Path
    manifest: dict[str, Any]
    model: Any = None  # the trained PeftModel (None when the run was skipped as done)
    tokenizer: Any = None


def _load_examples(path: str | None, what: str) -> list[dict[str, Any]]:
    if not path:
        return []
    p = Path(path)
    rows = read_json_checked(p, f"--{what}_data_path", "write it with gen_fewshot.py (gen_fewshot.sh)")
    if not isinstance(rows, list):
        raise ValueError(f"--{what}_data_path {p}: expected a JSON list of {{instruction, input, output}} examples "
                         "(written by gen_fewshot.py)")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("instruction", "input", "output")):
            raise ValueError(f"--{what}_data_path {p}: example {i} lacks instruction/input/output text "
                             "(write the file with gen_fewshot.py)")
    return rows


class TokenizedDataset(torch.utils.data.Dataset):
    """Prompts tokenized once with :func:`dealrec.data.prompts.tokenize_prompt`."""

    def __init__(self, examples: list[dict[str, Any]], tokenizer: Any, cutoff_len: int, train_on_inputs: bool):
        self.items = [tokenize_prompt(tokenizer, ex, cutoff_len, train_on_inputs) for ex in examples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


def split_data(cfg: FinetuneConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and validation examples after ``sample`` and ``val_set_size``."""
    train = _load_examples(cfg.train_file, "train")
    if not train:
        raise ValueError(f"{cfg.train_file}: no training examples")
    val = _load_examples(cfg.val_file, "val")
    rng = random.Random(cfg.seed)
    if cfg.sample > -1:
        train = rng.sample(train, min(cfg.sample, len(train)))
    if not cfg.val_file and cfg.val_set_size:
        rng.shuffle(train)
        val, train = train[: cfg.val_set_size], train[cfg.val_set_size:]
    elif cfg.val_set_size is not None:
        val = val[: cfg.val_set_size]
    return train, val


def _sampling_kwargs(group_by_length: bool) -> dict[str, Any]:
    """transformers 5 renamed ``group_by_length`` to ``train_sampling_strategy``."""
    from transformers import TrainingArguments

    params = inspect.signature(TrainingArguments.__init__).parameters
    if "train_sampling_strategy" in params:
        return {"train_sampling_strategy": "group_by_length" if group_by_length else "random"}
    return {"group_by_length": group_by_length}


def is_done(cfg: FinetuneConfig) -> bool:
    m = Path(cfg.output_dir) / MANIFEST
    if not m.is_file() or not all((Path(cfg.output_dir) / f).is_file() for f in ADAPTER_FILES):
        return False
    try:
        return read_json(m).get("key") == cache_key(cfg.key())
    except (OSError, ValueError):
        return False


def _save_adapter(model: Any, output_dir: Path) -> None:
    """Write the adapter into a temporary folder, then move the files into ``output_dir``."""
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.", dir=output_dir))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        names = sorted(p.name for p in tmp.iterdir())
        # config last: a folder with adapter_config.json has its weights already
        for name in sorted(names, key=lambda n: n == "adapter_config.json"):
            os.replace(tmp / name, output_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fault_steps() -> Any:
    """A Trainer callback: one :func:`dealrec.core.faults.step` per optimiser step (kill-point tests)."""
    from transformers import TrainerCallback

    class FaultSteps(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            faults.step("finetune")

    return FaultSteps()


def train(cfg: FinetuneConfig) -> FinetuneResult:
    """Fine-tune LoRA on ``cfg.train_file``; returns the trained model (rank 0 saves it).

    Inputs are checked first (:meth:`FinetuneConfig.validate`), then ``output_dir`` must be writable
    and not in use by another run (a lock beside it); a run killed before its manifest was written
    resumes from its last checkpoint, or starts again before the first (the same adapter either way)."""
    cfg.validate()
    if int(os.environ.get("RANK", 0)) != 0:
        return _train(cfg)
    check_writable(cfg.output_dir, "--output_dir")
    with output_lock(cfg.output_dir, flag="--output_dir"):
        return _train(cfg)


@dataclass
class _RunSetup:
    """Process layout, device and precision of one fine-tuning run."""

    world: int  # processes (torchrun)
    local_rank: int
    grad_acc: int  # gradient accumulation steps that give the effective batch
    cuda: bool
    device: torch.device
    dtype: torch.dtype  # the dtype the base model is loaded in
    cpu_bf16: bool  # bf16 autocast on the CPU (--train_precision)


def _run_setup(cfg: FinetuneConfig) -> _RunSetup:
    """Split the effective batch over processes and accumulation steps, pick device and precision.

    The batch check needs the world size, so it runs here rather than in :meth:`FinetuneConfig.validate`;
    an effective batch that cannot be met exactly is a warning, not an error."""
    _, world, local_rank = dist_info()
    if cfg.micro_batch_size <= 0 or cfg.batch_size < cfg.micro_batch_size * world:
        raise ValueError(
            f"--batch_size {cfg.batch_size} must be at least --micro_batch_size {cfg.micro_batch_size} x "
            f"{world} process(es)"
        )
    grad_acc = max(1, cfg.batch_size // (cfg.micro_batch_size * world))
    if grad_acc * cfg.micro_batch_size * world != cfg.batch_size:
        LOG.warning(
            "effective batch is %d, not %d (micro %d x accumulation %d x %d processes)",
            grad_acc * cfg.micro_batch_size * world, cfg.batch_size, cfg.micro_batch_size, grad_acc, world,
        )
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    dtype = default_dtype(device)
    cpu_bf16 = cpu_precision(cfg.precision, device, "--train_precision", auto=TRAIN_AUTO) == "bf16"
    return _RunSetup(world, local_rank, grad_acc, cuda, device, dtype, cpu_bf16)


def _lora_model(cfg: FinetuneConfig, lcfg: Any, run: _RunSetup) -> tuple[Any, Any]:
    """The tokenizer (right padding: positions start at 0 for every example) and the base model with
    trainable LoRA layers, warm-started from ``resume_from_checkpoint`` when given.

    The warm-start adapter is checked against the LoRA settings before the base model is loaded;
    a quantized model is prepared for k-bit training (gradient checkpointing) first, and
    ``gradient_checkpointing`` turns checkpointing on for a full-precision model."""
    tokenizer = load_tokenizer(cfg.base_model, padding_side="right")
    if cfg.resume_from_checkpoint:
        check_adapter(cfg.resume_from_checkpoint, lcfg)
    model = load_base_model(cfg.base_model, run.device, dtype=run.dtype, quantization=cfg.quantization)
    align_special_tokens(model, tokenizer)
    if cfg.quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    elif cfg.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers ≥ 5.x's name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # the frozen embeddings' output must carry a gradient
    model = add_lora(model, lcfg, cfg.resume_from_checkpoint, trainable=True)
    model.config.use_cache = False  # training needs no KV cache
    if run.local_rank == 0:
        model.print_trainable_parameters()
    return model, tokenizer


def _datasets(cfg: FinetuneConfig, train_ex: list[dict[str, Any]], val_ex: list[dict[str, Any]], tokenizer: Any
              ) -> tuple[TokenizedDataset, TokenizedDataset | None, bool]:
    """The tokenized training and validation sets, and whether there is a validation set to evaluate on
    (without one, evaluation and early stopping are off)."""
    train_ds = TokenizedDataset(train_ex, tokenizer, cfg.cutoff_len, cfg.train_on_inputs)
    val_ds = TokenizedDataset(val_ex, tokenizer, cfg.cutoff_len, cfg.train_on_inputs) if val_ex else None
    has_eval = val_ds is not None and len(val_ds) > 0
    if not has_eval:
        LOG.warning("no validation examples: training without evaluation or early stopping")
    return train_ds, val_ds, has_eval


def _eval_steps(cfg: FinetuneConfig, run: _RunSetup, train_ds: TokenizedDataset, val_ds: TokenizedDataset | None
                ) -> int:
    """Log the training plan (examples, steps, device, precision) and return the evaluation interval,
    at most the total number of optimiser steps so that a short run is still evaluated."""
    steps_per_epoch = math.ceil(len(train_ds) / (cfg.micro_batch_size * run.grad_acc * run.world))
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.num_epochs)
    LOG.info(
        "training on %d examples (%d validation), %d step(s)/epoch, %d step(s), accumulation %d, %s %s",
        len(train_ds), len(val_ds or []), steps_per_epoch, total, run.grad_acc, run.device,
        "fp32 weights, bf16 autocast" if run.cpu_bf16 else run.dtype,
    )
    return max(1, min(cfg.eval_steps, total))


def _training_args(cfg: FinetuneConfig, run: _RunSetup, out: Path, has_eval: bool, eval_steps: int) -> Any:
    """The Trainer's arguments: the original's recipe, checkpoints under ``out/checkpoints``.

    With a validation set the Trainer evaluates and saves every ``eval_steps`` and keeps the best
    checkpoint by validation loss (loaded at the end); without one it neither evaluates nor saves."""
    from transformers import TrainingArguments

    eval_kwargs: dict[str, Any] = (
        {"eval_strategy": "steps", "eval_steps": eval_steps, "save_strategy": "steps", "save_steps": eval_steps,
         "load_best_model_at_end": True, "metric_for_best_model": "eval_loss", "greater_is_better": False,
         "save_total_limit": 1}
        if has_eval
        else {"eval_strategy": "no", "save_strategy": "no"}
    )
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=run.grad_acc,
        warmup_steps=cfg.warmup_steps,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        bf16=(run.cuda and run.dtype == torch.bfloat16) or run.cpu_bf16,
        fp16=run.cuda and run.dtype == torch.float16,
        use_cpu=not run.cuda,
        logging_steps=cfg.logging_steps,
        optim="adamw_torch",
        ddp_find_unused_parameters=False if run.world > 1 else None,
        report_to="none",
        seed=cfg.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        prediction_loss_only=True,  # evaluation needs the loss only (not every position's logits)
        **_sampling_kwargs(cfg.group_by_length),
        **eval_kwargs,
    )


def _callbacks(cfg: FinetuneConfig, has_eval: bool) -> list[Any]:
    """Early stopping on the validation loss (when there is a validation set) and the kill-point steps."""
    from transformers import EarlyStoppingCallback

    callbacks = [EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)] if has_eval else []
    callbacks.append(_fault_steps())
    return callbacks


def _use_labelled_head(cfg: FinetuneConfig, model: Any, collator: Any, train_ds: TokenizedDataset,
                       device: torch.device) -> bool:
    """Whether the LM head runs on the labelled positions only (``--loss_positions labelled``).

    The first training batch must give the model's own loss through the labelled head
    (:func:`dealrec.llm.lm_loss.check_labelled_head`); where it does not, the model's forward is used."""
    if cfg.loss_positions != "labelled":
        return False
    first = collator([train_ds[i] for i in range(min(cfg.micro_batch_size, len(train_ds)))])
    why = check_labelled_head(model, {k: v.to(device) for k, v in first.items()},
                              rtol=1e-4 if model.get_output_embeddings().weight.dtype == torch.float32 else 1e-2)
    if why is not None:
        LOG.warning("--loss_positions labelled: not for this model (%s); its own forward computes the loss", why)
        return False
    return True


def _manifest(cfg: FinetuneConfig, key: dict[str, Any], run: _RunSetup, trainer: Any, result: Any, seconds: float,
              n_train: int, n_val: int, labelled: bool) -> dict[str, Any]:
    """What the run was (key, configuration, data sizes, precision) and what it gave (steps, losses,
    best checkpoint, time, the Trainer's log)."""
    return {
        "key": cache_key(key),
        "config": asdict(cfg),
        "params": key,
        "n_train": n_train,
        "n_val": n_val,
        "world_size": run.world,
        "gradient_accumulation_steps": run.grad_acc,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "best_eval_loss": trainer.state.best_metric,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "seconds": round(seconds, 1),
        "precision_ran": "bf16 autocast" if run.cpu_bf16 else str(run.dtype).replace("torch.", ""),
        "loss_positions_ran": "labelled" if labelled else "all",
        "log_history": trainer.state.log_history,
    }


def _save_run(cfg: FinetuneConfig, out: Path, trainer: Any, model: Any, manifest: dict[str, Any],
              seconds: float) -> None:
    """On the main process: the adapter into ``out``, then the manifest (a folder with a manifest is
    complete), then the Trainer checkpoints are removed unless ``keep_checkpoints``."""
    if not trainer.is_world_process_zero():
        return
    out.mkdir(parents=True, exist_ok=True)
    _save_adapter(model, out)
    write_json(out / MANIFEST, manifest)
    if not cfg.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    LOG.info("adapter saved to %s (%d steps, %.0f s)", out, trainer.state.global_step, seconds)


def _train(cfg: FinetuneConfig) -> FinetuneResult:
    """One fine-tuning run, skipped when ``output_dir`` holds an adapter of the same configuration."""
    from transformers import DataCollatorForSeq2Seq, Trainer

    out = Path(cfg.output_dir)
    key = cfg.key()
    if not cfg.overwrite and is_done(cfg):
        LOG.info("%s: adapter with the same configuration exists, skipping training", out)
        return FinetuneResult(out, read_json(out / MANIFEST))

    run = _run_setup(cfg)
    seed_everything(cfg.seed)
    lcfg = lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    train_ex, val_ex = split_data(cfg)
    model, tokenizer = _lora_model(cfg, lcfg, run)
    train_ds, val_ds, has_eval = _datasets(cfg, train_ex, val_ex, tokenizer)
    eval_steps = _eval_steps(cfg, run, train_ds, val_ds)

    args = _training_args(cfg, run, out, has_eval, eval_steps)
    callbacks = _callbacks(cfg, has_eval)
    start = resume_point(out / "checkpoints", cache_key(key), cfg.overwrite, run.local_rank == 0)
    callbacks.append(seconds_at_save(out / "checkpoints", start))
    collator = DataCollatorForSeq2Seq(
        tokenizer, pad_to_multiple_of=8, return_tensors="pt", padding=True, label_pad_token_id=-100
    )
    labelled = _use_labelled_head(cfg, model, collator, train_ds, run.device)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds if has_eval else None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if start.checkpoint:
        LOG.info("resuming the interrupted run from %s (step %d, %.0f s trained before)",
                 start.checkpoint, start.step, start.seconds)
    with Timer() as t, labelled_head(model, labelled):
        result = trainer.train(resume_from_checkpoint=start.checkpoint)
    model = trainer.model
    model.eval()
    seconds = start.seconds + t.seconds
    manifest = _manifest(cfg, key, run, trainer, result, seconds, len(train_ds), len(val_ds or []), labelled)
    manifest["resumed"] = {"from_step": start.step, "seconds_before": start.seconds} if start.checkpoint else None
    _save_run(cfg, out, trainer, model, manifest, seconds)
    return FinetuneResult(out, manifest, model, tokenizer)
