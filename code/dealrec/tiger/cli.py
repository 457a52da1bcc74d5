"""TIGER on a selection: semantic IDs, training, decoding of the test users, metrics.

    python tiger.py --train_data_path data/games/train/train-1024.json \
        --val_data_path data/games/valid/valid-1024.json --test_data_path data/games/test/test.json \
        --output_dir model/games/tiger_0_1024 --result_file results/games/tiger_0_1024.json

(``code/finetune/tiger.py``; ``finetune.sh <data> --backend tiger`` runs it after gen_fewshot).
The few-shot files name the users: the training examples' users are the selection, and each gives
its training sequence (every item of it given the items before it; ``--train_examples last``: only
the last given the rest, BIGRec's one example per user), the validation
examples' users give (train items -> first validation item) for early stopping, and the test
file's users are scored, with history = train + validation items, as BIGRec's test prompts.

Item content: the base LLM's title embeddings that grounding computes (cached per model and
catalogue: :func:`dealrec.llm.ground.item_embeddings`), or ``--embeddings FILE`` ([items, dim]).
Outputs: ``<output_dir>/`` (the T5 model, ``semantic_ids.pt``, ``tiger_manifest.json`` written last;
a folder whose manifest key matches the settings is reused, not retrained), ``<result_file>``
(per test user its ranked items and their scores) with a manifest ``<result_file>.json``,
``<result>.metrics.json`` and ``<result>.hits.json`` (per-user hit ranks, as grounding writes).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dealrec.config import build_parser, parse
from dealrec.core.cache import cache_key, tensor_hash, write_manifest
from dealrec.core.files import (
    check_writable,
    load_checked,
    read_json,
    read_json_checked,
    save_tensor,
    write_json,
)
from dealrec.core.hardware import describe, resolve_device
from dealrec.core.locking import output_lock
from dealrec.core.logs import LOG, discard_log, setup_logging
from dealrec.data.dataset import DataError, RecData, load_dataset
from dealrec.metrics import DEFAULT_KS, format_table
from dealrec.presets import finetune_preset
from dealrec.tiger.evaluate import decode_and_score, metrics_path
from dealrec.tiger.model import ModelConfig, build_model
from dealrec.tiger.semantic_ids import QuantizerConfig, SemanticIds, build_semantic_ids
from dealrec.tiger.train import Example, TrainConfig, train_model
from dealrec.tiger.trie import PrefixTrie

MANIFEST = "tiger_manifest.json"
# the training state after each epoch until the model is saved: a stopped run continues from it
RESUME = "train_state.pt"
TRAIN_EXAMPLES = ("last", "prefixes")
PRESETS = finetune_preset("tiger")  # finetune.sh passes its --preset to every step


def _opt(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class TigerConfig:
    """The settings of ``tiger.py``: the files, the run, and the three stages' sections."""

    train_data_path: str = _opt("", "few-shot training examples (gen_fewshot.py): the selection")
    val_data_path: str | None = _opt(None, "few-shot validation examples (early stopping)")
    test_data_path: str = _opt("", "the test examples (gen_fewshot.py's test.json)")
    output_dir: str = _opt("", "the model folder (model/<data>/tiger_<seed>_<n>)")
    result_file: str = _opt("", "the ranking of the test users (results/<data>/tiger_<seed>_<n>.json)")
    data_dir: str = _opt("data", "folder holding <data_name>/")
    data_name: str = "games"
    base_model: str | None = _opt(None, "the LLM whose title embeddings are the items' content (default: embedded)")
    embeddings: str | None = _opt(None, "a [items, dim] tensor file used instead of the LLM's title embeddings")
    seed: int = _opt(0, "seed of the quantiser, the initialisation and the batches")
    gpu: str = _opt("cpu", "GPU index or cpu")
    num_beams: int = _opt(50, "beam width of the ranking (at least the largest K)")
    decode_batch_size: int = _opt(32, "test users per beam search")
    ks: tuple[int, ...] = DEFAULT_KS
    max_test_users: int | None = _opt(None, "only the first N users of the test file")
    train_examples: str = _opt("prefixes", "prefixes: every item of each selected user's training sequence given "
                               "the items before it (TIGER's sequence training); last: only its last item given "
                               "the rest (BIGRec's one few-shot example per user)")
    progress: bool = True
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        for flag in ("train_data_path", "test_data_path", "output_dir", "result_file"):
            if not getattr(self, flag):
                raise ValueError(f"--{flag} is required")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"--ks must be positive integers, got {self.ks}")
        if self.num_beams < max(self.ks):
            raise ValueError(f"--num_beams {self.num_beams} is below the largest cutoff {max(self.ks)}")
        if self.train_examples not in TRAIN_EXAMPLES:
            raise ValueError(f"--train_examples must be one of {', '.join(TRAIN_EXAMPLES)}, got {self.train_examples!r}")
        if self.decode_batch_size < 1:
            raise ValueError(f"--decode_batch_size must be ≥ 1, got {self.decode_batch_size}")
        if self.max_test_users is not None and self.max_test_users < 1:
            raise ValueError(f"--max_test_users must be ≥ 1 (or omitted), got {self.max_test_users}")
        self.quantizer.check()
        self.model.check()
        self.train.check()


