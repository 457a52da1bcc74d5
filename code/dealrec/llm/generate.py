"""Beam-search generation of the recommended title (BIGRec's ``inference_ddp.py``).

:func:`generate` answers a list of alpaca examples with the text the model writes after
``### Response:``: prompts are left-padded and batched by length (longest first, so that an
out-of-memory error shows up at once); on a CUDA out-of-memory error the batch is halved (the
number of beams never changes, unlike the original, which lowered the beam size).

:func:`run_inference` is the script's body. Launched with ``torchrun --nproc_per_node N`` it
splits the test users into N contiguous shards, gathers the answers once at the end and
writes them in test-file order. Answers are appended per batch to
``<result>.partial-rank{r}.jsonl``; a rerun with the same settings (any number of processes)
skips the users already answered.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dealrec.config import check_minimums
from dealrec.core import faults
from dealrec.core.cache import cache_key, cached, file_hash, manifest_path, write_manifest
from dealrec.core.dist import init_distributed
from dealrec.core.files import OutputError, check_writable, read_json, read_json_checked, write_json
from dealrec.core.hardware import cpu_precision
from dealrec.core.locking import output_lock
from dealrec.core.logs import LOG
from dealrec.core.token_rows import pad_batch
from dealrec.data.prompts import prompt_of
from dealrec.llm.beam import unsupported_settings

RECORD_FIELDS = ("predict", "output", "user", "target_ids")
GEN_ENGINES = ("auto", "fast", "hf")
GEN_AUTO = "fp32"  # what --gen_precision auto runs (bf16 changes some answers: docs/performance.md)


def _encode(tokenizer: Any, examples: Sequence[dict[str, Any]], cutoff_len: int | None) -> list[list[int]]:
    """Token ids of the inference prompts, as in training (BOS when the tokenizer adds one).

    An EOS that the tokenizer appends (``add_eos_token``) is dropped: the model must continue
    the prompt. Over-long prompts lose their oldest tokens after the BOS, which is kept.
    """
    bos, eos = getattr(tokenizer, "bos_token_id", None), tokenizer.eos_token_id
    out = []
    for ex in examples:
        ids = list(tokenizer(prompt_of(ex, with_output=False))["input_ids"])
        if len(ids) > 1 and eos is not None and ids[-1] == eos:
            ids = ids[:-1]
        if cutoff_len and len(ids) > cutoff_len:
            head = [bos] if bos is not None and ids[0] == bos and cutoff_len > 1 else []
            ids = head + ids[len(ids) - cutoff_len + len(head):]
        out.append(ids)
    return out


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def bf16_copy(model: Any) -> Any:
    """A bf16 copy of ``model`` for inference, a LoRA adapter merged into its weights."""
    model = copy.deepcopy(model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.to(torch.bfloat16).eval()


def _fast_runner(model: Any, tokenizer: Any, seqs: list[list[int]], num_beams: int, max_new_tokens: int,
                 precision: str) -> Callable[[list[list[int]]], list[str]]:
    """A batch function for :func:`dealrec.llm.beam.beam_search` with the prefix of all ``seqs`` cached."""
    from dealrec.llm.beam import beam_search, shared_prefix

    eos = [tokenizer.eos_token_id]  # what the reference path stops on (its GenerationConfig sets it)
    lp = getattr(getattr(model, "generation_config", None), "length_penalty", None)
    lp = 1.0 if lp is None else float(lp)  # the reference inherits the model's value, else 1.0
    if precision == "bf16":
        model = bf16_copy(model)
    with torch.no_grad():
        prefix = shared_prefix(model, seqs)
    LOG.info("generation: prefill once per prompt, %d shared prefix tokens computed once, %s",
             len(prefix.ids) if prefix else 0, precision)

    def run(batch: list[list[int]]) -> list[str]:
        out = beam_search(model, batch, num_beams, max_new_tokens, eos, tokenizer.pad_token_id, prefix,
                          length_penalty=lp)
        return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]

    return run


@torch.no_grad()
def _generate_batch(model: Any, tokenizer: Any, seqs: list[list[int]], gen_config: Any) -> list[str]:
    ids, mask = pad_batch(seqs, tokenizer.pad_token_id, "left")
    device = _model_device(model)
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_config)
    sequences = out.sequences if hasattr(out, "sequences") else out
    new = sequences[:, ids.shape[1]:]
    return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]


def resolve_engine(engine: str, model: Any) -> str:
    """``auto`` = the prefill-once path (:mod:`dealrec.llm.beam`) on a CPU, transformers' on a GPU.

    The fast path is also refused for a quantized model and for a model whose generation config
    asks for logits processors it does not implement (a log line says why).
    """
    if engine not in GEN_ENGINES:
        raise ValueError(f"--gen_engine must be one of {GEN_ENGINES}, got {engine!r}")
    if engine == "hf":
        return "hf"
    why = []
    if _model_device(model).type != "cpu" and engine == "auto":
        why.append("a GPU (transformers' path is the GPU path)")
    if getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False):
        why.append("a quantized model")
    extra = unsupported_settings(getattr(model, "generation_config", None))
    if extra:
        why.append(f"generation_config.json sets {', '.join(extra)}")
    if why:
        if engine == "fast":
            raise ValueError(f"--gen_engine fast cannot run here: {'; '.join(why)}; use --gen_engine hf")
        LOG.info("generation: transformers' beam search (%s)", "; ".join(why))
        return "hf"
    return "fast"


def generate(
    model: Any,
    tokenizer: Any,
    examples: Sequence[dict[str, Any]],
    num_beams: int = 4,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    cutoff_len: int | None = 512,
    progress: bool = True,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
    engine: str = "auto",
    precision: str = "fp32",
) -> list[str]:
    """The response text of every example, in input order.

    ``on_batch(indices, texts)`` is called after each batch (for saving partial results).
    ``engine``: ``hf`` = transformers' ``generate`` (the reference), ``fast`` = :mod:`dealrec.llm.beam`
    (prefill once per prompt, shared prefix once), ``auto`` = :func:`resolve_engine`.
    ``precision``: ``bf16`` runs the fast path's model in bf16 (CPU with native bf16 only), ``auto``
    = ``GEN_AUTO``.
    """
    from transformers import GenerationConfig

    if not examples:
        return []
    if num_beams < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError("num_beams, max_new_tokens and batch_size must be positive")
    engine = resolve_engine(engine, model)
    precision = cpu_precision(precision, _model_device(model), "--gen_precision", auto=GEN_AUTO)
    if engine == "hf" and precision == "bf16":
        LOG.warning("--gen_precision bf16 applies to the fast engine only; transformers' path runs the model as loaded")
        precision = "fp32"
    gen_config = GenerationConfig(
        num_beams=num_beams,
        num_return_sequences=1,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
    )
    seqs = _encode(tokenizer, examples, cutoff_len)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    answers: list[str | None] = [None] * len(seqs)
    pos, bs = 0, batch_size
    run_batch = functools.partial(_generate_batch, model, tokenizer, gen_config=gen_config)
    if engine == "fast":
        run_batch = _fast_runner(model, tokenizer, seqs, num_beams, max_new_tokens, precision)
    bar = tqdm(total=len(order), desc="generate", disable=not progress, leave=False)
    while pos < len(order):
        idx = order[pos: pos + bs]
        try:
            texts = run_batch([seqs[i] for i in idx])
        except torch.cuda.OutOfMemoryError:
            if bs == 1:
                raise
            bs = max(1, bs // 2)
            LOG.warning("CUDA out of memory: batch size lowered to %d (beams stay %d)", bs, num_beams)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        for i, t in zip(idx, texts):
            answers[i] = t
        if on_batch is not None:
            on_batch(list(idx), texts)
        pos += len(idx)
        bar.update(len(idx))
    bar.close()
    return [a if a is not None else "" for a in answers]


# ------------------------------------------------------------------------------------------
# The inference run (single process or torchrun)
# ------------------------------------------------------------------------------------------


# Settings that change no generated text (where it goes, progress, throughput: the engine and
# the batch size change only the float summation order): left out of the result's key.
NOT_IN_KEY = ("result_file", "overwrite", "progress", "batch_size", "engine")


@dataclass
class InferenceConfig:
    test_file: str = ""  # required (the original's --test_data_path)
    result_file: str = ""  # required (--result_json_data)
    base_model: str | None = None
    lora_weights: str | None = None  # None: the base model without adapter
    num_beams: int = 4
    max_new_tokens: int = 128
    batch_size: int = 8
    max_test_users: int | None = None
    cutoff_len: int = 512
    quantization: str | None = None
    engine: str = "auto"  # GEN_ENGINES: auto = the prefill-once path on a CPU, transformers' on a GPU
    precision: str = "fp32"  # fp32 | bf16 | auto (the fast engine only; bf16 where the CPU has it natively)
    overwrite: bool = False
    progress: bool = True

    def resolved_precision(self) -> str:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return cpu_precision(self.precision, device, "--gen_precision", auto=GEN_AUTO, warn=False)

    def check_settings(self) -> None:
        """The numbers and names alone (no file is read): each setting in its range, naming the argument."""
        if self.engine not in GEN_ENGINES:
            raise ValueError(f"--gen_engine must be one of {GEN_ENGINES}, got {self.engine!r}")
        cpu_precision(self.precision, "cpu", "--gen_precision", warn=False)
        check_minimums(self, (("num_beams", 1), ("max_new_tokens", 1), ("batch_size", 1), ("cutoff_len", 8)))
        if self.max_test_users is not None and self.max_test_users < 1:
            raise ValueError(f"--max_test_users must be ≥ 1 (or omitted), got {self.max_test_users}")

    def validate(self) -> None:
        """Fail before the model is loaded or anything is written, naming the argument: the
        settings (:meth:`check_settings`), then the files and folders they name."""
        from dealrec.llm.model import check_adapter_folder, check_model_folder

        self.check_settings()
        if Path(self.result_file).is_dir():
            raise ValueError(f"--result_json_data {self.result_file}: a folder; give the result file's path "
                             "(e.g. results/games/0_1024.json)")
        read_test_file(self.test_file, self.max_test_users)
        check_model_folder(self.base_model)
        if self.lora_weights:
            check_adapter_folder(self.lora_weights, "--lora_weights")

    def settings_key(self) -> dict[str, Any]:
        """The settings that determine the generations besides the test file and the adapter:
        every field but :data:`NOT_IN_KEY`, the precision only where bf16 runs (an fp32 run's key
        has no precision field), the model by its identity."""
        from dealrec.core.model_id import model_id

        d = asdict(self)
        for k in NOT_IN_KEY:
            d.pop(k)
        if self.resolved_precision() == "fp32":
            d.pop("precision")
        d["base_model"] = model_id(self.base_model)
        return d

    def key(self) -> dict[str, Any]:
        """The parameters that determine the result file: the settings and the hashes of the
        test file and of the adapter's weights."""
        d = self.settings_key()
        d["test_file"] = file_hash(self.test_file) if Path(self.test_file).is_file() else self.test_file
        if self.lora_weights:
            w = Path(self.lora_weights) / "adapter_model.safetensors"
            d["lora_weights"] = file_hash(w) if w.is_file() else str(self.lora_weights)
        return d


