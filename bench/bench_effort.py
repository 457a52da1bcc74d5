"""Effort-score throughput and agreement with the embedded model, in one process.

    python bench/bench_effort.py [--n 128] [--cutoff_len 512] [--modes old,fp32,bf16,int8]
                                 [--agree_n 1000 --agree_modes bf16,int8] [--save DIR]

Timing (first ``n`` Games training prompts): ``old`` is today's exact batched path (padded
length-sorted batches, the whole prompt through every layer, fp32); ``fp32`` the shared-prefix
path (exact); ``bf16``/``int8`` the shared-prefix path with the frozen layers below the target
layer in that precision; ``bf16_head`` also the loss head's products. The new paths compute the
loss head's gradient without autograd (``dealrec.scores.loss_head``); ``<mode>:autograd`` (e.g.
``bf16:autograd``) runs a mode with autograd through the head instead. Prints prompts/s, tokens/s
and the ratio to ``old``.

Agreement (first ``agree_n`` prompts): Spearman and top-10 % overlap of each low-precision mode
against the exact fp32 path, and the maximum relative difference. ``--save DIR`` keeps every
mode's scores there (``effort_<mode>_<n>.pt``) and reuses them on a rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path

import torch
from scipy.stats import spearmanr

from dealrec.core.hardware import describe
from dealrec.data.dataset import load_dataset
from dealrec.data.fewshot import build_examples
from dealrec.scores.effort import EffortConfig, EffortModel

REPO = Path(__file__).resolve().parents[1]
AUTOGRAD_HEAD = ":autograd"


def _precision(mode: str) -> str:
    return "fp32" if mode == "old" else mode.removesuffix(AUTOGRAD_HEAD)


def model_for(mode: str, base: EffortConfig) -> EffortModel:
    """``old``: the padded path (every prompt computed whole, no shared-prefix reuse); a mode ending
    in ``:autograd`` takes the loss head's gradient from autograd instead of the fused head, to
    show what the fused head saves."""
    cfg = dataclasses.replace(base, prefix_reuse=mode != "old", precision=_precision(mode))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        em = EffortModel.load(cfg)
    em.fused_head = not (mode == "old" or mode.endswith(AUTOGRAD_HEAD))
    return em


def scores(mode: str, base: EffortConfig, ids: list[list[int]], save: Path | None) -> tuple[torch.Tensor, float]:
    f = save / f"effort_{mode}_{len(ids)}.pt" if save else None
    if f is not None and f.exists():
        d = torch.load(f, weights_only=True)
        return d["scores"], float(d["seconds"])
    em = model_for(mode, base)
    if em.precision != _precision(mode):
        raise SystemExit(f"mode {mode}: ran as {em.precision} on this machine")
    t = time.perf_counter()
    out = em.norms(ids, desc=mode)
    sec = time.perf_counter() - t
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"scores": out, "seconds": sec}, f)
    return out, sec


def top_overlap(a: torch.Tensor, b: torch.Tensor, frac: float = 0.1) -> float:
    k = max(1, int(round(frac * len(a))))
    return len(set(a.topk(k).indices.tolist()) & set(b.topk(k).indices.tolist())) / k


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data_dir", default=str(REPO / "data"))
    p.add_argument("--n", type=int, default=128, help="prompts timed per mode")
    p.add_argument("--modes", default="old,fp32,bf16,int8")
    p.add_argument("--agree_n", type=int, default=0, help="prompts for the agreement study (0 = skip)")
    p.add_argument("--agree_modes", default="bf16,int8")
    p.add_argument("--cutoff_len", type=int, default=512)
    p.add_argument("--target", default="lora_B", choices=("lora_B", "base"))
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--save", default=None, help="folder to keep/reuse each mode's scores")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    p.add_argument("--reuse_chunks", default=None, metavar="MODE:DIR",
                   help="take MODE's agreement scores from a finished prune effort.chunks folder (same prompts)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    save = Path(a.save) if a.save else None
    data = load_dataset(a.data_dir, "games")
    base = EffortConfig(cutoff_len=a.cutoff_len, target=a.target)
    tok = model_for("fp32", base).tokenizer
    n_all = max(a.n, a.agree_n)
    examples = build_examples(data, range(n_all + 200), "train", tok, a.cutoff_len, progress=False)[:n_all]
    em0 = model_for("old", base)
    ids_all = em0.encode(examples)
    del em0
    report: dict = {"machine": describe(), "cutoff_len": a.cutoff_len, "target": a.target, "timing": {},
                    "agreement": {}}

    if a.reuse_chunks:
        mode, folder = a.reuse_chunks.split(":", 1)
        files = sorted(Path(folder).glob("chunk_*.pt"))
        got = torch.cat([torch.load(f, weights_only=True) for f in files]) if files else torch.zeros(0)
        if len(got) < a.agree_n:
            raise SystemExit(f"--reuse_chunks: {folder} holds {len(got)} scores, fewer than --agree_n {a.agree_n}")
        if save is None:
            raise SystemExit("--reuse_chunks needs --save")
        save.mkdir(parents=True, exist_ok=True)
        torch.save({"scores": got[: a.agree_n], "seconds": float("nan")}, save / f"effort_{mode}_{a.agree_n}.pt")
    ids = ids_all[: a.n]
    n_tok = sum(len(r) for r in ids)
    print(f"\n{describe()}\n{len(ids)} Games prompts, {n_tok} tokens (mean {n_tok / max(len(ids), 1):.0f}), "
          f"cutoff {a.cutoff_len}, target {a.target}")
    ref = None
    t_old = None
    for mode in [m for m in a.modes.split(",") if m]:
        s, sec = scores(mode, base, ids, None)
        if mode == "old":
            ref, t_old = s, sec
        diff = float(((s - ref).abs() / ref.abs().clamp(min=1e-30)).max()) if ref is not None else float("nan")
        ratio = t_old / sec if t_old else float("nan")
        report["timing"][mode] = {"seconds": sec, "prompts_per_s": len(ids) / sec, "tokens_per_s": n_tok / sec,
                                  "vs_old": ratio, "max_rel_diff_vs_old": diff}
        print(f"{mode:<6s} {len(ids) / sec:7.2f} prompts/s {n_tok / sec:8.1f} tokens/s  {ratio:5.2f}x old  "
              f"max rel. diff vs old {diff:.1e}", flush=True)

    if a.agree_n:
        ids = ids_all[: a.agree_n]
        exact, _ = scores("fp32", base, ids, save)
        for mode in a.agree_modes.split(","):
            s, sec = scores(mode, base, ids, save)
            rho = float(spearmanr(exact.numpy(), s.numpy()).statistic)
            ov = top_overlap(exact, s)
            diff = float(((s - exact).abs() / exact.abs()).max())
            report["agreement"][mode] = {"n": len(ids), "spearman": rho, "top10_overlap": ov, "max_rel_diff": diff,
                                         "seconds": sec}
            print(f"agreement {mode} vs fp32 on {len(ids)} prompts: Spearman {rho:.4f}, top-10% overlap {ov:.3f}, "
                  f"max rel. diff {diff:.2e}", flush=True)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
