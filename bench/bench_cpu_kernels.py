"""The two CPU savings of ``dealrec.cpu_kernels``, each against its absence in one process (not a test).

    python bench/bench_cpu_kernels.py [--stages lora,effort,gen,titles] [--threads 2] [--json F]

- ``lora``: LoRA fine-tuning (real Games training prompts, the study's recipe: batch 8 of micro-batches
  of 4, response-only loss on labelled positions, bf16 autocast where the CPU has native bf16) with
  neither saving (``old``), shared key/value heads in sdpa (``gqa``), the frozen weights cast to bf16
  once (``cast_once``) and both; the runs interleaved ``--repeats`` times, the fastest of each kept.
  Agreement with ``old``: the adapters' relative difference ‖Δ‖/‖old‖ (bit-equal or not) and the loss curves.
- ``effort`` / ``gen`` / ``titles``: the stages whose attention has more than one query position (the
  shared-prefix effort path, greedy generation's prefill, the tree-layout title embeddings), with the
  copied and the shared key/value heads; agreement: scores' largest relative difference, equal
  answers, embeddings' largest relative difference.

Every figure names the CPU; ratios are between runs of this process.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from dealrec import finetune, llm
from dealrec.cpu_kernels import GQA_ENV, frozen_bf16_weights
from dealrec.data import load_dataset
from dealrec.fewshot import build_examples
from dealrec.finetune import FinetuneConfig, train
from dealrec.generate import generate
from dealrec.ground import embed_texts
from dealrec.hardware import describe, native_bf16
from dealrec.io import setup_logging, write_json
from dealrec.prompts import clean_title
from dealrec.scores.effort import EffortConfig, EffortModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


@contextlib.contextmanager
def kernels(gqa: bool, cast_once: bool = True):
    """The run's setting of each saving (the cast-once one as fine-tuning calls it)."""
    old_env, old_cast = os.environ.get(GQA_ENV), finetune.frozen_bf16_weights
    os.environ[GQA_ENV] = "1" if gqa else "0"
    finetune.frozen_bf16_weights = (frozen_bf16_weights if cast_once
                                    else (lambda model, enabled=True: contextlib.nullcontext(0)))
    try:
        yield
    finally:
        finetune.frozen_bf16_weights = old_cast
        if old_env is None:
            os.environ.pop(GQA_ENV, None)
        else:
            os.environ[GQA_ENV] = old_env


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


def _timed(runs: dict, name: str, fn, repeats_done: dict) -> None:
    t = time.perf_counter()
    result = fn()
    sec = time.perf_counter() - t
    prev = runs.get(name)
    if prev is None or sec < prev[0]:
        runs[name] = (sec, result)
    repeats_done[name] = repeats_done.get(name, 0) + 1


def _ratios(stage: str, runs: dict, unit: str, n: int, agree) -> dict:
    ref_sec = runs["old"][0]
    out = {}
    for name, (sec, result) in runs.items():
        out[name] = {"seconds": round(sec, 2), f"{unit}_per_s": n / sec, "vs_old": ref_sec / sec, **agree(result)}
        extra = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in agree(result).items())
        print(f"{stage} {name:<10s} {n / sec:8.2f} {unit}/s {ref_sec / sec:5.2f}x old  {extra}", flush=True)
    return out


def bench_lora(a, data, tok, tmp: Path) -> dict:
    users = random.Random(0).sample(range(data.n_users), a.lora_n)
    write_json(tmp / "train.json", build_examples(data, users, "train", tok, 512, progress=False))
    prec = "bf16" if native_bf16() else "fp32"
    modes = {"old": (False, False), "gqa": (True, False), "cast_once": (False, True), "both": (True, True)}
    if prec == "fp32":  # the cast-once saving is for bf16 autocast only
        modes = {k: v for k, v in modes.items() if not v[1]}
    runs: dict = {}
    done: dict = {}

    def one(name: str, gqa: bool, once: bool):
        out = tmp / f"lora_{name}_{done.get(name, 0)}"
        cfg = FinetuneConfig(train_file=str(tmp / "train.json"), output_dir=str(out), batch_size=8,
                             micro_batch_size=4, num_epochs=1, learning_rate=2e-3, warmup_steps=0, cutoff_len=512,
                             train_on_inputs=False, logging_steps=1, seed=0, precision=prec, val_set_size=0)
        with kernels(gqa, once):
            m = train(cfg).manifest
        return [h["loss"] for h in m["log_history"] if "loss" in h], load_file(str(out / "adapter_model.safetensors"))

    for _ in range(a.repeats):
        for name, (gqa, once) in modes.items():
            _timed(runs, name, lambda n=name, g=gqa, o=once: one(n, g, o), done)
    ref_loss, ref_w = runs["old"][1]

    def agree(result):
        loss, w = result
        diff = torch.cat([(w[k].double() - ref_w[k].double()).flatten() for k in ref_w])
        norm = torch.cat([ref_w[k].double().flatten() for k in ref_w])
        return {"adapter_rel_diff": float(diff.norm() / norm.norm()), "adapter_equal": all(
                    torch.equal(w[k], ref_w[k]) for k in ref_w),
                "loss_curve_max_abs_diff": max(abs(x - y) for x, y in zip(loss, ref_loss))}

    return {"n_examples": a.lora_n, "precision": prec, "repeats": a.repeats,
            **_ratios("lora", runs, "samples", a.lora_n, agree)}


