"""Bring your own LLM: every stage on tiny LLaMA (sentencepiece / tokenizer.json) and Qwen2 folders.

The folders (``byo_models`` in conftest) are made here in seconds: random weights, tokenizers
trained on the Games titles. Checked per model: special token ids (LLaMA's pad 0 = unk, Qwen's
pad = eos, no BOS), prompt truncation and the labels mask, effort (batched = per-sample loop),
LoRA fine-tuning (adapter saved non-empty, reloads to the same logits), generation (left
padding, BOS kept under truncation, batched = one by one, 1 = 2 processes), grounding, and
warm starts with matching and mismatching adapters.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dealrec.core.files import read_json, save_tensor
from dealrec.core.logs import logging_restored
from dealrec.data.fewshot import build_examples
from dealrec.data.prompts import prompt_of, tokenize_prompt
from dealrec.llm import model as llm
from dealrec.llm.finetune import FinetuneConfig, train
from dealrec.llm.generate import InferenceConfig, generate, run_inference
from dealrec.llm.ground import embed_texts, evaluate_results
from dealrec.llm.model import ModelError
from dealrec.scores.effort import EffortConfig, EffortModel

REPO = Path(__file__).resolve().parents[2]
MODELS = ["llama-sp", "llama-json", "qwen2"]
CUTOFF = 160  # the bare prompt is ~100 tokens with these 800-token vocabularies: histories get cut

pytestmark = pytest.mark.usefixtures("one_thread")


def _script(rel: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(rel).stem, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def users(byo_data):
    """Eight users with a long history and a validation item; six test users."""
    train_users = [u for u in range(byo_data.n_users) if len(byo_data.train[u]) >= 6 and byo_data.valid[u]][:8]
    assert len(train_users) == 8
    return train_users, byo_data.test_users[:6]


@pytest.fixture(scope="module")
def fewshot(byo_models, byo_data, users, tmp_path_factory):
    """gen_fewshot.py --base_model <model> for each model: {name: {train, valid, test}}."""
    gen = _script("code/finetune/data/gen_fewshot.py")
    tmp = tmp_path_factory.mktemp("byo_fewshot")
    sel = tmp / "games_8.pt"
    save_tensor(sel, users[0])
    out = {}
    for name, path in byo_models.items():
        with logging_restored():
            rc = gen.main(["--data_dir", str(byo_data.root.parent), "--data_name", "games", "--n_sample", "8",
                           "--selected", str(sel), "--base_model", str(path), "--cutoff_len", str(CUTOFF),
                           "--max_test_users", "6", "--out_dir", str(tmp / name)])
        assert rc == 0
        out[name] = {s: tmp / name / s / f for s, f in (("train", "train-8.json"), ("valid", "valid-8.json"),
                                                        ("test", "test.json"))}
    return out


# ------------------------------------------------------------------------------------------------
# Folders and special tokens
# ------------------------------------------------------------------------------------------------


def test_fixture_folders_look_like_the_real_ones(byo_models):
    sp, js, qw = byo_models["llama-sp"], byo_models["llama-json"], byo_models["qwen2"]
    assert (sp / "tokenizer.model").is_file() and not (sp / "tokenizer.json").exists()
    assert (js / "tokenizer.json").is_file() and not (js / "tokenizer.model").exists()
    assert (qw / "tokenizer.json").is_file() and not (qw / "tokenizer.model").exists()
    assert json.loads((sp / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"
    assert json.loads((qw / "tokenizer_config.json").read_text())["tokenizer_class"] == "Qwen2Tokenizer"
    model = llm.load_base_model(qw)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.v_proj.bias is not None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    assert attn.v_proj.out_features < attn.q_proj.out_features  # grouped-query attention
    assert type(llm.load_base_model(sp)).__name__ == "LlamaForCausalLM"


@pytest.mark.parametrize("name", MODELS)
def test_special_tokens(byo_models, name):
    tok = llm.load_tokenizer(byo_models[name], padding_side="right")
    assert tok.padding_side == "right"
    ids = tok("### Response:\nHalo 3")["input_ids"]
    if name.startswith("llama"):
        # LLaMA: <unk> 0, <s> 1, </s> 2; no pad token, so pad = unk = 0 (alpaca-lora's choice), ≠ eos
        assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
        assert ids[0] == 1 and ids.count(1) == 1
    else:
        # Qwen2: no BOS, pad = eos = <|endoftext|>
        assert tok.bos_token_id is None and tok.pad_token == tok.eos_token == "<|endoftext|>"
        assert tok.pad_token_id == tok.eos_token_id
        assert tok.eos_token_id not in ids
    assert ids[-1] != tok.eos_token_id  # the tokenizer appends no EOS; training does
    model = llm.load_base_model(byo_models[name])
    changed = llm.align_special_tokens(model, tok)
    assert all(old is None for old, _ in changed.values())  # only unset ids filled: no conflict here
    assert model.config.eos_token_id == tok.eos_token_id == model.generation_config.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id


def test_sentencepiece_and_tokenizer_json_agree(byo_models, byo_data, users):
    sp = llm.load_tokenizer(byo_models["llama-sp"])
    js = llm.load_tokenizer(byo_models["llama-json"])
    examples = build_examples(byo_data, users[0], "train", None, progress=False)
    texts = [prompt_of(ex) for ex in examples] + ["  two  spaces, 日本語 ★ and\nnewlines\r\n", ""]
    for text in texts:
        a, b = sp(text)["input_ids"], js(text)["input_ids"]
        assert a == b
        assert sp.decode(a, skip_special_tokens=True) == js.decode(b, skip_special_tokens=True)
    assert sp.decode(sp(texts[0])["input_ids"], skip_special_tokens=True) == texts[0]  # lossless (byte fallback)


def test_sentencepiece_missing_is_a_clear_error(byo_models, monkeypatch):
    real = llm._importable
    monkeypatch.setattr(llm, "_importable", lambda m: False if m == "sentencepiece" else real(m))
    with pytest.raises(ModelError, match=r"tokenizer.model .*needs the Python package\(s\) sentencepiece: pip install"):
        llm.load_tokenizer(byo_models["llama-sp"])
    assert llm.load_tokenizer(byo_models["llama-json"]).eos_token_id == 2  # tokenizer.json needs neither


def _early_llama(src: Path, dst: Path) -> Path:
    """The layout of the early-2023 conversions (decapoda-research/llama-7b-hf): misspelt tokenizer
    class, empty special tokens, and bos 0 / eos 1 / pad -1 in the model's configs."""
    shutil.copytree(src, dst)
    (dst / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "", "eos_token": "", "unk_token": "", "model_max_length": 1e30, "tokenizer_class": "LLaMATokenizer"}))
    (dst / "special_tokens_map.json").write_text("{}")
    for f in ("config.json", "generation_config.json"):
        cfg = json.loads((dst / f).read_text())
        cfg.update(bos_token_id=0, eos_token_id=1, pad_token_id=-1)
        (dst / f).write_text(json.dumps(cfg))
    return dst


