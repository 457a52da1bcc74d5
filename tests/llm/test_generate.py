"""Beam-search generation: batching, OOM fallback, resumption, torchrun sharding on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dealrec.core.cache import cache_key
from dealrec.core.files import read_json, write_json
from dealrec.data.dataset import load_dataset
from dealrec.data.fewshot import write_fewshot
from dealrec.llm import model as llm
from dealrec.llm.generate import InferenceConfig, generate, run_inference

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.slow,
    pytest.mark.skipif(not (REPO / "data" / "games").is_dir(), reason="data/games not linked"),
]





@pytest.fixture(scope="module")
def test_file(tmp_path_factory, tok):
    """test.json of the first 4 test users (cutoff 128) and a random LoRA adapter."""
    data = load_dataset(REPO / "data", "games", check_dicts=False)
    tmp = tmp_path_factory.mktemp("gen")
    paths = write_fewshot(data, [0], tmp / "data", tok, 128, 1, max_test_users=4, progress=False)
    from peft import get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(llm.load_base_model(None), llm.lora_config())
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    peft_model.save_pretrained(str(tmp / "adapter"))
    return paths["test"], tmp / "adapter"


def test_generate_text_for_every_input_batched_like_single(model, tok, test_file):
    rows = read_json(test_file[0])
    batched = generate(model, tok, rows, num_beams=2, max_new_tokens=4, batch_size=4, progress=False)
    single = generate(model, tok, rows, num_beams=2, max_new_tokens=4, batch_size=1, progress=False)
    assert len(batched) == 4 and all(isinstance(t, str) and t for t in batched)
    assert batched == single  # left padding does not change the answers
    assert all("### Response" not in t for t in batched)


class FakeModel(torch.nn.Module):
    """Answers every prompt with its own last prompt token; OOM for batches above `limit`."""

    def __init__(self, limit: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.limit, self.calls = limit, []

    def generate(self, input_ids, attention_mask, generation_config):
        self.calls.append(len(input_ids))
        if len(input_ids) > self.limit:
            raise torch.cuda.OutOfMemoryError("fake OOM")
        return SimpleNamespace(sequences=torch.cat([input_ids, input_ids[:, -1:]], dim=1))


def test_oom_halves_the_batch_not_the_beams(tok):
    rows = [{"instruction": "i", "input": "x " * n, "output": ""} for n in (3, 9, 1, 6, 4)]
    fake = FakeModel(limit=2)
    seen = []
    out = generate(fake, tok, rows, num_beams=4, max_new_tokens=1, batch_size=8, progress=False,
                   on_batch=lambda idx, texts: seen.extend(idx), engine="hf")
    assert fake.calls[:3] == [5, 4, 2] and max(fake.calls[3:]) <= 2
    assert sorted(seen) == list(range(5))
    assert len(out) == 5 and all(isinstance(t, str) for t in out)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        generate(FakeModel(limit=0), tok, rows[:2], batch_size=2, progress=False, engine="hf")


def test_resume_skips_answered_users(tok, test_file, tmp_path):
    test, _ = test_file
    cfg = InferenceConfig(str(test), str(tmp_path / "res.json"), num_beams=2, max_new_tokens=2, batch_size=2,
                          progress=False, engine="hf")
    rows = read_json(test)
    part = tmp_path / "res.json.partial-rank0.jsonl"
    write_json(tmp_path / "res.json.partial.json", {"key": cache_key(cfg.key())})
    lines = [json.dumps({"idx": i, "predict": f"DONE {i}", "output": rows[i]["output"], "user": rows[i]["user"],
                         "target_ids": rows[i]["target_ids"]}) for i in (0, 2)]
    part.write_text("\n".join(lines) + '\n{"idx": 3, "predi')  # a line cut by a crash
    fake = FakeModel(limit=8)
    recs = run_inference(cfg, model=fake, tokenizer=tok)
    assert fake.calls == [2]  # only examples 1 and 3 were generated
    assert [r["predict"] for r in recs][0::2] == ["DONE 0", "DONE 2"]
    assert [r["user"] for r in recs] == [r["user"] for r in rows]
    assert set(recs[0]) == {"predict", "output", "user", "target_ids"}
    assert not part.exists() and (tmp_path / "res.json.json").is_file()


def test_torchrun_two_processes_equal_single_process(model, tok, test_file, tmp_path):
    test, adapter = test_file
    single = tmp_path / "single.json"
    cfg = InferenceConfig(str(test), str(single), lora_weights=str(adapter), num_beams=2, max_new_tokens=4,
                          batch_size=2, progress=False)
    recs = run_inference(cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    ddp = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "code" / "finetune" / "inference.py"), "--lora_weights", str(adapter),
           "--test_data_path", str(test), "--result_json_data", str(ddp), "--num_beams", "2",
           "--max_new_tokens", "4", "--batch_size", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(ddp) == recs
    assert len({r["user"] for r in recs}) == 4
    assert read_json(ddp.with_name("ddp.json.json"))["world_size"] == 2
    assert not list(tmp_path.glob("*.partial*"))


@pytest.mark.parametrize("num_beams", [1, 2])
def test_fast_path_answers_equal_transformers_with_an_adapter(tok, test_file, num_beams):
    """The embedded model with a LoRA adapter: prefill-once + shared prefix = transformers' generate."""
    test, adapter = test_file
    model = llm.load_adapter(llm.load_base_model(None), adapter)
    model.eval()
    rows = read_json(test)
    kw = dict(num_beams=num_beams, max_new_tokens=6, batch_size=4, progress=False)
    assert generate(model, tok, rows, engine="fast", **kw) == generate(model, tok, rows, engine="hf", **kw)


def test_engine_and_precision_choices(model, caplog):
    from dealrec.llm.generate import resolve_engine

    assert resolve_engine("auto", model) == "fast" and resolve_engine("hf", model) == "hf"
    model.generation_config.repetition_penalty = 1.2
    try:
        assert resolve_engine("auto", model) == "hf"
        with pytest.raises(ValueError, match="repetition_penalty.*--gen_engine hf"):
            resolve_engine("fast", model)
    finally:
        model.generation_config.repetition_penalty = 1.0
    with pytest.raises(ValueError, match="--gen_engine must be one of"):
        resolve_engine("vllm", model)