def read_test_file(path: str | os.PathLike, max_test_users: int | None = None) -> list[dict[str, Any]]:
    path = Path(path)
    rows = read_json_checked(path, "--test_data_path", "write it with gen_fewshot.py (test/test.json)")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"--test_data_path {path}: expected a non-empty JSON list of test examples; write it with "
                         "gen_fewshot.py (test/test.json)")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not all(k in r for k in ("instruction", "input", "output")):
            raise ValueError(f"--test_data_path {path}: example {i} lacks instruction/input/output; write the file "
                             "with gen_fewshot.py")
    if max_test_users is not None:
        rows = rows[:max_test_users]
    return rows


def dist_setup() -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call created the process group)."""
    info, device, created = init_distributed()
    return info.rank, info.world_size, device, created


def _partial_files(result: Path) -> list[Path]:
    return sorted(result.parent.glob(f"{result.name}.partial-rank*.jsonl"))


def _read_partials(result: Path, n: int) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    for f in _partial_files(result):
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if isinstance(rec, dict) and isinstance(rec.get("idx"), int) and 0 <= rec["idx"] < n:
                    done[rec["idx"]] = rec
    return done


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _load_model(cfg: InferenceConfig, device: torch.device) -> tuple[Any, Any]:
    from dealrec.llm.model import align_special_tokens, load_adapter, load_base_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.base_model, padding_side="left")
    model = load_base_model(cfg.base_model, device, quantization=cfg.quantization)
    align_special_tokens(model, tokenizer)
    if cfg.lora_weights:
        w = Path(cfg.lora_weights)
        if not (w / "adapter_config.json").is_file():
            raise FileNotFoundError(f"--lora_weights {w}: no adapter_config.json; is fine-tuning finished?")
        model = load_adapter(model, w, flag="--lora_weights")
    model.eval()
    return model, tokenizer


def _partial_manifest(result: Path) -> Path:
    """The key file of the partial answers beside ``result``: they belong to the run with this key."""
    return result.with_name(result.name + ".partial.json")


def _reset_stale_partials(result: Path, key: dict[str, Any], overwrite: bool, rank: int) -> None:
    """On rank 0: delete the partial answers of a run with other settings (or all with ``overwrite``)
    and record this run's key, so that only answers of the same settings are reused."""
    if rank != 0:
        return
    pmanifest = _partial_manifest(result)
    stale = not pmanifest.is_file() or read_json(pmanifest).get("key") != cache_key(key) or overwrite
    if stale:
        for f in _partial_files(result):
            f.unlink()
        write_json(pmanifest, {"key": cache_key(key), "params": key})


