"""The CPU savings of :mod:`dealrec.cpu_kernels` change no numbers: sdpa with shared key/value heads
against the copied heads, frozen weights cast to bf16 once against autocast's cast at every call
(a layer, a training step, a whole ``train``)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dealrec import cpu_kernels, llm
from dealrec.cpu_kernels import GQA_ENV, frozen_bf16_weights, use_sdpa_gqa
from dealrec.finetune import FinetuneConfig, train
from dealrec.io import write_json
from dealrec.lm_loss import labelled_head
from dealrec.tiny_models import make_llama

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(tied: bool = False, dtype=torch.float32):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                                   max_position_embeddings=128, pad_token_id=0, tie_word_embeddings=tied,
                                   attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(cfg).to(dtype)
    return llm.add_lora(model, llm.lora_config(4, 8, 0.0, ["q_proj", "v_proj"]), None, trainable=True)


def _batch():
    """Right-padded rows (a mask, so transformers would copy the key/value heads)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 97, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _run(model, batch, autocast: bool = False):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach().float(), out.loss.detach(), grads


def test_shared_kv_heads_same_forward_and_gradients(monkeypatch):
    model = _tiny()
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*a, **kw):
        calls.append((kw.get("enable_gqa", False), a[1].shape[1]))
        return sdpa(*a, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    monkeypatch.setenv(GQA_ENV, "0")
    ref = _run(model, _batch())
    assert calls and all(not g and heads == 6 for g, heads in calls)  # keys/values copied to 6 heads
    calls.clear()
    monkeypatch.setenv(GQA_ENV, "1")
    got = _run(model, _batch())
    assert calls and all(g and heads == 2 for g, heads in calls)  # the 2 shared heads read
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])  # forward: the same numbers
    for n in ref[2]:
        torch.testing.assert_close(got[2][n], ref[2][n], rtol=1e-5, atol=1e-7)


def test_use_sdpa_gqa_sets_the_variable_for_a_cpu_only(monkeypatch):
    monkeypatch.delenv(GQA_ENV, raising=False)
    assert use_sdpa_gqa("cuda") is False and GQA_ENV not in __import__("os").environ
    assert use_sdpa_gqa("cpu") is cpu_kernels._torch_has_enable_gqa()
    monkeypatch.setenv(GQA_ENV, "0")  # the user's choice is kept
    assert use_sdpa_gqa("cpu") is False and __import__("os").environ[GQA_ENV] == "0"


def test_frozen_bf16_weights_cast_once_same_numbers():
    model = _tiny(tied=True)
    base = model.base_model.model
    q = base.model.layers[0].self_attn.q_proj
    before = {n: p.data.clone() for n, p in model.named_parameters()}
    ref = _run(model, _batch(), autocast=True)
    with frozen_bf16_weights(model) as n_cast:
        assert q.base_layer.weight.dtype == torch.bfloat16 and base.model.layers[1].mlp.down_proj.weight.dtype == torch.bfloat16
        assert q.lora_A["default"].weight.dtype == torch.float32  # trained: autocast caches its cast itself
        assert base.lm_head.weight is base.model.embed_tokens.weight and base.lm_head.weight.dtype == torch.float32
        assert n_cast == sum(p.numel() for n, p in model.named_parameters()
                             if not p.requires_grad and "embed" not in n and "norm" not in n)
        got = _run(model, _batch(), autocast=True)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    for n in ref[2]:
        assert torch.equal(got[2][n], ref[2][n]), n
    for n, p in model.named_parameters():  # fp32 again, the same values
        assert p.dtype == torch.float32 and torch.equal(p.data, before[n]), n


def test_frozen_bf16_weights_restored_after_an_error():
    model = _tiny()
    w = model.base_model.model.model.layers[0].mlp.up_proj.weight
    with pytest.raises(RuntimeError), frozen_bf16_weights(model):
        assert w.dtype == torch.bfloat16
        model(**_batch())  # outside autocast: a bf16 weight meets an fp32 input
    assert w.dtype == torch.float32
    with frozen_bf16_weights(model, enabled=False) as n:
        assert n == 0 and w.dtype == torch.float32


def test_labelled_head_under_frozen_bf16_weights():
    model = _tiny()
    ref = _run(model, _batch(), autocast=True)
    with labelled_head(model), frozen_bf16_weights(model):
        got = _run(model, _batch(), autocast=True)
    with labelled_head(model):
        lab = _run(model, _batch(), autocast=True)
    assert torch.equal(got[1], lab[1])
    torch.testing.assert_close(got[1], ref[1], rtol=1e-2, atol=0)


