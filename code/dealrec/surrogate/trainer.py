"""Training and full-ranking evaluation of the surrogate (paper §4.1, original ``FineTrainer``).

Adam (lr 1e-3), batch 500, fresh negatives every epoch, evaluation every ``eval_every`` epochs
on validation (input = all train items, train items masked) and test (input = train + valid
items, train and valid items masked), users with targets only. Masked items get -inf (the
original set them to 0, which let them outrank items with negative scores). The checkpoint with
the best validation Recall@5 is kept (the original meant to, but saved the latest); training
stops after ``patience`` evaluations without improvement (0 = never).

``batching="split"`` (default) computes each random batch as a few length buckets trimmed to
their own longest sequence, with the loss normalised once over the whole batch: the same
gradient as the original padded batch (``batching="padded"``) at a fraction of the work, since
most Games sequences are far shorter than ``max_seq_length``.

The samples, their random part (negatives, or BERT4Rec's masks), the loss and the next-item
prediction come from the model's objective (:mod:`dealrec.surrogate.objective`), which also
prepares the model from the training samples before the first epoch (DCRec builds its item
graphs from exactly the samples it trains on); a model whose
outputs depend on the amount of left padding (``trim_exact`` False) is trained and evaluated on
full-width padded batches whatever ``batching`` says.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from dealrec.core import faults
from dealrec.core.logs import LOG, Timer
from dealrec.core.resume import load_state, save_state
from dealrec.core.seeds import deterministic_algorithms
from dealrec.data.dataset import RecData
from dealrec.metrics import DEFAULT_KS, hit_ranks, topk_from_scores, topk_metrics
from dealrec.surrogate.objective import objective_of, trim_exact
from dealrec.surrogate.samples import DEFAULT_BUCKET_OVERHEAD, EvalInputs, _pad_right, build_eval, trim_left

BATCHING = ("split", "padded")


@dataclass
class SurrogateConfig:
    epochs: int = 200
    batch_size: int = 500
    lr: float = 1e-3
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    eval_every: int = 5
    patience: int = 5
    seed: int = 42
    max_seq_length: int = 50
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    dropout: float = 0.5  # the original's --hidden_dropout_prob
    ks: tuple[int, ...] = DEFAULT_KS  # the original's --topN
    batching: str = "split"  # "split": exact length buckets; "padded": the original's full-width batches
    bucket_overhead: float = DEFAULT_BUCKET_OVERHEAD  # see samples.length_buckets
    # Added after the cache keys were fixed: in a key only when set (see key()).
    attention_dropout: float | None = None  # the original's --attention_probs_dropout_prob (None: dropout)
    initializer_range: float = 0.02  # std of the initial weights (the original's --initializer_range)

    def __post_init__(self) -> None:
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {self.batching!r}")

    def key(self) -> dict:
        """The fields that determine a trained model, for cache keys: the fields of
        :data:`LATE_FIELDS` only when they differ from their defaults, so that the keys of models
        trained without those settings stay valid."""
        d = dataclasses.asdict(self)
        for name, default in LATE_FIELDS.items():
            if d[name] == default:
                d.pop(name)
        return d


LATE_FIELDS = {"attention_dropout": None, "initializer_range": 0.02}


@dataclass
class TrainResult:
    best_epoch: int
    best_valid: dict
    test: dict
    history: list[dict] = field(default_factory=list)
    seconds_per_epoch: float = 0.0
    seconds_per_eval: float = 0.0
    # per test user (``test_users``: 0-based ids, the order of the evaluation), the 0-based rank of
    # each target in the top max(ks), or -1 (:func:`evaluate_per_user`)
    test_users: list[int] = field(default_factory=list)
    test_hit_ranks: list[list[int]] = field(default_factory=list)


@torch.no_grad()
def rank_users(
    model: torch.nn.Module, ev: EvalInputs, k: int, batch_size: int = 2048, device="cpu", trim: bool = True
) -> torch.Tensor:
    """[users, k] the top-``k`` items (1-based ids, best first) of every user of ``ev``, full
    ranking over all items (row 0 = padding is never ranked), seen items masked.

    Users are scored in batches of similar history length, each trimmed to its longest history
    (exact: positions are right-aligned and padding keys masked); users without any history
    keep the full padded width, as the original computed them. ``trim=False``: the original's
    full-width batches (the reference; also used for a model that is not ``trim_exact``). The
    scoring state comes from the model's objective (SASRec: the last position's output)."""
    model.eval()
    objective = objective_of(model)
    trim = trim and trim_exact(model)
    emb = model.item_embeddings.weight
    n = len(ev.users)
    ranked = torch.zeros(n, k, dtype=torch.long)
    if not n:
        return ranked
    lengths = (ev.input_ids > 0).sum(1)
    order = torch.sort(lengths, stable=True).indices
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        ids = ev.input_ids[rows]
        if trim and bool((lengths[rows] > 0).all()):
            ids = trim_left(ids, ids)[0]
        scores = objective.next_state(model, ids.to(device)) @ emb.T
        exclude = torch.zeros_like(scores, dtype=torch.bool)
        exclude[:, 0] = True
        seen = _pad_right([ev.exclude[r] for r in rows.tolist()]).to(device)
        exclude.scatter_(1, seen, True)  # padding 0 is masked anyway
        ranked[rows] = topk_from_scores(scores, k, exclude).cpu()
    return ranked


def evaluate(
    model: torch.nn.Module, ev: EvalInputs, ks=DEFAULT_KS, batch_size: int = 2048, device="cpu", trim: bool = True
) -> dict:
    """Recall/NDCG/Precision/MRR@``ks`` of the full ranking (:func:`rank_users`) over the users of ``ev``."""
    if not len(ev.users):
        return topk_metrics(torch.zeros(0, max(ks), dtype=torch.long), [], ks)
    return topk_metrics(rank_users(model, ev, max(ks), batch_size, device, trim), ev.targets, ks)


def evaluate_per_user(
    model: torch.nn.Module, ev: EvalInputs, ks=DEFAULT_KS, batch_size: int = 2048, device="cpu", trim: bool = True
) -> tuple[dict, list[list[int]]]:
    """:func:`evaluate`'s metrics (the same numbers) and, per user of ``ev`` (in ``ev.users``'
    order), the 0-based rank of each target within the top max(``ks``), or -1
    (:func:`dealrec.metrics.hit_ranks`): what the study's paired statistics need."""
    if not len(ev.users):
        return topk_metrics(torch.zeros(0, max(ks), dtype=torch.long), [], ks), []
    ranked = rank_users(model, ev, max(ks), batch_size, device, trim)
    return topk_metrics(ranked, ev.targets, ks), hit_ranks(ranked, ev.targets)