def test_early_llama_folder_is_repaired(byo_models, tmp_path, caplog):
    old = _early_llama(byo_models["llama-sp"], tmp_path / "llama-7b-hf")
    tok = llm.load_tokenizer(old)
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
    ref = llm.load_tokenizer(byo_models["llama-sp"])
    text = "### Input:\nHalo 3; Portal 2;\n\n### Response:\n"
    assert tok(text)["input_ids"] == ref(text)["input_ids"]  # BOS added, same pieces
    model = llm.load_base_model(old)
    with caplog.at_level("WARNING", logger="dealrec"):
        changed = llm.align_special_tokens(model, tok)
    assert changed["config.eos_token_id"] == (1, 2) and changed["generation_config.pad_token_id"] == (-1, 0)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 0)
    assert model.generation_config.eos_token_id == 2
    assert "differ from its tokenizer's" in caplog.text


def test_tokenizer_that_appends_eos(byo_models, tmp_path):
    """``add_eos_token: true`` (some Llama-2 set-ups): one EOS in training, none at inference."""
    from dealrec.llm.generate import _encode

    path = shutil.copytree(byo_models["llama-sp"], tmp_path / "eos")
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**cfg, "add_eos_token": True}))
    tok = llm.load_tokenizer(path)
    assert tok("Halo 3")["input_ids"][-1] == tok.eos_token_id
    ex = {"instruction": "Recommend.", "input": "Halo 3; Portal 2;", "output": "Fez"}
    enc = tokenize_prompt(tok, ex, CUTOFF, train_on_inputs=False)
    assert enc["input_ids"][-1] == tok.eos_token_id and enc["input_ids"][-2] != tok.eos_token_id
    target = [i for i, lab in zip(enc["input_ids"], enc["labels"]) if lab != -100]
    assert tok.decode(target, skip_special_tokens=True).strip() == "Fez" and target[-1] == tok.eos_token_id
    (ids,) = _encode(tok, [ex], CUTOFF)
    assert ids[0] == tok.bos_token_id and ids[-1] != tok.eos_token_id
    assert ids == tok(prompt_of(ex, with_output=False))["input_ids"][:-1]


