"""The LLM stages on real Games data, old path vs new path in one process (not a test).

    python bench/bench_llm.py [--stages effort,lora,gen,titles] [--json records/bench/llm.json]

- ``effort``: prompts/s and tokens/s of today's batched exact path (``old``), the shared-prefix
  path (fp32, exact) and its bf16 mode; ratios to ``old`` (agreement on ≥ 1,000 prompts:
  ``bench/bench_effort.py --agree_n``).
- ``lora``: LoRA samples/s in fp32 and with bf16 autocast (CPU with native bf16), each with the
  model's own loss (``--loss_positions all``, the old path) and the head on labelled positions only,
  and the loss curves beside a second fp32 seed (the noise they should stay within). The fp32
  adapter is reused by ``gen``.
- ``gen``: new tokens/s of transformers' beam search (the reference), the prefill-once path
  (fp32) and its bf16 mode on ``--gen_n`` prompts (4 beams); then how many of ``--agree_n`` answers
  (the study's decoding: greedy, 24 new tokens) equal the reference's. ``--gen_modes`` may add
  CTranslate2 (``ct2_float32``, ``ct2_int8``, ``ct2_int16``; ``pip install ctranslate2``), a CPU
  inference engine measured as a candidate against the same reference.
- ``titles``: title embeddings per second of the padded fp32 path (the reference) and the tree
  layout (each shared token prefix once) in fp32 and under bf16 autocast; all titles; the
  grounded top-20 lists of ``--agree_n`` greedy answers (the ``gen`` stage's, else made once by the
  fast exact path and kept in ``--gen_file``) against the reference's.

Every figure names the CPU; ratios are between runs of this process.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from dealrec.core.files import write_json
from dealrec.core.hardware import describe, native_bf16
from dealrec.core.logs import setup_logging
from dealrec.data.dataset import load_dataset
from dealrec.data.fewshot import build_examples
from dealrec.data.prompts import clean_title
from dealrec.llm import model as llm
from dealrec.llm.finetune import FinetuneConfig, train
from dealrec.llm.generate import generate
from dealrec.llm.ground import embed_texts, item_embeddings, rank_items

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def bench_effort(a, data, report) -> None:
    from bench_effort import model_for, scores  # the effort bench's helpers

    from dealrec.scores.effort import EffortConfig

    base = EffortConfig(cutoff_len=a.cutoff_len)
    em = model_for("old", base)
    ex = build_examples(data, range(a.effort_n + 100), "train", em.tokenizer, a.cutoff_len, progress=False)
    ids = em.encode(ex[: a.effort_n])
    del em
    n_tok = sum(len(r) for r in ids)
    out = {}
    for mode in ["old", "fp32"] + (["bf16"] if native_bf16() else []):
        _, sec = scores(mode, base, ids, None)
        out[mode] = {"seconds": sec, "prompts_per_s": len(ids) / sec, "tokens_per_s": n_tok / sec,
                     "vs_old": out["old"]["seconds"] / sec if out else 1.0}
        r = out[mode]
        print(f"effort {mode:<5s} {r['prompts_per_s']:7.2f} prompts/s {r['tokens_per_s']:8.1f} tokens/s "
              f"{r['vs_old']:5.2f}x old", flush=True)
    report["effort"] = {"n": a.effort_n, **out}


def bench_lora(a, data, tok, report, tmp: Path) -> Path:
    """LoRA samples/s: fp32 with the model's own loss (every position's logits: the old path) against
    the head on labelled positions only, bf16 autocast, both; a second fp32 seed is the noise the
    loss curves should stay within."""
    ex = build_examples(data, data.valid_users[: a.lora_n], "train", tok, a.lora_cutoff, progress=False)
    write_json(tmp / "train.json", ex)
    bf16 = ["bf16"] if native_bf16() else []
    runs = [(prec, 0, pos) for prec in ["fp32"] + bf16 for pos in ("all", "labelled")] + [("fp32", 1, "all")]
    out = {}
    for prec, seed, pos in runs:
        cfg = FinetuneConfig(train_file=str(tmp / "train.json"), output_dir=str(tmp / f"lora_{prec}_{pos}_{seed}"),
                             batch_size=8, micro_batch_size=4, num_epochs=1, learning_rate=2e-3, warmup_steps=0,
                             cutoff_len=a.lora_cutoff, train_on_inputs=False, logging_steps=1, seed=seed,
                             precision=prec, loss_positions=pos)
        m = train(cfg).manifest
        losses = [h["loss"] for h in m["log_history"] if "loss" in h]
        out[f"{prec}_{pos}_seed{seed}"] = {"seconds": m["seconds"], "samples_per_s": len(ex) / m["seconds"],
                                           "losses": losses, "loss_positions_ran": m["loss_positions_ran"]}
    ref = out["fp32_all_seed0"]
    for name, r in out.items():
        r["vs_fp32_all"] = ref["seconds"] / r["seconds"]
        r["max_abs_loss_diff_vs_fp32_all_seed0"] = max(abs(x - y) for x, y in zip(r["losses"], ref["losses"]))
        print(f"lora {name:<20s} {r['samples_per_s']:6.2f} samples/s {r['vs_fp32_all']:5.2f}x fp32 all  loss "
              f"{r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}, max |Δ| vs fp32 all seed 0 "
              f"{r['max_abs_loss_diff_vs_fp32_all_seed0']:.4f}", flush=True)
    report["lora"] = {"n_examples": len(ex), "cutoff_len": a.lora_cutoff, "batch": 8, "lr": 2e-3,
                      "loss_on": "response", **out}
    return tmp / "lora_fp32_all_0"


def _new_tokens(tok, texts: list[str]) -> int:
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)  # + the EOS


def _gen_setup(a, data, tok, adapter: Path | None, n: int) -> tuple[object, list[dict]]:
    """The embedded model (with ``adapter``) and the prompts of ``n`` random test users (seed 0)."""
    model = llm.load_base_model(None)
    llm.align_special_tokens(model, tok)
    if adapter is not None:
        model = llm.load_adapter(model, adapter)
    users = random.Random(0).sample(list(data.test_users), n)
    return model.eval(), build_examples(data, users, "test", tok, a.cutoff_len, progress=False)


class _CT2:
    """CTranslate2 (an optional CPU inference engine, ``pip install ctranslate2``) on the same model:
    a LoRA adapter merged, saved, converted once to float32 weights; ``compute_type`` chooses the
    kernels (``float32``, ``int8``, ``int16``) when a generator is made. A candidate measured
    against the reference path, not part of the package."""

    def __init__(self, model, tok, tmp: Path):
        import ctranslate2
        from ctranslate2.converters import TransformersConverter

        src, self.dir = tmp / "hf_merged", tmp / "ct2"
        merged = copy.deepcopy(model).merge_and_unload() if hasattr(model, "merge_and_unload") else model
        merged.save_pretrained(src)
        tok.save_pretrained(src)
        t = time.perf_counter()
        TransformersConverter(str(src)).convert(str(self.dir), quantization="float32")
        print(f"ctranslate2 {ctranslate2.__version__}: converted in {time.perf_counter() - t:.0f} s", flush=True)
        self.ct2, self.tok, self.gens = ctranslate2, tok, {}

    def __call__(self, ex: list[dict], compute_type: str, num_beams: int, max_new_tokens: int, batch: int,
                 cutoff_len: int) -> list[str]:
        from dealrec.llm.generate import _encode

        if compute_type not in self.gens:
            self.gens[compute_type] = self.ct2.Generator(str(self.dir), device="cpu", compute_type=compute_type,
                                                         intra_threads=torch.get_num_threads())
        toks = [self.tok.convert_ids_to_tokens(s) for s in _encode(self.tok, ex, cutoff_len)]
        res = self.gens[compute_type].generate_batch(
            toks, max_batch_size=batch, beam_size=num_beams, max_length=max_new_tokens, length_penalty=1.0,
            include_prompt_in_result=False, end_token=self.tok.eos_token)
        return [self.tok.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in res]


def bench_gen(a, data, tok, report, adapter: Path | None, tmp: Path) -> list[str]:
    paths = [("hf", "fp32"), ("fast", "fp32")] + ([("fast", "bf16")] if native_bf16() else [])
    if a.gen_modes:
        modes = a.gen_modes.split(",")
        paths = [p for p in paths if f"{p[0]}_{p[1]}" in modes] + [
            ("ct2", m.removeprefix("ct2_")) for m in modes if m.startswith("ct2_")]
    use_ct2 = any(eng == "ct2" for eng, _ in paths)
    if use_ct2 and importlib.util.find_spec("ctranslate2") is None:
        sys.exit("--gen_modes ct2_*: the ctranslate2 package is not installed (pip install ctranslate2)")
    model, ex = _gen_setup(a, data, tok, adapter, max(a.gen_n, a.agree_n))
    ct2 = _CT2(model, tok, tmp) if use_ct2 else None

    def run(eng: str, prec: str, exs: list[dict], num_beams: int, max_new_tokens: int, batch_size: int,
            progress: bool) -> list[str]:
        if eng == "ct2":
            return ct2(exs, prec, num_beams, max_new_tokens, batch_size, a.cutoff_len)
        return generate(model, tok, exs, num_beams=num_beams, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, progress=progress, engine=eng, precision=prec)

    out, answers = {}, {}
    for _ in range(a.repeats if a.gen_n else 0):  # the paths interleaved, the fastest of each kept (a shared machine)
        for eng, prec in paths:
            t = time.perf_counter()
            ans = run(eng, prec, ex[: a.gen_n], a.num_beams, a.max_new_tokens, a.gen_batch, progress=False)
            sec = time.perf_counter() - t
            answers[(eng, prec)] = ans
            prev = out.get(f"{eng}_{prec}", {}).get("seconds", float("inf"))
            out[f"{eng}_{prec}"] = {"seconds": min(sec, prev), "new_tokens_per_s": _new_tokens(tok, ans) / min(sec, prev),
                                    "equal_to_hf": sum(x == y for x, y in zip(ans, answers[("hf", "fp32")]))}
    for name, r in out.items():
        r["vs_hf"] = out["hf_fp32"]["seconds"] / r["seconds"]
        print(f"generate {name:<10s} {r['new_tokens_per_s']:6.1f} new tokens/s {r['vs_hf']:5.2f}x hf, "
              f"{r['equal_to_hf']}/{a.gen_n} answers equal ({a.num_beams} beams, {a.max_new_tokens} new tokens)",
              flush=True)
    agree = {}
    ref = None
    batches = [int(x) for x in a.agree_batches.split(",")] if a.agree_batches else [a.gen_batch]
    greedy_paths = [(eng, prec, a.gen_batch if eng == "hf" else bs) for eng, prec in paths
                    for bs in ([a.gen_batch] if eng == "hf" else batches)]
    for eng, prec, bs in greedy_paths if a.agree_n else []:
        t = time.perf_counter()
        ans = run(eng, prec, ex[: a.agree_n], 1, 24, bs, progress=True)
        sec = time.perf_counter() - t
        ref = ans if ref is None else ref
        name = f"{eng}_{prec}" + (f"_batch{bs}" if bs != a.gen_batch else "")
        agree[name] = {"seconds": sec, "batch_size": bs, "equal_to_hf": sum(x == y for x, y in zip(ans, ref)),
                       "new_tokens_per_s": _new_tokens(tok, ans) / sec,
                       "vs_hf": agree.get("hf_fp32", {}).get("seconds", sec) / sec}
        print(f"agreement {name}: {agree[name]['equal_to_hf']}/{a.agree_n} answers equal to hf "
              f"(greedy, 24 new tokens, batch {bs}), {agree[name]['new_tokens_per_s']:.1f} new tokens/s, "
              f"{agree[name]['vs_hf']:.2f}x hf", flush=True)
    report["gen"] = {"n": a.gen_n, "num_beams": a.num_beams, "max_new_tokens": a.max_new_tokens,
                     "adapter": "LoRA of the lora stage" if adapter else "none (base model)", **out,
                     "agreement_greedy24": {"n": a.agree_n, **agree}}
    return ref


def _greedy_answers(a, data, tok) -> list[str]:
    """``--agree_n`` greedy 24-token answers of the base model (or ``--lora_weights``) for random
    test users, the fast exact path; kept in ``--gen_file`` when given."""
    import json

    if a.gen_file and Path(a.gen_file).exists():
        return json.loads(Path(a.gen_file).read_text())
    model, ex = _gen_setup(a, data, tok, Path(a.lora_weights) if a.lora_weights else None, a.agree_n)
    ans = generate(model, tok, ex, num_beams=1, max_new_tokens=24, batch_size=a.gen_batch, progress=True,
                   engine="fast", precision="fp32")
    if a.gen_file:
        write_json(a.gen_file, ans)
    return ans


def _max_rel_diff(e: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest per-row relative L2 difference of ``e`` to ``ref``."""
    return float(((e - ref).norm(dim=1) / ref.norm(dim=1)).max())


