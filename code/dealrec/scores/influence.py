"""Influence on the empirical risk (paper Eq. 9–11), computed on the surrogate.

    v      = mean training-loss gradient w.r.t. the declared parameters W        (Eq. 11)
    h      ≈ H⁻¹v, by LiSSA (Eq. 10) or conjugate gradient
    score(s) = ⟨h, ∇_W L(s)⟩                                                        (Eq. 9/11)

LiSSA iterates exactly as the original: h₀ = v; hₜ = v + (1 − damp)·hₜ₋₁ − H_{sₜ}hₜ₋₁ / scale
with one random sample sₜ per step, averaged over ``iteration`` repeats. Its fixed point solves
(H/scale + damp·I) h = v, which ``solver="cg"`` solves directly with the full-data Hessian
(mean per-sample Hessian over eligible samples). The per-sample scores are directional
derivatives of each sample's loss along h: one forward-mode pass (``torch.func.jvp``) per batch
instead of one backward pass per sample. Each sample's negatives are fixed by the seed (the
original redrew them on every call), or replaced by their expectation (``negatives="expected"``).

The samples, their draw and the loss are the surrogate's objective's
(:mod:`dealrec.surrogate.objective`): for BERT4Rec the cloze masks are drawn once per sample
from the seed (so a sample's score is deterministic) and the loss is the full-softmax
cross-entropy at its masked positions; ``negatives`` does not apply to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.func import functional_call, jvp
from tqdm.auto import tqdm

from dealrec.core import faults
from dealrec.core.logs import LOG, Timer
from dealrec.surrogate import SASREC_INFLUENCE_PARAMS
from dealrec.surrogate.loss import NEGATIVE_MODES, LossModule
from dealrec.surrogate.objective import objective_of, trim_exact
from dealrec.surrogate.samples import SampleTensors, trim_left

DEFAULT_PARAMS = SASREC_INFLUENCE_PARAMS  # SASRec's; each registered surrogate declares its own
SOLVERS = ("lissa", "cg")

Params = dict[str, torch.Tensor]


@dataclass
class InfluenceConfig:
    params: tuple[str, ...] | None = DEFAULT_PARAMS  # None: the surrogate's registered parameter(s)
    recursion_depth: int = 5000
    iteration: int = 1
    damp: float = 0.01
    scale: float = 25.0
    solver: str = "lissa"
    negatives: str = "sampled"
    seed: int = 42
    batch_size: int = 500  # batches of the mean gradient v (user order, as training)
    chunk_positions: int | None = None  # users × length per chunk (None: 4096 expected / 32768 sampled)
    cg_max_iter: int = 100
    cg_tol: float = 1e-6

    def validate(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"--solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.negatives not in NEGATIVE_MODES:
            raise ValueError(f"--negatives must be one of {NEGATIVE_MODES}, got {self.negatives!r}")
        if self.recursion_depth < 1 or self.iteration < 1:
            raise ValueError("--recursion_depth and --iteration must be ≥ 1")
        if self.scale <= 0 or not 0 <= self.damp < 1:
            raise ValueError("need scale > 0 and 0 ≤ damp < 1")


def _dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


class InfluenceProblem:
    """The surrogate, its samples with fixed negatives (or masks), and the declared parameter subset.

    ``samples`` are the objective's samples before the draw (``objective.build_samples``); the
    draw from ``cfg.seed`` happens here and is kept (``self.samples``, ``self.neg``)."""

    def __init__(self, model: torch.nn.Module, samples: SampleTensors, cfg: InfluenceConfig) -> None:
        cfg.validate()
        self.model = model.eval()
        if cfg.params is None:
            cfg = dataclasses.replace(cfg, params=tuple(getattr(model, "influence_params", DEFAULT_PARAMS)))
        self.cfg = cfg
        self.objective = objective_of(model)
        self.trim = trim_exact(model)
        named = dict(model.named_parameters())
        unknown = [n for n in cfg.params if n not in named]
        if unknown:
            raise ValueError(f"unknown surrogate parameter(s) {unknown}; available: {sorted(named)}")
        if cfg.negatives == "expected" and self.objective.uses_negatives:
            # A user with every item has no negative to average over: 0/0 = NaN in its loss, which
            # flows into v and from there into every score.
            n_seen = (samples.user_items > 0).sum(1)
            full = (samples.eligible & (n_seen >= samples.n_items)).nonzero(as_tuple=True)[0]
            if len(full):
                raise ValueError(
                    f"negatives='expected': user(s) {full[:5].tolist()} interacted with every item, so no "
                    "negative item is left to average over; drop those users or use a larger catalogue"
                )
        self.params: Params = {n: named[n].detach().clone() for n in cfg.params}
        for param in model.parameters():  # only the declared subset is differentiated (torch.func)
            param.requires_grad_(False)
        self.loss_module = LossModule(model, cfg.negatives, self.objective.loss_terms)
        gen = torch.Generator().manual_seed(cfg.seed)
        self.samples, self.neg = self.objective.draw(samples, gen, cfg.negatives)
        self.eligible = self.samples.eligible

    # -- losses as functions of the declared parameters -------------------------------------
    def terms(self, p: Params, idx: torch.Tensor, trim: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples
        ids, pos, neg = s.input_ids[idx], s.target_pos[idx], self.neg[idx] if self.neg is not None else None
        if trim and self.trim:
            ids, pos, neg = trim_left(ids, pos, neg)
        items = s.user_items[idx]
        items = items[:, : max(int((items > 0).sum(1).max()), 1)]
        full = {f"model.{k}": v for k, v in p.items()}
        return functional_call(self.loss_module, full, (ids, pos, neg, items))

    def per_sample_loss(self, p: Params, idx: torch.Tensor) -> torch.Tensor:
        sums, counts = self.terms(p, idx)
        return sums / counts.clamp(min=1)

    def mean_loss(self, p: Params, idx: torch.Tensor) -> torch.Tensor:
        """Mean of per-sample losses over ``idx`` (the Hessian LiSSA samples from)."""
        return self.per_sample_loss(p, idx).mean()

    # -- Eq. 11: v -----------------------------------------------------------------------------
    def _leaf_params(self) -> Params:
        return {k: v.detach().requires_grad_(True) for k, v in self.params.items()}

    def _length_sorted_chunks(self, idx: torch.Tensor, max_positions: int | None = None) -> list[torch.Tensor]:
        """``idx`` sorted by sequence length and cut into chunks of at most ``max_positions``
        (users × padded length) so that short samples are processed many at a time."""
        if max_positions is None:
            max_positions = self.cfg.chunk_positions
        if max_positions is None:
            max_positions = self.objective.chunk_positions
        if max_positions is None:
            max_positions = 4096 if self.cfg.negatives == "expected" else 32768
        lengths = (self.samples.input_ids[idx] > 0).sum(1).clamp(min=1)
        order = torch.argsort(lengths, stable=True)
        idx, lengths = idx[order].tolist(), lengths[order].tolist()
        chunks, start = [], 0
        while start < len(idx):
            end = start + 1
            while end < len(idx) and (end + 1 - start) * lengths[end] <= max_positions:
                end += 1
            chunks.append(torch.tensor(idx[start:end]))
            start = end
        return chunks

    def mean_gradient(self) -> Params:
        """v: the mean over training batches (user order, ``batch_size``) of the batch-loss
        gradient, as the original. Computed exactly as the gradient of Σ_s w_s·sum_s with
        w_s = 1 / (#target positions of s's batch · #batches), over length-sorted, trimmed chunks."""
        bs = self.cfg.batch_size
        counts = (self.samples.target_pos > 0).sum(1).double()
        batch_of = torch.arange(len(self.samples)) // bs
        batch_count = torch.zeros(int(batch_of.max()) + 1, dtype=torch.double).index_add_(0, batch_of, counts)
        n_batches = int((batch_count > 0).sum())
        weight = (1.0 / (batch_count[batch_of].clamp(min=1) * max(n_batches, 1))).float()
        total = {k: torch.zeros_like(v) for k, v in self.params.items()}
        idx_all = self.eligible.nonzero(as_tuple=True)[0]
        for idx in tqdm(self._length_sorted_chunks(idx_all), desc="influence: v", leave=False):
            p = self._leaf_params()
            sums, _ = self.terms(p, idx)
            g = torch.autograd.grad((sums * weight[idx]).sum(), list(p.values()))
            for k, gk in zip(p, g):
                total[k] += gk
        return total

    # -- Hessian-vector products ---------------------------------------------------------------
    def hvp(self, idx: torch.Tensor, h: Params) -> Params:
        """(∇² mean_{s∈idx} L(s)) h by double backward (as the original; faster than
        torch.func's forward-over-reverse for these small per-step graphs)."""
        p = self._leaf_params()
        g = torch.autograd.grad(self.mean_loss(p, idx), list(p.values()), create_graph=True)
        dot = sum((gk * h[k]).sum() for gk, k in zip(g, p))
        hv = torch.autograd.grad(dot, list(p.values()), allow_unused=True)
        return {k: (x if x is not None else torch.zeros_like(p[k])).detach() for k, x in zip(p, hv)}

    def full_hvp(self, h: Params, chunk: int = 1024) -> Params:
        idx_all = self.eligible.nonzero(as_tuple=True)[0]
        out = {k: torch.zeros_like(v) for k, v in h.items()}
        for start in range(0, len(idx_all), chunk):
            idx = idx_all[start:start + chunk]
            part = self.hvp(idx, h)
            for k in out:
                out[k] += part[k] * (len(idx) / len(idx_all))
        return out

    # -- Eq. 10: H⁻¹v -------------------------------------------------------------------------
    def lissa(self, v: Params) -> Params:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        pool = self.eligible.nonzero(as_tuple=True)[0]
        acc = {k: torch.zeros_like(x) for k, x in v.items()}
        for r in range(cfg.iteration):
            h = {k: x.clone() for k, x in v.items()}
            picks = pool[torch.randint(len(pool), (cfg.recursion_depth,), generator=gen)]
            for t in tqdm(range(cfg.recursion_depth), desc=f"LiSSA {r + 1}/{cfg.iteration}", leave=False):
                hv = self.hvp(picks[t:t + 1], h)
                h = {k: v[k] + (1 - cfg.damp) * h[k] - hv[k] / cfg.scale for k in h}
                faults.step("influence")
            for k in acc:
                acc[k] += h[k]
        return {k: x / cfg.iteration for k, x in acc.items()}

    def conjugate_gradient(self, v: Params) -> Params:
        """Solve (H/scale + damp·I) h = v with the full-data Hessian."""
        cfg = self.cfg

        def op(x: Params) -> Params:
            hx = self.full_hvp(x)
            return {k: hx[k] / cfg.scale + cfg.damp * x[k] for k in x}

        x = {k: torch.zeros_like(t) for k, t in v.items()}
        r = {k: t.clone() for k, t in v.items()}
        p = {k: t.clone() for k, t in v.items()}
        rs = _dot(r, r)
        v_norm = float(rs.sqrt())
        for it in tqdm(range(cfg.cg_max_iter), desc="CG", leave=False):
            faults.step("influence")
            ap = op(p)
            alpha = rs / _dot(p, ap)
            x = {k: x[k] + alpha * p[k] for k in x}
            r = {k: r[k] - alpha * ap[k] for k in r}
            rs_new = _dot(r, r)
            if float(rs_new.sqrt()) <= cfg.cg_tol * max(v_norm, 1e-30):
                LOG.info("CG converged after %d iterations", it + 1)
                break
            p = {k: r[k] + (rs_new / rs) * p[k] for k in p}
            rs = rs_new
        return x

    def inverse_hvp(self, v: Params) -> Params:
        return self.lissa(v) if self.cfg.solver == "lissa" else self.conjugate_gradient(v)

    # -- Eq. 9: per-sample scores --------------------------------------------------------------
    def scores(self, h: Params) -> torch.Tensor:
        """⟨h, ∇L(s)⟩ for every sample (0 for ineligible ones), batched by length."""
        n = len(self.samples)
        out = torch.zeros(n)
        idx_all = self.eligible.nonzero(as_tuple=True)[0]
        for idx in tqdm(self._length_sorted_chunks(idx_all), desc="influence: scores", leave=False):
            _, d = jvp(lambda p, idx=idx: self.per_sample_loss(p, idx), (self.params,), (h,))
            out[idx] = d.detach()
        return out

    def per_sample_grads(self, idx: Sequence[int], trim: bool = True) -> Params:
        """Reference: one backward pass per sample, as the original (tests and benchmark)."""
        out: dict[str, list[torch.Tensor]] = {k: [] for k in self.params}
        for i in idx:
            p = self._leaf_params()
            sums, counts = self.terms(p, torch.tensor([int(i)]), trim=trim)
            g = torch.autograd.grad((sums / counts.clamp(min=1)).sum(), list(p.values()), allow_unused=True)
            for k, gk in zip(p, g):
                out[k].append(gk if gk is not None else torch.zeros_like(p[k]))
        return {k: torch.stack(v) for k, v in out.items()}


@dataclass
class InfluenceResult:
    scores: torch.Tensor
    eligible: torch.Tensor
    v_norm: float
    h_norm: float
    timing: dict


def influence_scores(model: torch.nn.Module, samples: SampleTensors, cfg: InfluenceConfig) -> InfluenceResult:
    """Run Eq. 9–11 end to end; returns one score per sample (user order)."""
    timing = {}
    with torch.no_grad(), Timer() as t:
        prob = InfluenceProblem(model, samples, cfg)
    timing["setup_s"] = t.seconds
    with Timer() as t:
        v = prob.mean_gradient()
    timing["v_s"] = t.seconds
    with Timer() as t:
        h = prob.inverse_hvp(v)
    timing[f"{cfg.solver}_s"] = t.seconds
    with Timer() as t:
        scores = prob.scores(h)
    timing["scores_s"] = t.seconds
    v_norm = float(_dot(v, v).sqrt())
    h_norm = float(_dot(h, h).sqrt())
    LOG.info("influence: |v| %.3e |H^-1 v| %.3e timing %s", v_norm, h_norm, {k: round(x, 2) for k, x in timing.items()})
    return InfluenceResult(scores, prob.eligible.clone(), v_norm, h_norm, timing)