# ------------------------------------------------------------------------------------------------
# gen_fewshot: truncation and the labels mask
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_prompts_fit_and_labels_mask(byo_models, byo_data, fewshot, users, name):
    from transformers import DataCollatorForSeq2Seq

    tok = llm.load_tokenizer(byo_models[name], padding_side="right")
    rows = read_json(fewshot[name]["train"])
    assert [r["user"] for r in rows] == users[0]
    manifest = read_json(fewshot[name]["train"].with_name("train-8.json.json"))
    assert manifest["base_model"] == llm.model_id(byo_models[name])
    truncated = 0
    for ex in rows:
        full = tokenize_prompt(tok, ex, CUTOFF, train_on_inputs=True)
        ids = full["input_ids"]
        assert len(ids) <= CUTOFF and ids[-1] == tok.eos_token_id and full["labels"] == ids
        assert (ids[0] == tok.bos_token_id) == name.startswith("llama")
        n_hist = len(byo_data.train[ex["user"]]) - 1
        truncated += ex["input"].count(";") < n_hist
        resp = tokenize_prompt(tok, ex, CUTOFF, train_on_inputs=False)
        assert resp["input_ids"] == ids
        n_masked = resp["labels"].count(-100)
        assert resp["labels"][:n_masked] == [-100] * n_masked
        assert ids[:n_masked] == tok(prompt_of(ex, with_output=False))["input_ids"]
        target = [i for i, lab in zip(ids, resp["labels"]) if lab != -100]
        assert target[-1] == tok.eos_token_id
        assert tok.decode(target[:-1]).strip() == ex["output"]
    assert truncated >= 2  # the cutoff did cut histories, keeping the newest titles, target and EOS

    batch = DataCollatorForSeq2Seq(tok, padding=True, return_tensors="pt", label_pad_token_id=-100)(
        [tokenize_prompt(tok, ex, CUTOFF) for ex in rows])
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1
    for i, n in enumerate(lengths.tolist()):
        assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()  # right padding
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()
        assert (batch["labels"][i, n:] == -100).all()
        assert batch["labels"][i, n - 1] == tok.eos_token_id  # kept even where pad = eos (Qwen)


def test_too_short_cutoff_warns(byo_models, byo_data, users, caplog):
    tok = llm.load_tokenizer(byo_models["qwen2"])
    with caplog.at_level("WARNING", logger="dealrec"):
        build_examples(byo_data, users[0][:1], "train", tok, 40, progress=False)
    assert "cutoff_len 40 is shorter than the prompt without any history" in caplog.text


# ------------------------------------------------------------------------------------------------
# Effort
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["lora_B", "base"])
@pytest.mark.parametrize("name", MODELS)
def test_effort_batched_equals_loop(byo_models, fewshot, name, target):
    em = EffortModel.load(EffortConfig(base_model=str(byo_models[name]), target=target, cutoff_len=CUTOFF))
    ids = em.encode(read_json(fewshot[name]["train"]))
    assert len({len(r) for r in ids}) > 1
    ref = em.norms_loop(ids)
    assert torch.isfinite(ref).all() and (ref > 0).all() and len(set(ref.tolist())) == len(ids)
    for side in ("right", "left"):
        em.tokenizer.padding_side = side
        torch.testing.assert_close(em.norms(ids, progress=False), ref, rtol=1e-4, atol=0)