def bench_effort(a, data) -> dict:
    prec = "bf16" if native_bf16() else "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        em = EffortModel.load(EffortConfig(cutoff_len=512, precision=prec))
    ids = em.encode(build_examples(data, range(a.effort_n), "train", em.tokenizer, 512, progress=False))
    runs: dict = {}
    done: dict = {}
    for _ in range(a.repeats):
        for name, gqa in (("old", False), ("gqa", True)):
            with kernels(gqa):
                _timed(runs, name, lambda n=name: em.norms(ids, desc=n), done)
    ref = runs["old"][1]
    return {"n": len(ids), "precision": prec,
            **_ratios("effort", runs, "prompts", len(ids), lambda s: {"max_rel_diff": _rel(s, ref)})}


def bench_gen(a, data, tok) -> dict:
    model = llm.load_base_model(None)
    llm.align_special_tokens(model, tok)
    users = random.Random(0).sample(list(data.test_users), a.gen_n)
    ex = build_examples(data, users, "test", tok, 512, progress=False)
    runs: dict = {}
    done: dict = {}
    for _ in range(a.repeats):
        for name, gqa in (("old", False), ("gqa", True)):
            with kernels(gqa):
                _timed(runs, name, lambda: generate(model.eval(), tok, ex, num_beams=1, max_new_tokens=24,
                                                    batch_size=32, progress=False, engine="fast"), done)
    ref = runs["old"][1]
    return {"n": len(ex), "greedy_new_tokens": 24, **_ratios(
        "gen", runs, "prompts", len(ex), lambda ans: {"equal_answers": sum(x == y for x, y in zip(ans, ref))})}


def bench_titles(a, data, tok) -> dict:
    model = llm.load_base_model(None).eval()
    titles = random.Random(0).sample([clean_title(t) for t in data.titles], a.titles_n)
    prec = "bf16" if native_bf16() else "fp32"
    runs: dict = {}
    done: dict = {}
    for _ in range(a.repeats):
        for name, gqa in (("old", False), ("gqa", True)):
            with kernels(gqa):
                _timed(runs, name, lambda: embed_texts(model, tok, titles, batch_size=32, progress=False,
                                                       layout="tree", precision=prec), done)
    ref = runs["old"][1]
    return {"n": len(titles), "layout": "tree", "precision": prec,
            **_ratios("titles", runs, "titles", len(titles), lambda e: {"max_rel_diff": _rel(e, ref)})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO / "data"))
    p.add_argument("--stages", default="lora,effort,gen,titles")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="each path timed this often, interleaved; fastest kept")
    p.add_argument("--lora_n", type=int, default=32)
    p.add_argument("--effort_n", type=int, default=48)
    p.add_argument("--gen_n", type=int, default=64)
    p.add_argument("--titles_n", type=int, default=1024)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    setup_logging()
    data = load_dataset(a.data_dir, "games", check_dicts=False)
    tok = llm.load_tokenizer(None, padding_side="left")
    report: dict = {"machine": describe(), "repeats": a.repeats}
    print(describe(), flush=True)
    stages = a.stages.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for stage in stages:
            if stage == "lora":
                report["lora"] = bench_lora(a, data, tok, Path(tmp))
            elif stage == "effort":
                report["effort"] = bench_effort(a, data)
            elif stage == "gen":
                report["gen"] = bench_gen(a, data, tok)
            elif stage == "titles":
                report["titles"] = bench_titles(a, data, tok)
            else:
                raise SystemExit(f"--stages: unknown stage {stage!r} (lora, effort, gen, titles)")
    if a.json:
        write_json(a.json, report)


if __name__ == "__main__":
    main()