def bench_titles(a, data, tok, report, generations: list[str] | None) -> None:
    """Titles/s of the padded fp32 path (the reference) against the tree layout in fp32 and under bf16
    autocast, on ``--titles_n`` random titles and on all of them; agreement: the largest relative
    difference of the fp32 embeddings, and the grounded top-20 lists of ``generations`` (greedy answers)."""
    model = llm.load_base_model(None).eval()
    titles = [clean_title(t) for t in data.titles]
    sample = random.Random(0).sample(titles, min(a.titles_n, len(titles)))
    paths = [("padded", "fp32"), ("tree", "fp32")] + ([("tree", "bf16"), ("padded", "bf16")] if native_bf16() else [])
    out: dict = {}
    embs = {}
    for layout, prec in paths:
        t = time.perf_counter()
        embs[(layout, prec)] = embed_texts(model, tok, sample, batch_size=32, progress=False, layout=layout,
                                           precision=prec)
        out[f"{layout}_{prec}"] = {"titles_per_s": len(sample) / (time.perf_counter() - t)}
    ref = embs[("padded", "fp32")]
    for (layout, prec), e in embs.items():
        r = out[f"{layout}_{prec}"]
        r["vs_padded_fp32"] = r["titles_per_s"] / out["padded_fp32"]["titles_per_s"]
        r["max_rel_diff"] = _max_rel_diff(e, ref)
        print(f"titles {layout:<6s} {prec}: {r['titles_per_s']:6.1f}/s {r['vs_padded_fp32']:5.2f}x padded fp32, "
              f"max rel. difference {r['max_rel_diff']:.1e} ({len(sample)} random titles)", flush=True)
    full = {}
    for layout, prec in [("tree", "fp32")] + ([("tree", "bf16")] if native_bf16() else []) + \
            ([("padded", "fp32")] if a.titles_full_reference else []):
        t = time.perf_counter()
        full[(layout, prec)] = embed_texts(model, tok, titles, batch_size=32, progress=True, desc=f"{layout} {prec}",
                                           layout=layout, precision=prec)
        out[f"all_{layout}_{prec}_seconds"] = time.perf_counter() - t
        print(f"titles: all {len(titles)} {layout} {prec}: {out[f'all_{layout}_{prec}_seconds']:.0f} s", flush=True)
    e32 = full.get(("padded", "fp32"))
    if e32 is None:  # the padded fp32 embeddings of all titles as cached by evaluate.py, if there
        e32 = item_embeddings(None, data, model, tok, progress=True, layout="padded")
    tree32 = full[("tree", "fp32")]
    out["all_tree_fp32_max_rel_diff"] = _max_rel_diff(tree32, e32)
    print(f"titles: all, tree fp32 vs padded fp32: max rel. difference {out['all_tree_fp32_max_rel_diff']:.1e}",
          flush=True)
    if generations:
        texts = [g.strip().strip('"') for g in generations]
        r32 = rank_items(embed_texts(model, tok, texts, progress=False, layout="padded"), e32, 20)
        for (layout, prec), e in full.items():
            rk = rank_items(embed_texts(model, tok, texts, progress=False, layout=layout, precision=prec), e, 20)
            ov = [len(set(x.tolist()) & set(y.tolist())) / 20 for x, y in zip(r32, rk)]
            same = sum(x.tolist() == y.tolist() for x, y in zip(r32, rk))
            out[f"top20_{layout}_{prec}"] = {"n": len(ov), "mean_overlap": sum(ov) / len(ov), "min_overlap": min(ov),
                                             "identical_lists": same}
            print(f"titles: grounded top-20, {layout} {prec} vs padded fp32 on {len(ov)} generations: overlap mean "
                  f"{sum(ov) / len(ov):.3f}, min {min(ov):.2f}; {same} lists identical", flush=True)
    report["titles"] = {"n_timed": len(sample), **out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO / "data"))
    p.add_argument("--stages", default="effort,lora,gen,titles")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cutoff_len", type=int, default=512)
    p.add_argument("--effort_n", type=int, default=64)
    p.add_argument("--lora_n", type=int, default=64)
    p.add_argument("--lora_cutoff", type=int, default=256)
    p.add_argument("--lora_weights", default=None, help="adapter for gen (default: the lora stage's fp32 one)")
    p.add_argument("--gen_n", type=int, default=16)
    p.add_argument("--gen_batch", type=int, default=8)
    p.add_argument("--num_beams", type=int, default=4)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1, help="gen: time each path this often, interleaved; keep the fastest")
    p.add_argument("--agree_n", type=int, default=300)
    p.add_argument("--agree_batches", default=None,
                   help="gen: batch sizes of the fast paths in the greedy run, e.g. 8,32,64 (default: --gen_batch)")
    p.add_argument("--gen_modes", default=None,
                   help="gen: timed paths, e.g. hf_fp32,fast_fp32 (default: all but ct2); ct2_float32, ct2_int8, "
                        "ct2_int16: CTranslate2 (pip install ctranslate2)")
    p.add_argument("--titles_n", type=int, default=2048)
    p.add_argument("--titles_full_reference", action="store_true",
                   help="titles: also time the padded fp32 path on all titles (else its cached embeddings are used)")
    p.add_argument("--gen_file", default=None, help="titles: the greedy answers to ground (made and kept here if absent)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    setup_logging()
    stages = set(a.stages.split(","))
    data = load_dataset(a.data_dir, "games", check_dicts=False)
    tok = llm.load_tokenizer(None, padding_side="left")
    report: dict = {"machine": describe()}
    print(describe(), flush=True)
    adapter = Path(a.lora_weights) if a.lora_weights else None
    gens = None
    with tempfile.TemporaryDirectory() as tmp:
        if "effort" in stages:
            bench_effort(a, data, report)
        if "lora" in stages:
            adapter = adapter or bench_lora(a, data, tok, report, Path(tmp))
        if "gen" in stages:
            gens = bench_gen(a, data, tok, report, adapter, Path(tmp))
        if "titles" in stages:
            if gens is None and a.agree_n:
                gens = _greedy_answers(a, data, tok)
            bench_titles(a, data, tok, report, gens)
    if a.json:
        write_json(a.json, report)


if __name__ == "__main__":
    main()