# ------------------------------------------------------------------------------------------------
# Fine-tuning, generation, grounding
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(byo_models, fewshot, tmp_path_factory):
    """One LoRA run per model (lazily): 3 steps, lr 1e-2, validation every 2 steps."""
    cache = {}

    def get(name):
        if name not in cache:
            out = tmp_path_factory.mktemp(f"byo_adapter_{name}")
            cfg = FinetuneConfig(
                train_file=str(fewshot[name]["train"]), val_file=str(fewshot[name]["valid"]), output_dir=str(out),
                base_model=str(byo_models[name]), batch_size=4, micro_batch_size=2, max_steps=3, eval_steps=2,
                warmup_steps=0, learning_rate=1e-2, lora_dropout=0.0, cutoff_len=CUTOFF, logging_steps=1, seed=0,
            )
            cache[name] = (cfg, train(cfg))
        return cache[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_finetune_saves_a_full_adapter_that_reloads(byo_models, fewshot, trained, name):
    cfg, res = trained(name)
    m = res.manifest
    losses = [h["loss"] for h in m["log_history"] if "loss" in h]
    assert len(losses) == 3 and losses[-1] < losses[0] and all(torch.isfinite(torch.tensor(losses)))
    assert m["n_val"] == 8 and m["best_eval_loss"] is not None and torch.isfinite(torch.tensor(m["best_eval_loss"]))
    saved = load_file(str(Path(cfg.output_dir) / "adapter_model.safetensors"))
    n_layers = llm.load_base_model(byo_models[name]).config.num_hidden_layers
    for layer in range(n_layers):
        for mod in ("q_proj", "v_proj"):
            for ab in ("lora_A", "lora_B"):
                keys = [k for k in saved if f"layers.{layer}." in k and mod in k and ab in k]
                assert len(keys) == 1 and saved[keys[0]].abs().sum() > 0, (layer, mod, ab)
    assert len(saved) == 4 * n_layers

    tok = llm.load_tokenizer(byo_models[name], padding_side="right")
    from transformers import DataCollatorForSeq2Seq

    batch = DataCollatorForSeq2Seq(tok, padding=True, return_tensors="pt", label_pad_token_id=-100)(
        [tokenize_prompt(tok, ex, CUTOFF) for ex in read_json(fewshot[name]["train"])[:4]])
    reloaded = llm.load_adapter(llm.load_base_model(byo_models[name]), cfg.output_dir).eval()
    res.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, res.model(**batch).logits, rtol=1e-5, atol=1e-5)
        base = llm.load_base_model(byo_models[name])(**batch).logits
    assert not torch.allclose(base, reloaded(**batch).logits)  # the adapter does something


