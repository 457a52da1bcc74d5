"""Effort-score throughput with the embedded model (issue: ≥ 5× the loop, ≥ 0.7× a plain forward).

    python bench/bench_effort.py [--n 512] [--cutoff_len 512] [--loop_n 64]

On the first ``n`` Games training prompts, in one process: the batched per-sample gradient
norms (one backward pass per padded, length-sorted batch), the batch-size-1 autograd loop
(on ``loop_n`` of them, extrapolated by token count), and a plain no-grad forward of the same
batches. Prints samples/s, tokens/s and the ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dealrec.data import load_dataset
from dealrec.fewshot import build_examples
from dealrec.scores.effort import EffortConfig, EffortModel

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data_dir", default=str(REPO / "data"))
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--loop_n", type=int, default=64)
    p.add_argument("--cutoff_len", type=int, default=512)
    p.add_argument("--target", default="lora_B", choices=("lora_B", "base"))
    a = p.parse_args()
    data = load_dataset(a.data_dir, "games")
    em = EffortModel.load(EffortConfig(cutoff_len=a.cutoff_len, target=a.target))
    examples = build_examples(data, range(a.n), "train", em.tokenizer, a.cutoff_len, progress=False)
    ids = em.encode(examples)
    n_tok = sum(len(r) for r in ids)

    t = time.perf_counter()
    em.norms(ids, progress=False)
    t_batch = time.perf_counter() - t

    t = time.perf_counter()
    with torch.no_grad():
        for batch in em.batches(ids):
            x, m = em.pad([ids[i] for i in batch])
            em.model(input_ids=x, attention_mask=m, use_cache=False)
    t_fwd = time.perf_counter() - t

    loop_ids = ids[: a.loop_n]
    t = time.perf_counter()
    em.norms_loop(loop_ids)
    # scaled by tokens (the loop's cost grows with each prompt's length)
    t_loop = (time.perf_counter() - t) * n_tok / sum(len(r) for r in loop_ids)

    print(f"\n{len(ids)} Games prompts, {n_tok} tokens (cutoff {a.cutoff_len}), target {a.target}, "
          f"{torch.get_num_threads()} threads; loop timed on {len(loop_ids)} prompts and scaled by tokens")
    for name, sec in (("batched effort", t_batch), ("batch-size-1 loop", t_loop), ("plain no-grad forward", t_fwd)):
        print(f"{name:<24s} {len(ids) / sec:8.2f} samples/s {n_tok / sec:9.1f} tokens/s")
    print(f"batched / loop          {t_loop / t_batch:8.2f}x")
    print(f"batched / plain forward {t_fwd / t_batch:8.2f}x  (throughput ratio)")


if __name__ == "__main__":
    main()