def test_train_bf16_autocast_gives_the_same_adapter(tmp_path, monkeypatch):
    """A whole bf16-autocast ``train`` (accumulation, evaluation, best checkpoint) with and without
    the cast done once: the same adapter, bit for bit, and the same evaluation losses."""
    from dealrec.data import load_dataset
    from dealrec.fewshot import build_examples

    monkeypatch.setenv("DEALREC_NATIVE_BF16", "1")  # run bf16 autocast even where it is emulated
    folder = make_llama(tmp_path / "llama", kv_heads=2)
    tok = llm.load_tokenizer(folder)
    data = load_dataset(REPO / "data", "games", check_dicts=False)
    write_json(tmp_path / "train.json", build_examples(data, range(8), "train", tok, 96, progress=False))
    write_json(tmp_path / "valid.json", build_examples(data, data.valid_users[:2], "valid", tok, 96, progress=False))
    runs = {}
    for once in (False, True):
        if not once:
            monkeypatch.setattr("dealrec.finetune.frozen_bf16_weights",
                                lambda model, enabled=True: contextlib.nullcontext(0))
        else:
            monkeypatch.setattr("dealrec.finetune.frozen_bf16_weights", frozen_bf16_weights)
        cfg = FinetuneConfig(train_file=str(tmp_path / "train.json"), val_file=str(tmp_path / "valid.json"),
                             output_dir=str(tmp_path / str(once)), base_model=str(folder), batch_size=4,
                             micro_batch_size=2, max_steps=3, eval_steps=1, warmup_steps=0, learning_rate=1e-2,
                             cutoff_len=96, train_on_inputs=False, logging_steps=1, precision="bf16")
        res = train(cfg)
        assert res.manifest["precision_ran"] == "bf16 autocast"
        assert res.manifest["kernels_ran"] == {"sdpa_shared_kv_heads": True, "frozen_weights_cast_once": once}
        assert all(p.dtype == torch.float32 for p in res.model.parameters())  # fp32 again after training
        runs[once] = (res.manifest, load_file(str(tmp_path / str(once) / "adapter_model.safetensors")))
    (m_ref, w_ref), (m_once, w_once) = runs[False], runs[True]
    assert w_ref.keys() == w_once.keys() and any(v.abs().sum() > 0 for k, v in w_ref.items() if "lora_B" in k)
    for k in w_ref:
        assert torch.equal(w_once[k], w_ref[k]), k
    evals = [[h["eval_loss"] for h in m["log_history"] if "eval_loss" in h] for m in (m_ref, m_once)]
    assert len(evals[0]) == 3 and evals[0] == evals[1]


def _no_cast(model, enabled=True):
    return contextlib.nullcontext(0)


@pytest.mark.parametrize("prefix_reuse", [True, False], ids=["prefix", "padded"])
def test_effort_bf16_same_scores_with_the_cast_once(prefix_reuse, monkeypatch):
    """The effort stage's bf16 mode: the layers below the target hold bf16 weights, the same scores."""
    from test_effort import toy_effort_model
    from test_effort_prefix import PREFIX_ROWS

    from dealrec.scores import effort_prefix

    em = toy_effort_model("lora_B", "right")
    em.model.float()
    em.cfg.prefix_reuse = prefix_reuse
    em.precision = "bf16"
    monkeypatch.setattr(effort_prefix, "frozen_bf16_weights", _no_cast)
    ref = em.norms(PREFIX_ROWS, progress=False)
    cast = []

    def spy(model, enabled=True):
        cast.append(len(model))  # the layers below the target only
        return frozen_bf16_weights(model, enabled)

    monkeypatch.setattr(effort_prefix, "frozen_bf16_weights", spy)
    got = em.norms(PREFIX_ROWS, progress=False)
    assert cast and all(n == len(em.layers) - 1 for n in cast)
    assert torch.equal(got, ref)
    assert all(p.dtype == torch.float32 for p in em.model.parameters())


@pytest.mark.parametrize("layout", ["tree", "padded"])
def test_title_embeddings_bf16_same_with_the_cast_once(layout, monkeypatch):
    from test_tree_pack import PAD, random_seqs, tiny_llama

    from dealrec import ground

    model = tiny_llama("sdpa")
    seqs = random_seqs(12, seed=3)
    monkeypatch.setattr(ground, "frozen_bf16_weights", _no_cast)
    ref = ground.embed_token_seqs(model, seqs, PAD, progress=False, layout=layout, precision="bf16")
    monkeypatch.setattr(ground, "frozen_bf16_weights", frozen_bf16_weights)
    got = ground.embed_token_seqs(model, seqs, PAD, progress=False, layout=layout, precision="bf16")
    assert torch.equal(got, ref)
    assert all(p.dtype == torch.float32 for p in model.parameters())