class Spy:
    """Wraps ``model.generate`` and records its inputs."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def parameters(self):
        return self.model.parameters()

    def generate(self, **kw):
        self.calls.append({k: v.clone() for k, v in kw.items() if torch.is_tensor(v)})
        return self.model.generate(**kw)


@pytest.mark.parametrize("name", MODELS)
def test_generation_left_pads_keeps_bos_and_batches_like_single(byo_models, fewshot, trained, name):
    _, res = trained(name)
    tok = llm.load_tokenizer(byo_models[name], padding_side="left")
    rows = read_json(fewshot[name]["test"])
    spy = Spy(res.model)
    kw = dict(num_beams=2, max_new_tokens=6, cutoff_len=CUTOFF, progress=False)
    batched = generate(spy, tok, rows, batch_size=6, engine="hf", **kw)
    single = generate(res.model, tok, rows, batch_size=1, engine="hf", **kw)
    assert batched == single and len(batched) == 6
    # the CPU's prefill-once path (shared prefix, one prefill per prompt) answers the same
    assert generate(res.model, tok, rows, batch_size=6, engine="fast", **kw) == batched
    assert generate(res.model, tok, rows, batch_size=6, engine="fast", **{**kw, "num_beams": 1}) == generate(
        res.model, tok, rows, batch_size=6, engine="hf", **{**kw, "num_beams": 1})
    (call,) = spy.calls
    mask, ids = call["attention_mask"], call["input_ids"]
    assert mask[:, -1].all() and not mask.all()  # padded on the left
    assert (mask.cummax(1).values == mask).all()  # zeros only before the first real token
    assert (ids[mask == 0] == tok.pad_token_id).all()
    first = ids[torch.arange(len(ids)), mask.argmax(1)]
    if name.startswith("llama"):
        assert (first == tok.bos_token_id).all()
    # Prompts longer than cutoff_len lose their oldest tokens but keep BOS.
    spy.calls.clear()
    short = generate(spy, tok, rows[:2], num_beams=1, max_new_tokens=2, batch_size=2, cutoff_len=48, progress=False,
                     engine="hf")
    assert len(short) == 2 and spy.calls[0]["input_ids"].shape[1] == 48
    full = tok(prompt_of(rows[0], with_output=False))["input_ids"]
    kept = spy.calls[0]["input_ids"][0].tolist()
    if name.startswith("llama"):
        assert kept == [tok.bos_token_id] + full[-47:]
    else:
        assert kept == full[-48:]


@pytest.mark.parametrize("name", MODELS)
def test_inference_and_grounding(byo_models, byo_data, fewshot, trained, tmp_path, monkeypatch, name):
    monkeypatch.setenv("DEALREC_CACHE", str(tmp_path / "cache"))  # item embeddings of a throw-away model
    cfg, res = trained(name)
    result = tmp_path / "res.json"
    recs = run_inference(InferenceConfig(
        str(fewshot[name]["test"]), str(result), base_model=str(byo_models[name]), lora_weights=cfg.output_dir,
        num_beams=2, max_new_tokens=6, batch_size=4, cutoff_len=CUTOFF, progress=False))
    tok = llm.load_tokenizer(byo_models[name])
    direct = generate(res.model, tok, read_json(fewshot[name]["test"]), num_beams=2, max_new_tokens=6,
                      batch_size=3, cutoff_len=CUTOFF, progress=False)
    assert [r["predict"] for r in recs] == direct
    assert [r["user"] for r in recs] == byo_data.test_users[:6]

    base = llm.load_base_model(byo_models[name])
    titles = ["Halo 3", "Portal 2", "The Legend of Zelda: Ocarina of Time", "", "Halo", "The Legend of Zelda"]
    together = embed_texts(base, tok, titles, batch_size=4, progress=False)  # the tree layout (shared prefixes once)
    alone = torch.cat([embed_texts(base, tok, [t], batch_size=1, progress=False) for t in titles])
    padded = embed_texts(base, tok, titles, batch_size=4, progress=False, layout="padded")
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
    report = evaluate_results(result, byo_data, base_model=str(byo_models[name]), max_items=100, model=base,
                              tokenizer=tok, progress=False)
    assert report["n_predictions"] == 6 and report["base_model"] == llm.model_id(byo_models[name])
    assert len(report["Recall"]) == len(report["ks"]) and all(0 <= v <= 1 for v in report["Recall"])
    assert (tmp_path / "res.metrics.json").is_file() and list((tmp_path / "cache" / "embeddings").glob("games-*.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-sp", "qwen2"])
def test_torchrun_two_processes_equal_one(byo_models, fewshot, trained, tmp_path, name):
    cfg, _ = trained(name)
    args = ["--base_model", str(byo_models[name]), "--lora_weights", cfg.output_dir, "--test_data_path",
            str(fewshot[name]["test"]), "--num_beams", "2", "--max_new_tokens", "6", "--batch_size", "2",
            "--cutoff_len", str(CUTOFF)]
    one = run_inference(InferenceConfig(
        str(fewshot[name]["test"]), str(tmp_path / "one.json"), base_model=str(byo_models[name]),
        lora_weights=cfg.output_dir, num_beams=2, max_new_tokens=6, batch_size=2, cutoff_len=CUTOFF, progress=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    two = tmp_path / "two.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "code" / "finetune" / "inference.py"), *args, "--result_json_data", str(two)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_json(two) == one
    assert read_json(two.with_name("two.json.json"))["world_size"] == 2


# ------------------------------------------------------------------------------------------------
# Warm start (--resume_from_checkpoint / WARM_START)
# ------------------------------------------------------------------------------------------------


def _warm_cfg(cfg: FinetuneConfig, out: Path, **kw) -> FinetuneConfig:
    from dataclasses import replace

    return replace(cfg, **{"output_dir": str(out), "resume_from_checkpoint": cfg.output_dir, "val_file": None, **kw})


def test_warm_start_with_the_matching_adapter(trained, tmp_path):
    cfg, _ = trained("qwen2")
    # lr 0: one step must leave the warm-start weights exactly as loaded, and save them
    res = train(_warm_cfg(cfg, tmp_path / "warm", learning_rate=0.0, max_steps=1, lora_dropout=0.1))
    src = load_file(str(Path(cfg.output_dir) / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "warm" / "adapter_model.safetensors"))
    assert src.keys() == got.keys()
    for k in src:
        torch.testing.assert_close(got[k], src[k], rtol=0, atol=0)
    assert res.model.peft_config["default"].lora_dropout == 0.1  # the run's dropout applies
    # Effort with the same adapter: its lora_B is the adapter's, not a fresh zero one.
    em = EffortModel.load(EffortConfig(base_model=cfg.base_model, cutoff_len=CUTOFF, resume_from_checkpoint=cfg.output_dir))
    b = [v for k, v in src.items() if "layers.1." in k and "v_proj.lora_B" in k][0]
    torch.testing.assert_close(em.linear.weight.detach(), b)


ADAPTER = "r=8, lora_alpha=16, target_modules=[q_proj, v_proj]"


@pytest.mark.parametrize(
    "change, want, fix",
    [
        ({"lora_r": 4}, "r=4, lora_alpha=16, target_modules=[q_proj, v_proj]", "--lora_r 8 --lora_alpha 16"),
        ({"lora_alpha": 32}, "r=8, lora_alpha=32, target_modules=[q_proj, v_proj]", "LORA_ALPHA=16"),
        ({"lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
         "r=8, lora_alpha=16, target_modules=[k_proj, o_proj, q_proj, v_proj]", "--lora_target_modules q_proj v_proj"),
    ],
)
def test_warm_start_mismatch_names_both(trained, tmp_path, change, want, fix):
    cfg, _ = trained("qwen2")
    with pytest.raises(ModelError) as err:
        train(_warm_cfg(cfg, tmp_path / "warm", max_steps=1, **change))
    msg = str(err.value)
    assert f"adapter_config.json has {ADAPTER} but the run asks for {want}" in msg and fix in msg
    assert not (tmp_path / "warm").exists()  # refused before loading anything
    with pytest.raises(ModelError, match="but the run asks for"):
        EffortModel.load(EffortConfig(base_model=cfg.base_model, resume_from_checkpoint=cfg.output_dir,
                                      **{k: tuple(v) if isinstance(v, list) else v for k, v in change.items()}))


def test_finetune_cli_reports_a_mismatch(trained, tmp_path, caplog):
    cfg, _ = trained("qwen2")
    ft = _script("code/finetune/finetune.py")
    with logging_restored():
        rc = ft.main(["--base_model", cfg.base_model, "--train_data_path", cfg.train_file, "--output_dir",
                      str(tmp_path / "o"), "--resume_from_checkpoint", cfg.output_dir, "--lora_r", "16",
                      "--lora_target_modules", "[q_proj,v_proj]", "--log_file", str(tmp_path / "log")])
    assert rc == 2
    assert "LORA_R=8 LORA_ALPHA=16 LORA_TARGET_MODULES=q_proj,v_proj" in (tmp_path / "log").read_text()


def test_warm_start_refuses_empty_and_foreign_adapters(byo_models, trained, tmp_path):
    cfg, _ = trained("qwen2")
    src = Path(cfg.output_dir)
    lcfg = llm.lora_config(8, 16, 0.0, ("q_proj", "v_proj"))

    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(src / "adapter_config.json", empty)
    save_file({}, str(empty / "adapter_model.safetensors"))
    with pytest.raises(ModelError, match="holds 0 tensor.* saved empty"):
        train(_warm_cfg(cfg, tmp_path / "o1", max_steps=1, resume_from_checkpoint=str(empty)))

    partial = tmp_path / "partial"  # an adapter of a model with fewer layers
    partial.mkdir()
    shutil.copy(src / "adapter_config.json", partial)
    state = {k: v for k, v in load_file(str(src / "adapter_model.safetensors")).items() if "layers.1." not in k}
    save_file(state, str(partial / "adapter_model.safetensors"))
    with pytest.raises(ModelError, match=r"does not fit this base model \(4 LoRA weight\(s\) of the model not in"):
        llm.add_lora(llm.load_base_model(cfg.base_model), lcfg, partial)
    with pytest.raises(ModelError, match="--lora_weights .*does not fit"):
        run_inference(InferenceConfig(str(cfg.train_file), str(tmp_path / "r.json"), base_model=cfg.base_model,
                                      lora_weights=str(partial), progress=False))

    # The Qwen adapter on the LLaMA model: same names, other shapes.
    with pytest.raises(ModelError, match="cannot load the adapter into this base model"):
        llm.add_lora(llm.load_base_model(byo_models["llama-sp"]), lcfg, src)


# ------------------------------------------------------------------------------------------------
# bench/gpu_check.sh on a machine without a GPU
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi: run the check itself")
def test_gpu_check_without_a_gpu_says_so_and_exits_3(tmp_path):
    script = REPO / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "GPU_CHECK_DIR": str(tmp_path / "w")})
    assert proc.returncode == 3
    assert proc.stdout.strip() == "gpu_check: no CUDA device: nothing to check (no working nvidia-smi)"
    assert not (tmp_path / "w").exists()  # nothing was prepared
