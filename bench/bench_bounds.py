"""What the exact work of each LLM stage allows on this CPU (not a test).

    python bench/bench_bounds.py [--threads 2] [--n 256]

1. The matrix-product rate of this CPU for the embedded model's shapes (every linear layer of a
   decoder layer, and the 49,152-column head), in fp32 and in bf16 (weights cast once), on
   ``--tokens`` rows: GFLOP/s and the bf16 : fp32 ratio.
2. From the model's config and real Games prompts (the first ``--n`` training and test prompts:
   their mean length and the longest common prefix), the multiply-add work of the old path and of
   the least work an exact new path must still do, per stage; then the largest speed-up over the
   old path that this work allows at equal efficiency, with the parts that may run in bf16 (at the
   measured ratio) in bf16:

   - effort: old = every token through all layers, the head forward and backward, the last layer
     backward; new = the same for the suffix tokens only (the shared prefix once); ``bf16``: the
     layers below the target in bf16, ``bf16_head``: the head as well.
   - generation (greedy, ``--new_tokens``): old = every prompt token prefilled plus one token a step;
     new = the suffix prefilled plus the same steps; ``bf16``: everything in bf16 (not exact).

Attention scores are counted (4·context·hidden a token a layer); norms, activations and the
softmax are not, so real paths sit below these bounds. Every figure names the CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dealrec.core.hardware import describe
from dealrec.core.token_rows import common_prefix_len
from dealrec.data.dataset import load_dataset
from dealrec.data.fewshot import build_examples
from dealrec.data.prompts import prompt_of, tokenize_prompt
from dealrec.llm import model as llm

REPO = Path(__file__).resolve().parents[1]


def _rate(rows: int, shapes: list[tuple[int, int]], dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of x @ Wᵀ over ``shapes`` (in, out), best of ``repeats``."""
    xs = [torch.randn(rows, i).to(dtype) for i, _ in shapes]
    ws = [torch.randn(o, i).to(dtype) for i, o in shapes]
    flops = sum(2 * rows * i * o for i, o in shapes)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        t = time.perf_counter()
        for x, w in zip(xs, ws):
            torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def layer_shapes(cfg) -> list[tuple[int, int]]:
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    m = cfg.intermediate_size
    return [(h, h), (h, kv), (h, kv), (h, h), (h, m), (h, m), (m, h)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--tokens", type=int, default=512, help="rows of each timed product")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n", type=int, default=256, help="Games prompts for the token statistics")
    p.add_argument("--cutoff_len", type=int, default=512)
    p.add_argument("--new_tokens", type=int, default=24)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = llm.load_base_model(None).config
    shapes = layer_shapes(cfg)
    head = [(cfg.hidden_size, cfg.vocab_size)]
    rates = {name: {dt: _rate(a.tokens, s, d, a.repeats) for dt, d in (("fp32", torch.float32),
                                                                    ("bf16", torch.bfloat16))}
             for name, s in (("decoder layer", shapes), ("head", head))}
    print(f"\n{describe()}\nproducts of {a.tokens} rows:")
    for name, r in rates.items():
        print(f"  {name:<14s} fp32 {r['fp32']:7.1f} GFLOP/s   bf16 {r['bf16']:7.1f} GFLOP/s   "
              f"ratio {r['bf16'] / r['fp32']:.2f}")

    tok = llm.load_tokenizer(None, padding_side="right")
    data = load_dataset(REPO / "data", "games")
    train = build_examples(data, range(a.n + 100), "train", tok, a.cutoff_len, progress=False)[: a.n]
    test = build_examples(data, data.test_users[: a.n], "test", tok, a.cutoff_len, progress=False)
    t_ids = [tokenize_prompt(tok, ex, a.cutoff_len)["input_ids"] for ex in train]
    g_ids = [list(tok(prompt_of(ex, with_output=False))["input_ids"]) for ex in test]  # as generation does

    n_layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    lin = 2 * sum(i * o for i, o in shapes)  # one token through one layer's linear maps
    head_f = 2 * cfg.hidden_size * cfg.vocab_size

    def attn(ctx: float) -> float:
        return 4 * ctx * hidden

    r_layer = rates["decoder layer"]["bf16"] / rates["decoder layer"]["fp32"]
    r_head = rates["head"]["bf16"] / rates["head"]["fp32"]
    out = {"machine": describe(), "rates_gflops": rates, "model": llm.model_id(None)}

    # effort: per prompt of T tokens; the suffix S = T - C
    T = sum(len(r) for r in t_ids) / len(t_ids)
    C = common_prefix_len(t_ids) - 1
    S = T - C
    lower = lambda n: (n_layers - 1) * n * (lin + attn(T / 2))  # noqa: E731 (mean causal context ≈ T/2)
    top = lambda n: 2 * n * (lin + attn(T / 2))  # noqa: E731  the target layer: forward + backward
    hd = lambda n: 2 * n * head_f  # noqa: E731  head forward + backward to the hidden states
    old = lower(T) + top(T) + hd(T)
    bounds = {"fp32 (exact)": old / (lower(S) + top(S) + hd(S)),
              "bf16 below the target": old / (lower(S) / r_layer + top(S) + hd(S)),
              "bf16_head": old / (lower(S) / r_layer + top(S) + hd(S) / r_head)}
    out["effort"] = {"mean_tokens": T, "prefix": C, "bounds_vs_old": bounds,
                     "fp32_share_of_new_work": (top(S) + hd(S)) / (lower(S) + top(S) + hd(S))}
    print(f"\neffort: {len(t_ids)} training prompts, mean {T:.0f} tokens, shared prefix {C}; "
          f"largest speed-up over the old path the work allows:")
    for k, v in bounds.items():
        print(f"  {k:<22s} {v:5.2f}x")

    # greedy generation: prefill + new tokens, all layers, head on the last position only
    P = sum(len(r) for r in g_ids) / len(g_ids)
    Cg = common_prefix_len(g_ids) - 1
    N = a.new_tokens
    per_tok = n_layers * lin + head_f
    old_g = (P + N) * per_tok + n_layers * (P * attn(P / 2) + N * attn(P + N / 2))
    new_g = (P - Cg + N) * per_tok + n_layers * ((P - Cg) * attn(P / 2) + N * attn(P + N / 2))
    g_bounds = {"fp32 (exact)": old_g / new_g, "bf16 (not exact)": old_g / new_g * r_layer}
    out["generation"] = {"mean_prompt_tokens": P, "prefix": Cg, "new_tokens": N, "bounds_vs_old": g_bounds}
    print(f"\ngreedy generation: {len(g_ids)} test prompts, mean {P:.0f} tokens, shared prefix {Cg}, "
          f"{N} new tokens; largest speed-up over transformers' path the work allows:")
    for k, v in g_bounds.items():
        print(f"  {k:<22s} {v:5.2f}x")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
