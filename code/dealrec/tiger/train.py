"""Training the TIGER seq2seq model on (history, next item) examples, from scratch.

The loss is the cross-entropy of the next item's tokens given the history (teacher forcing).
Each epoch ends with the loss on the validation examples; the weights of the epoch with the
lowest validation loss are kept, and training stops after ``patience`` epochs without a lower
one (without validation examples every epoch runs and the last weights are kept).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from dealrec.core import faults
from dealrec.core.logs import LOG
from dealrec.core.resume import load_state, save_state
from dealrec.core.seeds import deterministic_algorithms
from dealrec.tiger.model import history_inputs

Example = tuple[Sequence[int], int]  # (history item ids, next item id)


@dataclass
class TrainConfig:
    """The optimiser and the schedule (AdamW at a constant rate, early stopping on the validation loss)."""

    batch_size: int = field(default=64, metadata={"help": "examples per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_epochs: int = field(default=30, metadata={"help": "epochs at most"})
    patience: int = field(default=4, metadata={"help": "epochs without a lower validation loss before stopping"})

    def check(self) -> None:
        for name in ("batch_size", "max_epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be ≥ 1, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"--learning_rate must be a positive number, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight_decay must be ≥ 0, got {self.weight_decay}")


@dataclass
class TrainResult:
    """What the run did: epochs, the best epoch and its validation loss, the losses per epoch."""

    epochs: int
    best_epoch: int
    best_valid_loss: float | None
    train_loss: list[float]
    valid_loss: list[float]
    steps: int
    seconds: float


def _loss(model: Any, examples: Sequence[Example], item_tokens: torch.Tensor, max_history: int) -> torch.Tensor:
    ids, mask = history_inputs([h for h, _ in examples], item_tokens, max_history)
    labels = item_tokens[torch.tensor([t for _, t in examples], dtype=torch.long)]
    dev = model.device
    return model(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=labels.to(dev)).loss


@torch.no_grad()
def mean_loss(model: Any, examples: Sequence[Example], item_tokens: torch.Tensor, max_history: int,
              batch_size: int = 256) -> float:
    """The mean token cross-entropy over ``examples`` (eval mode)."""
    model.eval()
    total = 0.0
    examples = sorted(examples, key=lambda e: min(len(e[0]), max_history))  # less padding
    for s in range(0, len(examples), batch_size):
        batch = examples[s: s + batch_size]
        total += float(_loss(model, batch, item_tokens, max_history)) * len(batch)
    return total / max(1, len(examples))


def length_batches(examples: Sequence[Example], batch_size: int, max_history: int, gen: torch.Generator,
                   pool: int = 4) -> list[list[int]]:
    """The indices of ``examples`` in batches for one epoch: a random order, each run of ``pool``
    batches sorted by history length (less padding: a batch is as wide as its longest history),
    the batches in a random order."""
    order = torch.randperm(len(examples), generator=gen).tolist()
    batches = []
    for s in range(0, len(order), batch_size * pool):
        run = sorted(order[s: s + batch_size * pool], key=lambda i: min(len(examples[i][0]), max_history))
        batches += [run[j: j + batch_size] for j in range(0, len(run), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _epoch(model: Any, opt: torch.optim.Optimizer, examples: Sequence[Example], item_tokens: torch.Tensor,
           max_history: int, batch_size: int, gen: torch.Generator) -> tuple[float, int]:
    """One pass over ``examples``: (mean loss, steps)."""
    model.train()
    total, steps = 0.0, 0
    for idx in length_batches(examples, batch_size, max_history, gen):
        batch = [examples[i] for i in idx]
        loss = _loss(model, batch, item_tokens, max_history)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(batch)
        steps += 1
    return total / len(examples), steps


@dataclass
class Progress:
    """What an epoch changes beyond the weights, the optimiser and the random generators (a resume
    file, :mod:`dealrec.core.resume`, holds it with them)."""

    next_epoch: int = 1
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    since: int = 0  # epochs without a lower validation loss
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped: bool = False


def _after_epoch(model: Any, p: Progress, epoch: int, valid_loss: float, patience: int) -> None:
    """Keep the weights of the lowest validation loss; stop after ``patience`` epochs without one."""
    p.valid_loss.append(valid_loss)
    if valid_loss < p.best_loss:
        p.best_loss, p.best_epoch, p.since = valid_loss, epoch, 0
        p.best_state = copy.deepcopy(model.state_dict())
    else:
        p.since += 1
    p.stopped = p.since >= patience


@deterministic_algorithms()
def train_model(model: Any, train: Sequence[Example], valid: Sequence[Example], item_tokens: torch.Tensor,
                max_history: int, cfg: TrainConfig, seed: int = 0, progress: bool = True,
                resume: str | os.PathLike | None = None, resume_key: str = "") -> TrainResult:
    """Train ``model`` in place on ``train``; it ends with the weights of the best validation epoch.

    ``resume``: a file rewritten after every epoch (weights, optimiser, generators, :class:`Progress`);
    a run that finds one written for the same ``resume_key`` continues after its last epoch and ends
    as a run never stopped."""
    cfg.check()
    if not train:
        raise ValueError("no training examples (the selection's users have no training sequence)")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    saved = load_state(resume, resume_key, model, opt, gen, "TIGER") if resume else None
    p = Progress(**saved) if saved else Progress()
    if saved:
        LOG.info("TIGER: resuming at epoch %d from %s", p.next_epoch, resume)
    bar = tqdm(total=cfg.max_epochs, initial=p.next_epoch - 1, desc="TIGER train", unit="epoch", disable=not progress)
    for epoch in range(p.next_epoch, cfg.max_epochs + 1 if not p.stopped else p.next_epoch):
        loss, n = _epoch(model, opt, train, item_tokens, max_history, cfg.batch_size, gen)
        p.train_loss.append(loss)
        p.steps += n
        if valid:
            _after_epoch(model, p, epoch, mean_loss(model, valid, item_tokens, max_history), cfg.patience)
            bar.set_postfix(loss=f"{loss:.3f}", valid=f"{p.valid_loss[-1]:.3f}", best=f"{p.best_loss:.3f}@{p.best_epoch}")
        else:
            bar.set_postfix(loss=f"{loss:.3f}")
        bar.update()
        p.next_epoch = epoch + 1
        if resume:
            save_state(resume, resume_key, model, opt, gen,
                       dataclasses.asdict(dataclasses.replace(p, seconds=p.seconds + time.perf_counter() - t0)))
        faults.step("tiger")
        if p.stopped:
            break
    bar.close()
    if p.best_state is not None:
        model.load_state_dict(p.best_state)
    epochs = len(p.train_loss)
    result = TrainResult(epochs, p.best_epoch or epochs, p.best_loss if valid else None, p.train_loss, p.valid_loss,
                         p.steps, round(p.seconds + time.perf_counter() - t0, 1))
    LOG.info("TIGER trained %d epochs (%d steps, %.1f s) on %d examples; best epoch %d, validation loss %s",
             epochs, p.steps, result.seconds, len(train), result.best_epoch,
             f"{p.best_loss:.4f}" if valid else "n/a (no validation examples)")
    model.eval()
    return result
