"""Bad inputs at every entry point: each case runs the real script as a user
would, with the expensive stages forbidden (``DEALREC_FAULT_FORBID``: reaching one exits 97), and
checks a non-zero exit, exactly one error line naming the argument or file and the fix, no
traceback, and that nothing was written into the output folder (no file, no temporary, no lock).

The cases run concurrently (3 at a time) in a module fixture; each table row is then one test."""

from __future__ import annotations

import json
import queue
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from _reliability import EXPENSIVE, REPO, Zygote, base_env, error_lines, leftovers, make_world, run, use_fork

HAS_GAMES = (REPO / "data" / "games").is_dir()
N_USERS = 40


# ------------------------------------------------------------------------------------------
# The inputs a user has: a small data set in the authors' format and the files the stages write
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), N_USERS)


def copy_data(w: Path, c: Path) -> Path:
    shutil.copytree(w / "data", c / "data")
    return c / "data" / "games"


def edit_lines(path: Path, fn: Callable[[list[str]], list[str]]) -> None:
    path.write_text("\n".join(fn(path.read_text(encoding="utf-8").splitlines())) + "\n", encoding="utf-8")


def data_case(fn: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    """A setup that copies the good data set into the case folder and breaks it with ``fn(root)``."""
    def setup(w: Path, c: Path) -> None:
        fn(copy_data(w, c))
    return setup


def titles(root: Path, mutate: Callable[[dict], None]) -> None:
    from dealrec.data.dataset import load_pickled_npy

    maps = load_pickled_npy(root / "title_maps.npy")
    mutate(maps["seqid2title"])
    np.save(root / "title_maps.npy", maps)


def fake_model(c: Path, config: str | None = '{"model_type": "llama"}', weights: bytes | None = b"x" * 64,
               tokenizer: bool = True) -> None:
    m = c / "model"
    m.mkdir()
    if config is not None:
        (m / "config.json").write_text(config, encoding="utf-8")
    if weights is not None:
        (m / "model.safetensors").write_bytes(weights)
    if tokenizer:
        (m / "tokenizer.json").write_text("{}", encoding="utf-8")


def adapter(c: Path, config: str | None = None, weights: bytes | None = None) -> None:
    a = c / "adapter"
    a.mkdir()
    if config is not None:
        (a / "adapter_config.json").write_text(config, encoding="utf-8")
    if weights is not None:
        (a / "adapter_model.safetensors").write_bytes(weights)


def write(name: str, content: bytes | str) -> Callable[[Path, Path], None]:
    def setup(w: Path, c: Path) -> None:
        p = c / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    return setup


def half_of(src: str, dst: str) -> Callable[[Path, Path], None]:
    def setup(w: Path, c: Path) -> None:
        b = (w / src).read_bytes()
        (c / dst).write_bytes(b[: len(b) // 2])
    return setup


def save(name: str, value) -> Callable[[Path, Path], None]:
    def setup(w: Path, c: Path) -> None:
        torch.save(value, c / name)
    return setup


def small_checkpoint(path: Path) -> None:
    from dealrec.surrogate import SurrogateConfig, build_surrogate

    torch.save(build_surrogate("SASRec", 7, SurrogateConfig()).state_dict(), path)


def result_with(mutate: Callable[[list], None]) -> Callable[[Path, Path], None]:
    def setup(w: Path, c: Path) -> None:
        rows = json.loads((w / "result.json").read_text(encoding="utf-8"))
        mutate(rows)
        (c / "r.json").write_text(json.dumps(rows), encoding="utf-8")
    return setup


# ------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    family: str
    entry: str
    args: list[str]
    expect: tuple[str, ...]  # substrings of the one error line: the argument or file, and the fix
    setup: Callable[[Path, Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ("out",)  # under the case folder: unchanged by the run (absent or empty if not set up)
    absent: tuple[str, ...] = ()  # text that must not appear anywhere in stderr


# {W}: the world (good inputs), {C}: this case's folder (broken inputs, outputs)
PRUNE = ["--data_dir", "{W}/data", "--score_dir", "{C}/out/scores", "--selected_dir", "{C}/out/sel",
         "--log_name", "{C}/prune", "--max_users", str(N_USERS), "--n_fewshot", "4", "--epochs", "1",
         "--recursion_depth", "5", "--cutoff_len", "64"]
PRUNE_C = [("{C}/data" if a == "{W}/data" else a) for a in PRUNE]  # the case's own (broken) data set
GEN = ["--data_dir", "{W}/data", "--data_name", "games", "--n_sample", "6", "--selected", "{W}/sel.pt",
       "--out_dir", "{C}/out", "--cutoff_len", "96"]
GEN_C = [("{C}/data" if a == "{W}/data" else a) for a in GEN]
FT = ["--train_data_path", "{W}/train.json", "--val_data_path", "{W}/valid.json", "--output_dir", "{C}/out",
      "--batch_size", "4", "--micro_batch_size", "4", "--max_steps", "1", "--cutoff_len", "96"]
INF = ["--test_data_path", "{W}/test.json", "--result_json_data", "{C}/out/r.json", "--num_beams", "1",
       "--max_new_tokens", "4", "--max_test_users", "2"]
EV = ["--result_file", "{W}/result.json", "--data_dir", "{W}/data", "--data_name", "games", "--max_items", "20"]
EV_C = ["--result_file", "{C}/out/result.json", "--data_dir", "{W}/data", "--data_name", "games", "--max_items", "20"]
STUDY = ["--data_dir", "{W}/data", "--out_dir", "{C}/out", "--n", "4", "--strategies", "dealrec,random",
         "--seeds", "0", "--pool_users", "30", "--test_users", "4", "--surrogate_epochs", "1",
         "--recursion_depth", "5", "--cutoff_len", "96", "--max_steps", "1", "--max_new_tokens", "4",
         "--max_items", "20", "--sasrec_epochs", "1"]


def with_(base: list[str], *pairs: str) -> list[str]:
    """``base`` with the given ``--flag value`` pairs replaced or added."""
    out = list(base)
    for flag, value in zip(pairs[::2], pairs[1::2]):
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return out


def copy_result_into_out(w: Path, c: Path) -> None:
    (c / "out").mkdir()
    shutil.copy(w / "result.json", c / "out" / "result.json")


NOT_WRITABLE = "/sys/dealrec-reliability/out"  # a real kernel refusal (EPERM) even for root
FIX_RO = "make it writable or choose a writable output folder"
FIX_FULL = "No space left on device"
ENOSPC = {"DEALREC_FAULT_ENOSPC": "1"}
# A selection file written as text: gen_fewshot must name it and never print torch's advice to unpickle it.
NO_UNPICKLE_ADVICE = ("weights_only=False", "Traceback")

CASES: list[Case] = [
    # -- the data set's files (prune.py reads them first; gen_fewshot.py and evaluate.py the same way)
    Case("train-missing", "data files", "prune.py", PRUNE_C, ("missing sequential_train.txt", "Copy the complete"),
         data_case(lambda r: (r / "sequential_train.txt").unlink())),
    Case("train-empty", "data files", "prune.py", PRUNE_C, ("sequential_train.txt: the file is empty", "copy it again"),
         data_case(lambda r: (r / "sequential_train.txt").write_text(""))),
    Case("train-truncated", "data files", "prune.py", PRUNE_C, ("user counts disagree", "one line per user"),
         data_case(lambda r: edit_lines(r / "sequential_train.txt", lambda ls: ls[: len(ls) // 2]))),
    Case("train-corrupt", "data files", "prune.py", PRUNE_C, ("sequential_train.txt:1: non-integer token",),
         data_case(lambda r: edit_lines(r / "sequential_train.txt", lambda ls: ["1 4 x7 9", *ls[1:]]))),
    Case("train-not-utf8", "data files", "gen_fewshot.py", GEN_C, ("sequential_train.txt:1: not UTF-8", "decimal numbers"),
         data_case(lambda r: (r / "sequential_train.txt").write_bytes(b"1 2 3\xff\xfe 4\n"))),
    Case("titles-missing", "data files", "prune.py", PRUNE_C, ("missing title_maps.npy", "Copy the complete"),
         data_case(lambda r: (r / "title_maps.npy").unlink())),
    Case("titles-empty", "data files", "gen_fewshot.py", GEN_C, ("title_maps.npy: the file is empty", "copy it again"),
         data_case(lambda r: (r / "title_maps.npy").write_bytes(b""))),
    Case("titles-truncated", "data files", "prune.py", PRUNE_C, ("title_maps.npy: cannot unpickle", "truncated or corrupt"),
         data_case(lambda r: (r / "title_maps.npy").write_bytes((r / "title_maps.npy").read_bytes()[:300]))),
    Case("titles-corrupt", "data files", "evaluate.py", with_(EV, "--data_dir", "{C}/data"),
         ("title_maps.npy: not a .npy file", "copy it again"),
         data_case(lambda r: (r / "title_maps.npy").write_bytes(b"\x00garbage" * 50))),
    Case("titles-unsafe-pickle", "data files", "prune.py", PRUNE_C, ("title_maps.npy: refusing to unpickle", "np.save"),
         data_case(lambda r: np.save(r / "title_maps.npy", np.array([Path("x")], dtype=object)))),
    Case("dict-disagrees", "users/lines disagree", "prune.py", PRUNE_C,
         ("training_dict.npy: user 0 disagrees with sequential_train.txt", "re-export"),
         data_case(lambda r: np.save(r / "training_dict.npy", {0: [1, 2, 3]}))),
    Case("valid-fewer-lines", "users/lines disagree", "prune.py", PRUNE_C,
         ("user counts disagree: train 40, valid 39", "one line per user"),
         data_case(lambda r: edit_lines(r / "sequential_valid.txt", lambda ls: ls[:-1]))),
    Case("user-out-of-order", "users/lines disagree", "gen_fewshot.py", GEN_C,
         ("sequential_test.txt:2: user id 5 on line 2", "1-based and in line order"),
         data_case(lambda r: edit_lines(r / "sequential_test.txt", lambda ls: [ls[0], "5 " + ls[1].split(" ", 1)[1], *ls[2:]]))),
    Case("item-beyond-catalogue", "ids out of range", "prune.py", PRUNE_C,
         ("sequential_train.txt:1: item id 99982668 is beyond the catalogue", "another data set or corrupted"),
         data_case(lambda r: edit_lines(r / "sequential_train.txt", lambda ls: ["1 99982668 2 3", *ls[1:]])),
         absent=("without a title",)),
    Case("item-negative", "ids out of range", "prune.py", PRUNE_C, ("sequential_valid.txt:3: item ids are 1-based",),
         data_case(lambda r: edit_lines(r / "sequential_valid.txt", lambda ls: [*ls[:2], "3 -4", *ls[3:]]))),
    Case("all-users-short", "users < 3 items", "prune.py", PRUNE_C + ["--strategy", "random", "--n_fewshot", "1"],
         ("sequential_train.txt has ≥ 3 training items", "check the file"),
         data_case(lambda r: edit_lines(r / "sequential_train.txt", lambda ls: [" ".join(x.split()[:3]) for x in ls]))),
    Case("all-users-short-surrogate", "users < 3 items", "prune.py", PRUNE_C + ["--stage", "surrogate"],
         ("no user of the first 40 users of", "has ≥ 3 training items", "check the file"),
         data_case(lambda r: edit_lines(r / "sequential_train.txt", lambda ls: [" ".join(x.split()[:2]) for x in ls]))),
    Case("title-empty", "titles", "gen_fewshot.py", GEN_C, ("title_maps.npy: item 3 has an empty title", "needs one"),
         data_case(lambda r: titles(r, lambda t: t.update({"3": "  "})))),
    Case("title-not-utf8", "titles", "prune.py", PRUNE_C, ("title_maps.npy: the title of item 2 is not UTF-8", "UTF-8 text"),
         data_case(lambda r: titles(r, lambda t: t.update({"2": b"Caf\xe9 \xff"})))),
    Case("title-not-text", "titles", "prune.py", PRUNE_C, ("title_maps.npy: the title of item 5 is a int, not text",),
         data_case(lambda r: titles(r, lambda t: t.update({"5": 17})))),
    Case("data-unknown", "unknown names", "prune.py", with_(PRUNE, "--data_name", "gmaes"),
         ("data set folder", "gmaes does not exist", "data/README.md")),
    # -- a checkpoint, score files, a selection file: missing, empty, truncated, corrupt, wrong kind
    Case("ckpt-etc-passwd", "checkpoint", "prune.py", PRUNE + ["--stage", "influence", "--surrogate_checkpoint", "/etc/passwd"],
         ("--surrogate_checkpoint /etc/passwd: not a surrogate checkpoint", "pass the file")),
    Case("ckpt-missing", "checkpoint", "prune.py", PRUNE + ["--surrogate_checkpoint", "{C}/nope.pt"],
         ("--surrogate_checkpoint", "nope.pt: no such file")),
    Case("ckpt-empty", "checkpoint", "prune.py", PRUNE + ["--surrogate_checkpoint", "{C}/e.pt"],
         ("--surrogate_checkpoint", "e.pt: the file is empty", "expected a surrogate checkpoint"), write("e.pt", b"")),
    Case("ckpt-truncated", "checkpoint", "prune.py", PRUNE + ["--surrogate_checkpoint", "{C}/t.pt"],
         ("--surrogate_checkpoint", "t.pt: not a surrogate checkpoint"), half_of("ckpt.pt", "t.pt")),
    Case("ckpt-is-selection", "wrong kind", "prune.py", PRUNE + ["--surrogate_checkpoint", "{W}/sel.pt"],
         ("--surrogate_checkpoint", "sel.pt: expected a state_dict", "found a list")),
    Case("ckpt-other-catalogue", "checkpoint", "prune.py", PRUNE + ["--surrogate_checkpoint", "{C}/small.pt"],
         ("small.pt does not match SASRec for games", "shape mismatch ['item_embeddings.weight']",
          "pass a checkpoint of SASRec trained on this data set"), lambda w, c: small_checkpoint(c / "small.pt")),
    Case("scores-text", "score file", "prune.py", PRUNE + ["--influence_scores", "{W}/notes.txt"],
         ("--influence_scores", "notes.txt: not a score file"), absent=NO_UNPICKLE_ADVICE),
    Case("scores-is-ckpt", "wrong kind", "prune.py", PRUNE + ["--effort_scores", "{W}/ckpt.pt"],
         ("--effort_scores", "ckpt.pt: expected a 1-D float tensor of per-user scores")),
    Case("scores-nan", "score file", "prune.py", PRUNE + ["--effort_scores", "{C}/nan.pt"],
         ("--effort_scores", "1 score(s) are NaN or infinite", "compute the scores again"),
         save("nan.pt", torch.tensor([0.5, float("nan"), 1.0]))),
    Case("scores-wrong-length", "users/lines disagree", "prune.py",
         PRUNE + ["--strategy", "effort", "--stage", "select", "--effort_scores", "{C}/short.pt"],
         ("effort scores have 39 entries but games has 40 users", "another --max_users or data set"),
         save("short.pt", torch.rand(N_USERS - 1))),
    Case("selection-text", "selection file", "gen_fewshot.py", with_(GEN, "--selected", "{W}/notes.txt"),
         ("--selected", "notes.txt: not a selection file", "pass the file"), absent=NO_UNPICKLE_ADVICE),
    Case("selection-missing", "selection file", "gen_fewshot.py", with_(GEN, "--selected", "{C}/none.pt"),
         ("selection file", "none.pt not found", "run the pruning stage first")),
    Case("selection-empty", "selection file", "gen_fewshot.py", with_(GEN, "--selected", "{C}/e.pt"),
         ("--selected", "e.pt: the file is empty"), write("e.pt", b"")),
    Case("selection-truncated", "selection file", "gen_fewshot.py", with_(GEN, "--selected", "{C}/t.pt"),
         ("--selected", "t.pt: not a selection file"), half_of("sel.pt", "t.pt"), absent=NO_UNPICKLE_ADVICE),
    Case("selection-is-ckpt", "wrong kind", "gen_fewshot.py", with_(GEN, "--selected", "{W}/ckpt.pt"),
         ("ckpt.pt: expected a plain list of 0-based user indices",)),
    Case("selection-out-of-range", "ids out of range", "gen_fewshot.py", with_(GEN, "--selected", "{C}/s.pt"),
         ("s.pt: user indices out of range for games (40 users, 0-based): [40, 99]", "another data set"),
         save("s.pt", [1, 40, 99])),
    Case("selection-negative", "ids out of range", "gen_fewshot.py", with_(GEN, "--selected", "{C}/s.pt"),
         ("s.pt: user indices out of range", "[-1]"), save("s.pt", [0, -1, 2])),
    Case("selection-duplicates", "users/lines disagree", "gen_fewshot.py", with_(GEN, "--selected", "{C}/s.pt"),
         ("s.pt: 1 duplicate user indices", "each user once"), save("s.pt", [0, 1, 1])),
    # -- the JSON files of fine-tuning, generation and evaluation
    Case("train-json-missing", "few-shot/result files", "finetune.py", with_(FT, "--train_data_path", "{C}/none.json"),
         ("--train_data_path", "none.json: no such file", "gen_fewshot.py")),
    Case("train-json-empty", "few-shot/result files", "finetune.py", with_(FT, "--train_data_path", "{C}/e.json"),
         ("--train_data_path", "e.json: the file is empty", "gen_fewshot.py"), write("e.json", "")),
    Case("train-json-truncated", "few-shot/result files", "finetune.py", with_(FT, "--train_data_path", "{C}/t.json"),
         ("--train_data_path", "t.json: not valid JSON", "truncated?"), half_of("train.json", "t.json")),
    Case("train-json-is-selection", "wrong kind", "finetune.py", with_(FT, "--train_data_path", "{W}/sel.pt"),
         ("--train_data_path", "sel.pt: not UTF-8 text (not a JSON file)", "gen_fewshot.py")),
    Case("train-json-no-fields", "few-shot/result files", "finetune.py", with_(FT, "--train_data_path", "{C}/f.json"),
         ("--train_data_path", "example 0 lacks instruction/input/output", "gen_fewshot.py"),
         write("f.json", '[{"prompt": "x"}]')),
    Case("train-json-no-examples", "few-shot/result files", "finetune.py", with_(FT, "--train_data_path", "{C}/n.json"),
         ("--train_data_path", "no training examples", "gen_fewshot.py"), write("n.json", "[]")),
    Case("val-json-corrupt", "few-shot/result files", "finetune.py", with_(FT, "--val_data_path", "{C}/v.json"),
         ("--val_data_path", "v.json: not valid JSON"), write("v.json", "{[}")),
    Case("test-json-truncated", "few-shot/result files", "inference.py", with_(INF, "--test_data_path", "{C}/t.json"),
         ("--test_data_path", "t.json: not valid JSON", "gen_fewshot.py"), half_of("test.json", "t.json")),
    Case("test-json-is-train-rows", "wrong kind", "inference.py", with_(INF, "--test_data_path", "{C}/x.json"),
         ("--test_data_path", "expected a non-empty JSON list"), write("x.json", '{"a": 1}')),
    Case("result-missing", "few-shot/result files", "evaluate.py", with_(EV, "--result_file", "{C}/none.json"),
         ("--result_file", "none.json: no such file", "result file of inference.py")),
    Case("result-truncated", "few-shot/result files", "evaluate.py", with_(EV, "--result_file", "{C}/t.json"),
         ("--result_file", "t.json: not valid JSON", "result file of inference.py"), half_of("result.json", "t.json")),
    Case("result-is-test-file", "wrong kind", "evaluate.py", with_(EV, "--result_file", "{W}/test.json"),
         ("test.json: record 0 has no 'predict' text",)),
    Case("result-ids-out-of-range", "ids out of range", "evaluate.py", with_(EV, "--result_file", "{C}/r.json"),
         ("r.json: record 0 has target ids outside 0..", "another data set"),
         result_with(lambda rows: rows[0].update(target_ids=[10 ** 6])), ),
    Case("result-other-users", "users/lines disagree", "evaluate.py", with_(EV, "--result_file", "{C}/r.json"),
         ("r.json: record 1", "does not match games's test items", "pass the right --data_name"),
         result_with(lambda rows: rows[1].update(user=rows[0]["user"]))),
    # -- adapter and base-model folders
    Case("lora-empty-folder", "adapter/model folders", "inference.py", INF + ["--lora_weights", "{C}/adapter"],
         ("--lora_weights", "adapter: no adapter_config.json", "pass the output_dir of finetune.py"),
         lambda w, c: adapter(c)),
    Case("lora-config-corrupt", "adapter/model folders", "inference.py", INF + ["--lora_weights", "{C}/adapter"],
         ("--lora_weights", "adapter_config.json is unreadable", "fine-tune again"),
         lambda w, c: adapter(c, config='{"r": 8,', weights=b"x")),
    Case("lora-weights-truncated", "adapter/model folders", "inference.py", INF + ["--lora_weights", "{C}/adapter"],
         ("--lora_weights", "cannot read adapter_model.safetensors", "truncated or not an adapter"),
         lambda w, c: adapter(c, config='{"peft_type": "LORA", "r": 8}', weights=b"\x08\x00\x00")),
    Case("lora-is-file", "wrong kind", "inference.py", INF + ["--lora_weights", "{W}/sel.pt"],
         ("--lora_weights", "sel.pt: no such directory")),
    Case("warm-start-empty", "adapter/model folders", "finetune.py", FT + ["--resume_from_checkpoint", "{C}/adapter"],
         ("--resume_from_checkpoint", "no adapter_config.json"), lambda w, c: adapter(c)),
    Case("base-missing", "adapter/model folders", "finetune.py", FT + ["--base_model", "{C}/none"],
         ("--base_model", "none: no such directory", "local Hugging Face model folder")),
    Case("base-no-config", "adapter/model folders", "inference.py", INF + ["--base_model", "{C}/model"],
         ("--base_model", "no config.json inside"), lambda w, c: fake_model(c, config=None)),
    Case("base-config-corrupt", "adapter/model folders", "prune.py", PRUNE + ["--stage", "effort", "--base_model", "{C}/model"],
         ("--base_model", "config.json is unreadable", "copy the model folder again"),
         lambda w, c: fake_model(c, config='{"model_type": ')),
    Case("base-no-weights", "adapter/model folders", "finetune.py", FT + ["--base_model", "{C}/model"],
         ("--base_model", "no weights (*.safetensors", "copy the model folder again"),
         lambda w, c: fake_model(c, weights=None)),
    Case("base-no-tokenizer", "adapter/model folders", "evaluate.py", EV_C + ["--base_model", "{C}/model"],
         ("--base_model", "no tokenizer (tokenizer.json or tokenizer.model)"),
         lambda w, c: (fake_model(c, tokenizer=False), copy_result_into_out(w, c))),
    # -- numbers out of range
    *[Case(f"prune-{flag.strip('-')}-{v}", "numbers out of range", "prune.py", with_(PRUNE, flag, v), (flag, msg))
      for flag, v, msg in [("--lamda", "-0.5", "must be ≥ 0"), ("--k", "0", "must be > 0"),
                           ("--hard_prune", "1.5", "must be in [0, 1)"), ("--recursion_depth", "0", "must be ≥ 1")]],
    Case("prune-n-fewshot-beyond-pool", "numbers out of range", "prune.py", with_(PRUNE, "--n_fewshot", "100000"),
         ("--n_fewshot 100000 exceeds the", "lower --n_fewshot to at most")),
    *[Case(f"gen-{flag.strip('-')}-{v}", "numbers out of range", "gen_fewshot.py", with_(GEN, flag, v), (flag, msg))
      for flag, v, msg in [("--n_sample", "0", "must be ≥ 1"), ("--cutoff_len", "2", "must be ≥ 8")]],
    *[Case(f"ft-{flag.strip('-')}-{v}", "numbers out of range", "finetune.py", with_(FT, flag, v), (flag, msg))
      for flag, v, msg in [("--lora_dropout", "1.5", "must be in [0, 1)"),
                           ("--batch_size", "2", "must be ≥ --micro_batch_size")]],
    *[Case(f"inf-{flag.strip('-')}-{v}", "numbers out of range", "inference.py", with_(INF, flag, v), (flag, msg))
      for flag, v, msg in [("--num_beams", "0", "must be ≥ 1")]],
    *[Case(f"ev-{flag.strip('-')}-{v}", "numbers out of range", "evaluate.py", with_(EV, flag, v), (flag, msg))
      for flag, v, msg in [("--ks", "5,x", "argument --ks: invalid value ['5,x']")]],
    *[Case(f"study-{flag.strip('-')}-{v}", "numbers out of range", "reproduce.py", with_(STUDY, flag, v), (flag, msg))
      for flag, v, msg in [("--n", "500", "exceeds the"), ("--seeds", "1,1", "must be distinct")]],
    Case("prune-sh-lamda-text", "numbers out of range", "prune.sh", ["games", "SASRec", "abc", "50", "{C}/log", "cpu"],
         ("--lamda: invalid float value: 'abc'",)),
    # -- unknown names
    Case("prune-surrogate", "unknown names", "prune.py", with_(PRUNE, "--surrogate", "Caser"),
         ("unknown surrogate 'Caser'", "registered: BERT4Rec, DCRec, GRU4Rec, SASRec")),
    Case("prune-strategy", "unknown names", "prune.py", with_(PRUNE, "--strategy", "bogus"),
         ("unknown --strategy 'bogus'", "registered:")),
    Case("prune-stage", "unknown names", "prune.py", with_(PRUNE, "--stage", "train"),
         ("--stage must be one of", "got 'train'")),
    Case("prune-sh-surrogate", "unknown names", "prune.sh", ["games", "Caesar", "0.3", "50", "{C}/log", "cpu"],
         ("unknown surrogate 'Caesar'", "registered:"), env={"PRUNE_ARGS": "--data_dir {W}/data --score_dir {C}/out/s "
                                                              "--selected_dir {C}/out/sel"}),
    Case("study-strategies", "unknown names", "reproduce.py", with_(STUDY, "--strategies", "dealrec,nope"),
         ("--strategies: unknown ['nope']", "registered:")),
    Case("finetune-sh-preset", "unknown names", "finetune.sh", ["games", "--preset", "tpu"],
         ("unknown preset 'tpu'", "known: cpu-demo")),
    Case("evaluate-sh-missing", "few-shot/result files", "evaluate.sh",
         ["{C}/none.json", "cpu", "games", "--data_dir", "{W}/data"], ("--result_file", "none.json: no such file")),
    Case("finetune-sh-selection-text", "selection file", "finetune.sh", ["games", "--preset", "cpu-demo"],
         ("--selected", "notes.txt: not a selection file"),
         env={"SELECTED": "{W}/notes.txt", "DATA_DIR": "{W}/data", "N_FEWSHOT": "6", "LOG_DIR": "{C}/logs"},
         absent=NO_UNPICKLE_ADVICE),
    Case("finetune-sh-n-zero", "numbers out of range", "finetune.sh", ["games", "cpu-demo"],
         ("--n_sample must be ≥ 1",), env={"DATA_DIR": "{W}/data", "N_FEWSHOT": "0", "LOG_DIR": "{C}/logs"}),
    Case("finetune-sh-base-missing", "adapter/model folders", "finetune.sh", ["games", "cpu-demo"],
         ("--base_model", "no such directory"),
         env={"DATA_DIR": "{W}/data", "SELECTED": "{W}/sel.pt", "N_FEWSHOT": "6", "BASE_MODEL": "{C}/none",
              "LOG_DIR": "{C}/logs"}),
    Case("evaluate-sh-no-args", "unknown names", "evaluate.sh", [], ("usage: evaluate.sh <result_file>",)),
    Case("prune-sh-no-args", "unknown names", "prune.sh", ["games"], ("usage: sh prune.sh",)),
    # -- outputs that cannot be written: a read-only location, a full disk (simulated: every write ENOSPC)
    Case("ro-prune", "read-only output", "prune.py", with_(PRUNE, "--score_dir", NOT_WRITABLE), ("--score_dir", FIX_RO)),
    Case("ro-gen", "read-only output", "gen_fewshot.py", with_(GEN, "--out_dir", NOT_WRITABLE) + ["--log_file", "{C}/g.log"],
         ("--out_dir", FIX_RO)),
    Case("ro-finetune", "read-only output", "finetune.py", with_(FT, "--output_dir", NOT_WRITABLE) + ["--log_file", "{C}/f.log"],
         ("--output_dir", FIX_RO)),
    Case("ro-inference", "read-only output", "inference.py",
         with_(INF, "--result_json_data", NOT_WRITABLE + "/r.json") + ["--log_file", "{C}/i.log"],
         ("--result_json_data", FIX_RO)),
    Case("ro-study", "read-only output", "reproduce.py", with_(STUDY, "--out_dir", NOT_WRITABLE) + ["--log_file", "{C}/s.log"],
         ("--out_dir", FIX_RO)),
    Case("full-prune", "full disk", "prune.py", PRUNE, ("--score_dir", FIX_FULL, "free some space"), env=ENOSPC),
    Case("full-gen", "full disk", "gen_fewshot.py", GEN, ("--out_dir", FIX_FULL, "free some space"), env=ENOSPC),
    Case("full-finetune", "full disk", "finetune.py", FT, ("--output_dir", FIX_FULL, "free some space"), env=ENOSPC),
    Case("full-inference", "full disk", "inference.py", INF, ("--result_json_data", FIX_FULL, "free some space"), env=ENOSPC),
    Case("full-evaluate", "full disk", "evaluate.py", EV_C, ("--result_file", FIX_FULL, "free some space"),
         copy_result_into_out, env=ENOSPC),
    Case("full-study", "full disk", "reproduce.py", STUDY, ("--out_dir", FIX_FULL, "free some space"), env=ENOSPC),
]
if HAS_GAMES:  # the issue's own example: more than Games' users, refused before 200 epochs of training
    CASES.append(Case("games-n-fewshot-100000", "numbers out of range", "prune.py",
                      ["--data_name", "games", "--n_fewshot", "100000", "--score_dir", "{C}/out/s",
                       "--selected_dir", "{C}/out/sel", "--log_name", "{C}/p"],
                      ("--n_fewshot 100000 exceeds the 37099 users that dealrec can select from", "lower --n_fewshot")))
    # an item id beyond the catalogue on line 1 of the real Games file (the 99982667 message)
    CASES.append(Case("games-item-beyond-catalogue", "ids out of range", "gen_fewshot.py", GEN_C,
                      ("sequential_train.txt:1: item id 99999999 is beyond the catalogue (17332 items",),
                      lambda w, c: _games_with_bad_line(c), absent=("without a title",)))


def _games_with_bad_line(c: Path) -> None:
    root = c / "data" / "games"
    root.mkdir(parents=True)
    src = REPO / "data" / "games"
    for f in ("sequential_valid.txt", "sequential_test.txt", "title_maps.npy"):
        (root / f).symlink_to((src / f).resolve())
    lines = (src / "sequential_train.txt").read_text(encoding="utf-8").splitlines()
    lines[0] = "1 99999999 " + lines[0].split(" ", 1)[1]
    (root / "sequential_train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _fill(value: str, w: Path, c: Path) -> str:
    return value.replace("{W}", str(w)).replace("{C}", str(c))


def _run_case(case: Case, w: Path, root: Path, zygotes: queue.Queue | None) -> dict:
    c = root / case.id
    c.mkdir()
    if case.setup is not None:
        case.setup(w, c)
    before = {o: leftovers(c / o) for o in case.outputs}
    env = base_env(DEALREC_FAULT_FORBID=EXPENSIVE, **{k: _fill(v, w, c) for k, v in case.env.items()})
    args = [_fill(a, w, c) for a in case.args]
    if zygotes is not None and case.entry.endswith(".py"):
        z = zygotes.get()
        try:
            proc = z.run(case.entry, args, env, c)
        finally:
            zygotes.put(z)
    else:
        proc = run(case.entry, args, env=env, cwd=c, timeout=300)
    after = {o: leftovers(c / o) for o in case.outputs}
    locks = sorted(str(p) for p in c.rglob(".*.lock"))
    return {"rc": proc.returncode, "stderr": proc.stderr, "stdout": proc.stdout, "before": before, "after": after,
            "locks": locks}


@pytest.fixture(scope="module")
def results(world, tmp_path_factory, request):
    """The runs of the collected cases (all, or those ``-k`` selects), 3 at a time; the Python entry
    points in processes forked from pre-imported interpreters (:class:`_reliability.Zygote`), the
    shell drivers as plain subprocesses."""
    wanted = {item.callspec.id for item in request.session.items
              if item.originalname == "test_bad_input" and hasattr(item, "callspec")}
    root = tmp_path_factory.mktemp("cases")
    zygotes = None
    if use_fork():
        zygotes = queue.Queue()
        for _ in range(3):
            zygotes.put(Zygote())
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = {case.id: pool.submit(_run_case, case, world, root, zygotes) for case in CASES
                       if case.id in wanted}
            return {k: f.result() for k, f in futures.items()}
    finally:
        while zygotes is not None and not zygotes.empty():
            zygotes.get().close()


def test_case_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, results):
    r = results[case.id]
    text = r["stderr"] + r["stdout"]
    assert r["rc"] not in (0, 97), f"rc {r['rc']} (97: an expensive stage started)\n{text[-3000:]}"
    assert r["rc"] > 0, f"killed by signal {-r['rc']}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    errors = error_lines(text)
    assert len(errors) == 1, f"expected one error line, got {errors}\n{text[-3000:]}"
    for s in case.expect:
        assert s in errors[0], f"{s!r} not in the error line: {errors[0]}"
    for s in case.absent:
        assert s not in text, f"{s!r} printed:\n{text[-3000:]}"
    for o in case.outputs:
        assert r["after"][o] == r["before"][o], f"written into {o}: {r['after'][o]} (before: {r['before'][o]})"
        if case.setup is None or not r["before"][o]:
            assert r["after"][o] == [], f"written into {o}: {r['after'][o]}"
    assert not r["locks"], r["locks"]


def test_family_counts(capsys):
    """The figures of the README's Reliability section (printed with -s)."""
    fams: dict[str, int] = {}
    for c in CASES:
        fams[c.family] = fams.get(c.family, 0) + 1
    with capsys.disabled():
        print(f"\nbad inputs: {len(CASES)} cases, {len({c.entry for c in CASES})} entry points: "
              + ", ".join(f"{k} {v}" for k, v in sorted(fams.items())))
    assert {c.entry for c in CASES} >= {"prune.py", "prune.sh", "gen_fewshot.py", "finetune.py", "inference.py",
                                        "evaluate.py", "evaluate.sh", "finetune.sh", "reproduce.py"}