def eval_sets(data: RecData, max_len: int = 50) -> tuple[EvalInputs, EvalInputs]:
    valid = build_eval(data.train, data.valid, max_len)
    test = build_eval([t + v for t, v in zip(data.train, data.valid)], data.test, max_len)
    return valid, test


@dataclass
class Progress:
    """What an epoch changes beyond the weights, the optimiser and the random generators: the
    epoch to run next, the best evaluation so far (and its weights), the early-stopping count,
    the history and the timings. A resume file (:mod:`dealrec.core.resume`) holds it with the rest."""

    next_epoch: int = 0
    best_score: float = -1.0
    best_state: dict | None = None
    best_epoch: int = -1
    best_valid: dict = field(default_factory=dict)
    bad_evals: int = 0
    history: list[dict] = field(default_factory=list)
    t_epoch: float = 0.0
    t_eval: float = 0.0
    n_eval: int = 0
    stopped: bool = False


def _train_epoch(model: torch.nn.Module, objective, samples, optim: torch.optim.Optimizer, gen: torch.Generator,
                 cfg: SurrogateConfig, device, split: bool) -> float:
    """One pass over ``samples`` in random batches (fresh negatives or masks); the mean batch loss."""
    model.train()
    drawn, neg = objective.draw(samples, gen)
    order = torch.randperm(len(samples), generator=gen)
    total, n_batches = 0.0, 0
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start:start + cfg.batch_size]
        batch = (drawn.input_ids[idx].to(device), drawn.target_pos[idx].to(device),
                 neg[idx].to(device) if neg is not None else None)
        loss = objective.batch_loss(model, *batch, split=split, overhead=cfg.bucket_overhead)
        optim.zero_grad()
        loss.backward()
        optim.step()
        total += loss.item()
        n_batches += 1
    return total / max(n_batches, 1)