def _shard(result: Path, n: int, rank: int, world: int) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """The answers already written (by any number of processes) and this rank's contiguous share
    of the examples still to answer."""
    done = _read_partials(result, n)
    todo = [i for i in range(n) if i not in done]
    shard = todo[rank * len(todo) // world: (rank + 1) * len(todo) // world]
    if rank == 0:
        LOG.info("%d test examples: %d done before, %d to generate on %d process(es)", n, len(done), len(todo), world)
    return done, shard


def _partial_saver(result: Path, rank: int, rows: list[dict[str, Any]], shard: list[int],
                   new: list[dict[str, Any]]) -> Callable[[list[int], list[str]], None]:
    """The ``on_batch`` of :func:`generate`: each batch's records go to ``new`` and are appended
    (flushed and synced) to this rank's ``.partial-rank{r}.jsonl``, so a killed run keeps them."""
    part = result.with_name(f"{result.name}.partial-rank{rank}.jsonl")

    def save(batch_idx: list[int], texts: list[str]) -> None:
        recs = []
        for j, text in zip(batch_idx, texts):
            i = shard[j]
            rec = {"idx": i, "predict": text, "output": rows[i]["output"],
                   "user": rows[i].get("user"), "target_ids": rows[i].get("target_ids")}
            recs.append(rec)
        new.extend(recs)
        try:
            with open(part, "a", encoding="utf-8") as fh:
                for rec in recs:
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as e:
            raise OutputError(f"--result_json_data {result}: cannot append to {part.name} ({e.strerror}); free "
                              "some space or choose a writable folder (the answers so far are kept)") from e
        faults.step("generate")

    return save


def _gather_new(new: list[dict[str, Any]], world: int) -> list[Any]:
    """The records answered in this run by every process (one list per rank)."""
    import torch.distributed as dist

    gathered: list[Any] = [new]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, new)
    return gathered


