"""The causal-LM loss with the LM head on labelled positions only (:mod:`dealrec.llm.lm_loss`): the same
loss and gradient as the model's own forward, the same adapter from ``train``, and models whose
loss it would change are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dealrec.core.files import write_json
from dealrec.llm import model as llm
from dealrec.llm.finetune import FinetuneConfig, train
from dealrec.llm.lm_loss import check_labelled_head, labelled_head, supports_labelled_head
from dealrec.llm.tiny_models import make_llama

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(kind: str, **extra):
    import transformers

    cls, cfg_cls = {"llama": ("LlamaForCausalLM", "LlamaConfig"), "qwen2": ("Qwen2ForCausalLM", "Qwen2Config"),
                    "gemma2": ("Gemma2ForCausalLM", "Gemma2Config")}[kind]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                         max_position_embeddings=128, pad_token_id=0, **extra)
    model = getattr(transformers, cls)(cfg).double()
    return llm.add_lora(model, llm.lora_config(4, 8, 0.0, ["q_proj", "v_proj"]), None, trainable=True)


def _batch():
    """Three right-padded rows, labels only on each row's last few tokens (a response-only loss)."""
    g = torch.Generator().manual_seed(1)
    lengths, responses = (11, 7, 9), (3, 2, 4)
    ids = torch.zeros(3, 12, dtype=torch.long)
    mask = torch.zeros(3, 12, dtype=torch.long)
    labels = torch.full((3, 12), -100)
    for r, (n, k) in enumerate(zip(lengths, responses)):
        ids[r, :n] = torch.randint(1, 97, (n,), generator=g)
        mask[r, :n] = 1
        labels[r, n - k:n] = ids[r, n - k:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(model, batch, labelled, **kw):
    model.zero_grad()
    with labelled_head(model, labelled):
        loss = model(**batch, **kw).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("num_items", [None, 13])
def test_labelled_loss_and_gradient_equal_the_models_own(kind, num_items):
    model = _tiny(kind)
    with torch.no_grad():  # non-zero lora_B, so that every LoRA parameter gets a gradient
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    batch = _batch()
    kw = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    ref, g_ref = _loss_and_grads(model, batch, False, **kw)
    got, g_got = _loss_and_grads(model, batch, True, **kw)
    # (transformers' loss casts the logits to float32: equal to float32 rounding, not float64's)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    assert g_ref and all(g.abs().sum() > 0 for g in g_ref.values())
    for n in g_ref:
        torch.testing.assert_close(g_got[n], g_ref[n], rtol=1e-5, atol=1e-6 * g_ref[n].abs().max().item())
    with labelled_head(model):  # without labels: the model's own forward, all logits
        assert model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.shape == (3, 12, 97)
    assert model(**batch).logits.shape == (3, 12, 97)  # the class's forward again after the block
    assert check_labelled_head(model, batch) is None


def test_models_whose_loss_it_would_change_are_refused():
    capped = _tiny("gemma2", final_logit_softcapping=0.5, query_pre_attn_scalar=8)
    assert supports_labelled_head(capped)
    why = check_labelled_head(capped, _batch())
    assert why is not None and "differs from its own forward" in why
    odd = _tiny("llama")
    odd.get_base_model().lm_head = torch.nn.Sequential(odd.get_base_model().lm_head)
    assert not supports_labelled_head(odd) and "not a linear layer" in check_labelled_head(odd, _batch())


@pytest.mark.skipif(not (REPO / "data" / "games").is_dir(), reason="data/games not linked")
def test_train_gives_the_same_adapter_either_way(tmp_path):
    """Two accumulated micro-batches a step (num_items_in_batch), LoRA dropout, evaluation."""
    from dealrec.data.dataset import load_dataset
    from dealrec.data.fewshot import build_examples

    folder = make_llama(tmp_path / "llama")
    tok = llm.load_tokenizer(folder)
    data = load_dataset(REPO / "data", "games", check_dicts=False)
    write_json(tmp_path / "train.json", build_examples(data, range(8), "train", tok, 96, progress=False))
    write_json(tmp_path / "valid.json", build_examples(data, data.valid_users[:2], "valid", tok, 96, progress=False))
    runs = {}
    for mode in ("all", "labelled"):
        cfg = FinetuneConfig(train_file=str(tmp_path / "train.json"), val_file=str(tmp_path / "valid.json"),
                             output_dir=str(tmp_path / mode), base_model=str(folder), batch_size=4,
                             micro_batch_size=2, max_steps=3, eval_steps=1, warmup_steps=0, learning_rate=1e-2,
                             cutoff_len=96, train_on_inputs=False, logging_steps=1, loss_positions=mode)
        res = train(cfg)
        assert res.manifest["loss_positions_ran"] == mode and res.manifest["gradient_accumulation_steps"] == 2
        runs[mode] = (res.manifest, load_file(str(tmp_path / mode / "adapter_model.safetensors")))
    (m_all, w_all), (m_lab, w_lab) = runs["all"], runs["labelled"]
    assert m_all["key"] == m_lab["key"]  # the same loss: the same adapter key
    assert w_all.keys() == w_lab.keys() and any(v.abs().sum() > 0 for k, v in w_all.items() if "lora_B" in k)
    for k in w_all:
        torch.testing.assert_close(w_lab[k], w_all[k], rtol=1e-4, atol=1e-6)
    evals = [[h["eval_loss"] for h in m["log_history"] if "eval_loss" in h] for m in (m_all, m_lab)]
    assert len(evals[0]) == 3
    torch.testing.assert_close(torch.tensor(evals[1]), torch.tensor(evals[0]), rtol=1e-5, atol=0)
