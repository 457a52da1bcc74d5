"""Per-sample ‖C + Σ_t g_t x_tᵀ‖²_F of the base-weight effort (``--effort_target base``): the Gram
form against the materialised matrices, on v_proj shapes of SmolLM2-135M (out 192, in 576) and a
batch of 16, at suffix lengths seen on Games prompts. Prints seconds per call and the ratio, and
the largest relative difference of the two forms (they are equal up to float order).

    python bench/bench_grad_norm.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "code"))

from dealrec.core.hardware import describe  # noqa: E402
from dealrec.scores.grad_hook import frobenius_sq  # noqa: E402


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="32,64,128,256,448")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe())
    print(f"{'T':>5} {'gram s':>9} {'materialised s':>15} {'gram/mat':>9} {'auto':>6} {'max rel diff':>13}")
    gen = torch.Generator().manual_seed(0)
    for t in (int(v) for v in args.lengths.split(",")):
        g = torch.randn(args.batch, t, 192, generator=gen) * 1e-3
        x = torch.randn(args.batch, t, 576, generator=gen)
        c = torch.randn(192, 576, generator=gen) * 1e-2
        gram = best_of(lambda g=g, x=x, c=c: frobenius_sq(g, x, c, materialise=False), args.repeats)
        mat = best_of(lambda g=g, x=x, c=c: frobenius_sq(g, x, c, materialise=True), args.repeats)
        a, b = frobenius_sq(g, x, c, materialise=False), frobenius_sq(g, x, c, materialise=True)
        diff = float(((a - b).abs() / b.abs()).max())
        auto = "mat" if t * (192 + 576) > 192 * 576 else "gram"
        print(f"{t:5d} {gram:9.4f} {mat:15.4f} {gram / mat:9.2f} {auto:>6} {diff:13.2e}")


if __name__ == "__main__":
    main()