def _merge(done: dict[int, dict[str, Any]], gathered: list[Any], n: int) -> list[dict[str, Any]]:
    """The records of all ``n`` examples in test-file order: the answers read from the partial files
    and this run's; an example answered twice in this run or not at all means broken sharding."""
    merged = dict(done)
    for part_recs in gathered:
        for rec in part_recs:
            if rec["idx"] in merged and rec["idx"] not in done:
                raise RuntimeError(f"example {rec['idx']} answered twice; sharding is broken")
            merged[rec["idx"]] = rec
    missing = [i for i in range(n) if i not in merged]
    if missing:
        raise RuntimeError(f"{len(missing)} test examples without an answer (e.g. {missing[:5]})")
    return [{k: merged[i][k] for k in RECORD_FIELDS} for i in range(n)]


def _write_result(cfg: InferenceConfig, result: Path, key: dict[str, Any], records: list[dict[str, Any]],
                  world: int, engine: str, precision: str) -> None:
    """Write the result file and its manifest (with the test file's data set name), then delete the
    partial answers, which the result file holds from then on."""
    n = len(records)
    data_name = None
    tm = manifest_path(cfg.test_file)
    if tm.is_file():
        data_name = read_json(tm).get("data_name")
    write_json(result, records)
    write_manifest(result, key, data_name=data_name, n=n, world_size=world, config=asdict(cfg),
                   engine_ran=engine, precision_ran=precision)
    for f in _partial_files(result):
        f.unlink()
    _partial_manifest(result).unlink(missing_ok=True)
    n_empty = sum(1 for r in records if not r["predict"])
    LOG.info("wrote %s (%d answers, %d empty)", result, n, n_empty)


