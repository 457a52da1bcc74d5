"""Throughput of the fine-tuning stage on this machine with the embedded model (not a test).

    python bench/bench_finetune.py [--threads 2] [--n_train 16] [--n_gen 8] [--n_items 256]

Measures LoRA training samples/s (Trainer, micro batch 4), beam-search generation tokens/s
and grounding items/s (title embeddings), and prints a table.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from dealrec.core.files import write_json
from dealrec.core.logs import setup_logging
from dealrec.data.dataset import load_dataset
from dealrec.data.fewshot import build_examples
from dealrec.data.prompts import clean_title
from dealrec.llm import model as llm
from dealrec.llm.finetune import FinetuneConfig, train
from dealrec.llm.generate import generate
from dealrec.llm.ground import embed_texts

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO / "data"))
    p.add_argument("--data_name", default="games")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--cutoff_len", type=int, default=256)
    p.add_argument("--n_train", type=int, default=16, help="training examples (micro batch 4, one epoch)")
    p.add_argument("--n_gen", type=int, default=8)
    p.add_argument("--num_beams", type=int, default=2)
    p.add_argument("--max_new_tokens", type=int, default=16)
    p.add_argument("--n_items", type=int, default=256)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    setup_logging()
    data = load_dataset(a.data_dir, a.data_name, check_dicts=False)
    tok = llm.load_tokenizer(None)
    model = llm.load_base_model(None)
    rows: list[tuple[str, str, str]] = []

    with tempfile.TemporaryDirectory() as tmp:
        ex = build_examples(data, data.valid_users[: a.n_train], "train", tok, a.cutoff_len, progress=False)
        write_json(Path(tmp) / "train.json", ex)
        n_tok = sum(len(tok(e["instruction"] + e["input"] + e["output"])["input_ids"]) for e in ex)
        cfg = FinetuneConfig(train_file=str(Path(tmp) / "train.json"), output_dir=str(Path(tmp) / "out"),
                             batch_size=4, micro_batch_size=4, num_epochs=1, warmup_steps=0,
                             cutoff_len=a.cutoff_len, logging_steps=1000)
        res = train(cfg)
        secs = res.manifest["seconds"]
        rows.append(("train (LoRA, fwd+bwd)", f"{len(ex) / secs:.2f} samples/s",
                     f"{len(ex)} ex, ~{n_tok / len(ex):.0f} tok/ex, {secs:.1f} s"))

    test = build_examples(data, data.test_users[: a.n_gen], "test", tok, a.cutoff_len, progress=False)
    t0 = time.perf_counter()
    outs = generate(model, tok, test, num_beams=a.num_beams, max_new_tokens=a.max_new_tokens, batch_size=4,
                    cutoff_len=a.cutoff_len, progress=False)
    secs = time.perf_counter() - t0
    n_new = sum(len(tok(o)["input_ids"]) for o in outs)
    rows.append((f"generate (beams {a.num_beams})", f"{n_new / secs:.1f} new tok/s",
                 f"{len(test)} prompts, {len(test) / secs:.2f} prompts/s, {secs:.1f} s"))

    titles = [clean_title(t) for t in data.titles[: a.n_items]]
    t0 = time.perf_counter()
    embed_texts(model, tok, titles, batch_size=32, progress=False)
    secs = time.perf_counter() - t0
    full = data.n_items / (a.n_items / secs)
    rows.append(("ground (title embeddings)", f"{a.n_items / secs:.1f} items/s",
                 f"{a.n_items} titles, all {data.n_items}: ~{full / 60:.0f} min"))

    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {a.threads} thread(s), "
          f"model {llm.EMBEDDED_NAME}, cutoff {a.cutoff_len}")
    w = max(len(r[0]) for r in rows)
    for name, rate, note in rows:
        print(f"{name:<{w}}  {rate:<20}  {note}")


if __name__ == "__main__":
    main()