def _validate(model: torch.nn.Module, valid: EvalInputs, cfg: SurrogateConfig, device, epoch: int, record: dict,
              p: Progress) -> None:
    """Evaluate on validation, keep the best weights (Recall@5), count towards early stopping."""
    with Timer() as te:
        metrics = evaluate(model, valid, cfg.ks, device=device)
    p.t_eval += te.seconds
    p.n_eval += 1
    record["valid"] = {"Recall": metrics["Recall"], "NDCG": metrics["NDCG"]}
    LOG.info("epoch %d loss %.4f valid Recall@%s %s", epoch, record["loss"], cfg.ks, metrics["Recall"])
    if metrics["Recall"][0] > p.best_score:
        p.best_score, p.best_epoch, p.best_valid, p.bad_evals = metrics["Recall"][0], epoch, metrics, 0
        p.best_state = copy.deepcopy(model.state_dict())
    else:
        p.bad_evals += 1
        if cfg.patience and p.bad_evals >= cfg.patience:
            LOG.info("early stop at epoch %d (best epoch %d)", epoch, p.best_epoch)
            p.stopped = True


@deterministic_algorithms()
def train_surrogate(
    model: torch.nn.Module, data: RecData, cfg: SurrogateConfig, device="cpu", train_users: list[int] | None = None,
    resume: str | os.PathLike | None = None, resume_key: str = "",
) -> TrainResult:
    """Train ``model`` in place on all users' samples (or only ``train_users``'); it ends holding
    the best checkpoint. Validation and test always cover every user of ``data``.

    ``resume``: a file rewritten after every epoch with the weights, the optimiser, the random
    generators and :class:`Progress`; a run that finds one written for the same ``resume_key``
    continues after its last epoch and ends with the same weights as a run never interrupted."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    objective = objective_of(model)
    split = cfg.batching == "split"
    if split and not trim_exact(model):
        LOG.info("surrogate %s is not invariant to left padding: padded batches instead of split ones",
                 type(model).__name__)
        split = False
    train_seqs = data.train if train_users is None else [data.train[u] for u in train_users]
    samples = objective.build_samples(train_seqs, data.n_items, cfg.max_seq_length)
    objective.prepare(model, samples)  # what the model takes from its training data (DCRec: item graphs)
    valid, test = eval_sets(data, cfg.max_seq_length)
    model.to(device)
    optim = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
    )
    saved = load_state(resume, resume_key, model, optim, gen, "surrogate") if resume else None
    p = Progress(**saved) if saved else Progress()
    if saved:
        LOG.info("surrogate: resuming at epoch %d from %s", p.next_epoch, resume)
    faults.enter("surrogate")
    bar = tqdm(total=cfg.epochs, desc="surrogate epochs", initial=p.next_epoch)
    for epoch in range(p.next_epoch, cfg.epochs if not p.stopped else p.next_epoch):
        with Timer() as t:
            record = {"epoch": epoch, "loss": _train_epoch(model, objective, samples, optim, gen, cfg, device, split)}
        p.t_epoch += t.seconds
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            _validate(model, valid, cfg, device, epoch, record, p)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        bar.update()
        p.history.append(record)
        p.next_epoch = epoch + 1
        if resume:
            save_state(resume, resume_key, model, optim, gen, dataclasses.asdict(p))
        faults.step("surrogate")
        if p.stopped:
            break
    bar.close()
    if p.best_state is not None:
        model.load_state_dict(p.best_state)
    else:
        p.best_epoch = len(p.history) - 1
    test_metrics, test_ranks = evaluate_per_user(model, test, cfg.ks, device=device)
    best_valid = p.best_valid or evaluate(model, valid, cfg.ks, device=device)
    LOG.info("surrogate best epoch %d, test Recall %s NDCG %s", p.best_epoch, test_metrics["Recall"], test_metrics["NDCG"])
    return TrainResult(
        p.best_epoch, best_valid, test_metrics, p.history, p.t_epoch / max(len(p.history), 1), p.t_eval / max(p.n_eval, 1),
        test_users=[int(u) for u in test.users], test_hit_ranks=test_ranks,
    )