def run_inference(cfg: InferenceConfig, model: Any = None, tokenizer: Any = None) -> list[dict[str, Any]] | None:
    """Answer every test example and write ``cfg.result_file``; returns the records on rank 0."""
    import torch.distributed as dist

    result = Path(cfg.result_file)
    cfg.validate()
    key = cfg.key()
    rank, world, device, created = dist_setup()
    held = contextlib.ExitStack()
    try:
        if rank == 0:  # rank 0 holds the result's lock for all processes
            check_writable(result.parent, "--result_json_data")
            held.enter_context(output_lock(result, flag="--result_json_data"))
        if not cfg.overwrite and cached(result, key):
            LOG.info("%s: up to date, kept", result)
            return read_json(result) if rank == 0 else None
        rows = read_test_file(cfg.test_file, cfg.max_test_users)
        n = len(rows)
        if model is None or tokenizer is None:  # before any file is written: a model that fails to load leaves none
            model, tokenizer = _load_model(cfg, device)
        _reset_stale_partials(result, key, cfg.overwrite, rank)
        _barrier(world)
        done, shard = _shard(result, n, rank, world)
        new: list[dict[str, Any]] = []
        save = _partial_saver(result, rank, rows, shard, new)
        engine = resolve_engine(cfg.engine, model)
        precision = cpu_precision(cfg.precision, device, "--gen_precision", auto=GEN_AUTO) if engine == "fast" else "fp32"
        generate(
            model, tokenizer, [rows[i] for i in shard], cfg.num_beams, cfg.max_new_tokens, cfg.batch_size,
            cfg.cutoff_len, progress=cfg.progress and rank == 0, on_batch=save, engine=engine, precision=precision,
        )
        gathered = _gather_new(new, world)
        records = None
        if rank == 0:
            records = _merge(done, gathered, n)
            _write_result(cfg, result, key, records, world, engine, precision)
        _barrier(world)
        return records
    finally:
        held.close()
        if created:
            dist.destroy_process_group()