def _records(path: str, split: str, data: RecData) -> list[dict[str, Any]]:
    """The records of a few-shot file, each with a valid ``user`` and ``target_ids``."""
    fix = f"give the {split} file written by gen_fewshot.py (data/<data>/{split}/...)"
    rows = read_json_checked(path, f"--{'val' if split == 'valid' else split}_data_path", fix)
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a list of examples; {fix}")
    for i, r in enumerate(rows):
        u = r.get("user") if isinstance(r, dict) else None
        if not isinstance(u, int) or not 0 <= u < data.n_users or not isinstance(r.get("target_ids"), list):
            raise DataError(f"{path}: example {i} has no valid 'user' / 'target_ids' for {data.name} "
                            f"({data.n_users} users); {fix}")
    return rows


def load_examples(cfg: TigerConfig, data: RecData) -> dict[str, Any]:
    """The training and validation examples of the selection and the test users, from the few-shot files."""
    train: list[Example] = []
    for r in _records(cfg.train_data_path, "train", data):
        seq = data.train[r["user"]]
        if not seq or r["target_ids"] != [seq[-1]]:
            raise DataError(f"{cfg.train_data_path}: user {r['user']}'s target is not its last training item; "
                            f"was the file written for another data set than {data.name}?")
        starts = range(1, len(seq)) if cfg.train_examples == "prefixes" else [len(seq) - 1]  # prefixes: histories of ≥ 1 item
        train += [(seq[:t], seq[t]) for t in starts]
    valid: list[Example] = []
    for r in _records(cfg.val_data_path, "valid", data) if cfg.val_data_path else []:
        u = r["user"]
        if data.valid[u]:
            valid.append((data.train[u], data.valid[u][0]))
    test = _records(cfg.test_data_path, "test", data)[: cfg.max_test_users]
    if not test:
        raise DataError(f"{cfg.test_data_path}: no test users")
    users = [r["user"] for r in test]
    return {"train": train, "valid": valid, "users": users, "targets": [r["target_ids"] for r in test],
            "histories": [data.train[u] + data.valid[u] for u in users]}


def item_content(cfg: TigerConfig, data: RecData, device: torch.device) -> torch.Tensor:
    """[items, dim]: ``--embeddings`` or the base LLM's title embeddings (grounding's cache)."""
    if cfg.embeddings:
        emb = load_checked(cfg.embeddings, "--embeddings", f"a [items, dim] float tensor ({data.n_items} rows)")
        if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != data.n_items:
            raise DataError(f"--embeddings {cfg.embeddings}: expected a [{data.n_items}, dim] tensor")
        return emb.float()
    from dealrec.llm.ground import item_embeddings

    return item_embeddings(cfg.base_model, data, device=device, progress=cfg.progress)


def _model_key(cfg: TigerConfig, data: RecData, emb: torch.Tensor, ids: SemanticIds,
               ex: dict[str, Any]) -> dict[str, Any]:
    return {"backend": "tiger-v1", "data_name": data.name, "n_items": data.n_items, "embeddings": tensor_hash(emb),
            "semantic_ids": tensor_hash(ids.codes), "quantizer": cfg.quantizer, "model": cfg.model,
            "train": cfg.train, "seed": cfg.seed, "train_examples": cache_key({"e": ex["train"]}),
            "valid_examples": cache_key({"e": ex["valid"]})}


