"""LoRA fine-tuning on the embedded model: one real step, saving, reloading, evaluation path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dealrec.core.files import read_json, write_json
from dealrec.data.dataset import load_dataset
from dealrec.data.fewshot import build_examples
from dealrec.llm import model as llm
from dealrec.llm.finetune import MANIFEST, FinetuneConfig, TokenizedDataset, is_done, train

REPO = Path(__file__).resolve().parents[2]
CUTOFF = 96

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.slow,
    pytest.mark.skipif(not (REPO / "data" / "games").is_dir(), reason="data/games not linked"),
]



@pytest.fixture(scope="module")
def files(tmp_path_factory):
    data = load_dataset(REPO / "data", "games", check_dicts=False)
    tok = llm.load_tokenizer(None)
    tmp = tmp_path_factory.mktemp("ft")
    train_ex = build_examples(data, range(4), "train", tok, CUTOFF, progress=False)
    val_ex = build_examples(data, data.valid_users[:2], "valid", tok, CUTOFF, progress=False)
    write_json(tmp / "train.json", train_ex)
    write_json(tmp / "valid.json", val_ex)
    write_json(tmp / "empty.json", [])
    return tmp, train_ex


def batch_of(examples, tok):
    from transformers import DataCollatorForSeq2Seq

    ds = TokenizedDataset(examples, tok, CUTOFF, True)
    return DataCollatorForSeq2Seq(tok, padding=True, return_tensors="pt", label_pad_token_id=-100)(list(ds))


@torch.no_grad()
def loss_of(model, batch) -> float:
    model.eval()
    return float(model(**batch).loss)


def test_one_step_trains_saves_and_reloads(files):
    tmp, train_ex = files
    cfg = FinetuneConfig(
        train_file=str(tmp / "train.json"), val_file=str(tmp / "empty.json"), output_dir=str(tmp / "adapter"),
        batch_size=4, micro_batch_size=4, max_steps=1, warmup_steps=0, learning_rate=2e-3, lora_dropout=0.0,
        cutoff_len=CUTOFF, logging_steps=1, seed=0,
    )
    tok = llm.load_tokenizer(None, padding_side="right")
    batch = batch_of(train_ex, tok)
    base_loss = loss_of(llm.load_base_model(None), batch)  # = the LoRA initialisation (B = 0)

    res = train(cfg)
    out = Path(res.output_dir)
    assert (out / "adapter_model.safetensors").is_file() and (out / MANIFEST).is_file()
    assert not (out / "checkpoints").exists()
    m = read_json(out / MANIFEST)
    assert m["global_step"] == 1 and m["n_val"] == 0 and m["best_eval_loss"] is None
    assert m["gradient_accumulation_steps"] == 1

    lora_b = {n: p for n, p in res.model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values())  # initialised at zero
    trained_loss = loss_of(res.model, batch)
    assert trained_loss < base_loss

    saved = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_B" in k for k in saved) and all(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)

    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(llm.load_base_model(None), str(out)).eval()
    with torch.no_grad():
        a = res.model(**batch).logits
        b = reloaded(**batch).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert is_done(cfg)
    # A rerun with the same configuration is skipped.
    assert train(cfg).model is None


def test_gradient_checkpointing_trains_the_same_adapter(files):
    """--gradient_checkpointing recomputes activations in the backward pass: the same LoRA weights
    after two steps (float summation order aside) and the same key."""
    tmp, _ = files
    common = dict(train_file=str(tmp / "train.json"), val_file=str(tmp / "empty.json"), batch_size=4,
                  micro_batch_size=2, max_steps=2, warmup_steps=0, learning_rate=2e-3, lora_dropout=0.0,
                  cutoff_len=CUTOFF, logging_steps=1, seed=0)
    plain = FinetuneConfig(output_dir=str(tmp / "plain"), **common)
    ckpt = FinetuneConfig(output_dir=str(tmp / "ckpt"), gradient_checkpointing=True, **common)
    assert plain.key() == ckpt.key()
    a, b = train(plain), train(ckpt)
    inner = b.model.base_model.model
    assert getattr(inner, "is_activation_checkpointing", None) or inner.is_gradient_checkpointing
    wa = load_file(str(Path(a.output_dir) / "adapter_model.safetensors"))
    wb = load_file(str(Path(b.output_dir) / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)


def test_evaluation_early_stopping_and_best_model(files):
    tmp, _ = files
    cfg = FinetuneConfig(
        train_file=str(tmp / "train.json"), val_file=str(tmp / "valid.json"), output_dir=str(tmp / "adapter_eval"),
        batch_size=2, micro_batch_size=2, max_steps=2, eval_steps=1, warmup_steps=0, learning_rate=1e-3,
        cutoff_len=CUTOFF, sample=2, logging_steps=1,
    )
    res = train(cfg)
    m = res.manifest
    evals = [h["eval_loss"] for h in m["log_history"] if "eval_loss" in h]
    assert len(evals) == 2 and m["n_val"] == 2 and m["n_train"] == 2
    assert m["best_eval_loss"] == pytest.approx(min(evals))
    assert (Path(cfg.output_dir) / "adapter_config.json").is_file()


def test_interrupted_run_resumes_to_the_same_adapter(files, monkeypatch):
    """Ctrl-C after step 3 of 4 (checkpoint at step 2, mid-epoch, dropout on): the rerun resumes from
    checkpoint-2 and ends with the adapter, the evaluations and the step count of an uninterrupted run."""
    from dealrec.core import faults
    from dealrec.llm.resume import RUN_FILE, complete_checkpoints

    tmp, _ = files
    common = dict(train_file=str(tmp / "train.json"), val_file=str(tmp / "valid.json"), batch_size=1,
                  micro_batch_size=1, max_steps=4, eval_steps=2, warmup_steps=1, learning_rate=3e-3,
                  cutoff_len=CUTOFF, logging_steps=1, seed=0)
    ref = train(FinetuneConfig(output_dir=str(tmp / "uninterrupted"), **common))
    cfg = FinetuneConfig(output_dir=str(tmp / "interrupted"), **common)
    steps = []

    def ctrl_c_at_step_3(stage: str) -> None:
        steps.append(stage)
        if steps.count("finetune") == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(faults, "step", ctrl_c_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    ckpts = Path(cfg.output_dir) / "checkpoints"
    assert [p.name for p in complete_checkpoints(ckpts)] == ["checkpoint-2"] and not is_done(cfg)
    seconds = read_json(ckpts / RUN_FILE)["seconds"]
    assert seconds.keys() == {"2"} and seconds["2"] > 0

    res = train(cfg)
    m = res.manifest
    assert m["resumed"] == {"from_step": 2, "seconds_before": seconds["2"]} and ref.manifest["resumed"] is None
    assert m["seconds"] > seconds["2"]
    assert m["global_step"] == ref.manifest["global_step"] == 4
    evals = [[h["eval_loss"] for h in r.manifest["log_history"] if "eval_loss" in h] for r in (res, ref)]
    assert len(evals[0]) == 2 and evals[0] == pytest.approx(evals[1], abs=1e-6)
    wa = load_file(str(Path(res.output_dir) / "adapter_model.safetensors"))
    wb = load_file(str(Path(ref.output_dir) / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=0, rtol=0)
    assert not ckpts.exists()


def test_bad_warm_start_adapter(files, tmp_path):
    tmp, _ = files
    bad = tmp_path / "warm"
    bad.mkdir()
    write_json(bad / "adapter_config.json", {"r": 16, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]})
    (bad / "adapter_model.safetensors").write_bytes(b"")
    cfg = FinetuneConfig(train_file=str(tmp / "train.json"), output_dir=str(tmp_path / "out"),
                         resume_from_checkpoint=str(bad), max_steps=1, batch_size=4)
    with pytest.raises(llm.ModelError, match="lora_r"):
        train(cfg)
    with pytest.raises(FileNotFoundError, match="gen_fewshot"):
        train(FinetuneConfig(train_file=str(tmp_path / "missing.json"), output_dir=str(tmp_path / "o2")))