def trained_model(cfg: TigerConfig, key: dict[str, Any], ids: SemanticIds, ex: dict[str, Any],
                  device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The model of ``output_dir`` when its manifest has ``key``, else a model trained on ``ex`` and
    saved there (the manifest last, so a folder with a manifest is complete); a training stopped
    after some epochs resumes from ``output_dir``/:data:`RESUME`."""
    from transformers import T5ForConditionalGeneration

    out = Path(cfg.output_dir)
    mpath = out / MANIFEST
    if mpath.is_file() and (out / "config.json").is_file():
        manifest = read_json(mpath)
        if manifest.get("key") == cache_key(key):
            LOG.info("TIGER model: reused %s (same settings and selection)", out)
            return T5ForConditionalGeneration.from_pretrained(out).to(device).eval(), manifest
    mpath.unlink(missing_ok=True)
    model = build_model(ids.vocab_size, cfg.model, cfg.seed).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    LOG.info("TIGER model: T5 with %d parameters, vocabulary %d, IDs of %d tokens", n_params, ids.vocab_size, ids.depth)
    resume = out / RESUME
    res = train_model(model, ex["train"], ex["valid"], ids.tokens, cfg.model.max_history, cfg.train, cfg.seed,
                      cfg.progress, resume=resume, resume_key=cache_key(key))
    model.save_pretrained(out)
    save_tensor(out / "semantic_ids.pt", {"codes": ids.codes, "level_sizes": ids.level_sizes})
    manifest = {"key": cache_key(key), "params": key, "n_train": len(ex["train"]), "n_valid": len(ex["valid"]),
                "parameters": n_params, "semantic_ids": ids.stats, "train": dataclasses.asdict(res),
                "machine": describe()}
    write_json(mpath, manifest)
    resume.unlink(missing_ok=True)
    return model, manifest


def run(cfg: TigerConfig) -> dict[str, Any]:
    """Train TIGER on the selection of ``cfg``'s few-shot files and score it on the test users."""
    cfg.check()
    device = resolve_device(cfg.gpu)
    data = load_dataset(cfg.data_dir, cfg.data_name)
    ex = load_examples(cfg, data)
    for folder, flag in ((cfg.output_dir, "--output_dir"), (Path(cfg.result_file).parent, "--result_file")):
        check_writable(folder, flag)
    LOG.info("TIGER on %s: %d training examples, %d validation examples, %d test users", data.name,
             len(ex["train"]), len(ex["valid"]), len(ex["users"]))
    emb = item_content(cfg, data, device)
    from dealrec.llm.model import cache_dir

    ids = build_semantic_ids(emb, cfg.quantizer, cfg.seed, cache_dir(), data.name)
    key = _model_key(cfg, data, emb, ids, ex)
    with output_lock(cfg.output_dir, flag="--output_dir"):
        model, manifest = trained_model(cfg, key, ids, ex, device)
    info = {"data_name": data.name, "backend": "tiger", "model_dir": str(cfg.output_dir),
            "n_items_ranked": data.n_items, "catalogue": "all items", "train_seconds": manifest["train"]["seconds"],
            "semantic_ids": ids.stats, "machine": describe()}
    with output_lock(cfg.result_file, flag="--result_file"):
        report = decode_and_score(model, ex["histories"], ex["users"], ex["targets"], ids.tokens, PrefixTrie(ids.tokens),
                                  cfg.result_file, cfg.ks, cfg.num_beams, cfg.model.max_history,
                                  cfg.decode_batch_size, cfg.progress, info)
        result_key = {**key, "test_users": cache_key({"u": ex["users"]}), "num_beams": cfg.num_beams}
        write_manifest(cfg.result_file, result_key, data_name=data.name, n=len(ex["users"]), backend="tiger",
                       config=dataclasses.asdict(cfg))
    return report


def main(argv: list[str] | None = None, base: TigerConfig | None = None) -> int:
    """``tiger.py``'s command line (options: :class:`TigerConfig`, its sections by their own names);
    ``base``: the defaults (the script sets ``data_dir`` to the repository's ``data/``)."""
    p = build_parser(TigerConfig, {}, PRESETS, base, description=__doc__)
    p.add_argument("--log_file", default=None, help="default: <result>.tiger.log")
    cfg, ns, _ = parse(TigerConfig, argv, {}, PRESETS, base, parser=p)
    if not cfg.result_file:
        p.error("--result_file is required")
    result = Path(cfg.result_file)
    log = setup_logging(ns.log_file or result.with_name(result.stem + ".tiger.log"), defer=ns.log_file is None)
    log.info("TIGER with %s", cfg)
    try:
        report = run(cfg)
    except (DataError, OSError, ValueError) as e:
        log.error("%s", e)
        discard_log()
        return 2
    print(format_table(report, report["ks"], names=("Recall", "NDCG", "Precision", "MRR")))
    print(f"users {report['n_users']}  train {report['train_seconds']} s  decode {report['decode_seconds']} s")
    print(f"metrics: {metrics_path(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
