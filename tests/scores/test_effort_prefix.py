"""Shared-prefix effort (exact) and lower precision below the target layer: against the padded
batched path and per-sample autograd; precision resolution and its errors."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from scipy.stats import spearmanr
from test_effort import CUTOFF, materialised_norms, toy_effort_model

from dealrec.core.token_rows import common_prefix_len
from dealrec.data.fewshot import build_examples
from dealrec.llm.model import ModelError
from dealrec.scores.effort import EffortConfig, EffortModel, target_linear
from dealrec.scores.effort_prefix import PrefixEffort, resolve_precision
from dealrec.scores.loss_head import head_grad_autograd

pytestmark = pytest.mark.usefixtures("one_thread")

PREFIX = [5, 9, 3, 17, 22, 8]
# Suffixes of different lengths; one prompt is the prefix plus one token, one is cut inside it.
PREFIX_ROWS = [PREFIX + [41, 2, 7, 30], PREFIX + [12], PREFIX + [60, 1, 4, 4, 19, 33, 11, 25], PREFIX + [7, 7]]


def test_common_prefix_len():
    assert common_prefix_len([]) == 0
    assert common_prefix_len([[1, 2, 3]]) == 3
    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_len([[1, 2], [2, 1]]) == 0
    assert common_prefix_len(PREFIX_ROWS) == len(PREFIX)


@pytest.mark.parametrize("rows", [PREFIX_ROWS, PREFIX_ROWS + [PREFIX[:3] + [50]]], ids=["shared6", "cut-inside"])
@pytest.mark.parametrize("target,module", [("lora_B", "v_proj"), ("base", "v_proj"), ("lora_B", "q_proj"),
                                           ("base", "o_proj"), ("base", "down_proj"), ("base", "k_proj")])
def test_toy_prefix_path_equals_per_sample_autograd(target, module, rows):
    em = toy_effort_model(target, "right")
    em.cfg = dataclasses.replace(em.cfg, module=module)
    em.linear = target_linear(em.model, em.cfg)
    by_autograd, _ = materialised_norms(em, rows)
    assert PrefixEffort.supports(em.cfg, 2) == (module != "k_proj")
    em.cfg.max_batch_size = 2  # several batches, each with its own padding
    got = em.norms(rows, progress=False)
    torch.testing.assert_close(got, by_autograd, rtol=1e-5, atol=0)


def test_toy_prefix_contributions_are_needed():
    """Dropping the constant prefix term, or the suffix's gradient through the prefix values,
    changes the result: the test above really checks both."""
    em = toy_effort_model("lora_B", "right")
    fast = PrefixEffort(em)
    c = common_prefix_len(PREFIX_ROWS) - 1
    pre = fast.prefix(PREFIX_ROWS[0][:c + 1])
    full = fast.batch_norms(pre, [r[c:] for r in PREFIX_ROWS])
    no_const = fast.batch_norms(dataclasses.replace(pre, g_const=torch.zeros_like(pre.g_const)),
                                [r[c:] for r in PREFIX_ROWS])
    assert ((full - no_const).abs() / full > 1e-3).all()
    em.cfg = dataclasses.replace(em.cfg, module="q_proj")  # no value leaf taken for other modules
    assert not torch.allclose(full, PrefixEffort(em).batch_norms(pre, [r[c:] for r in PREFIX_ROWS]), rtol=1e-3)


def test_progress_moves_within_a_chunk():
    em = toy_effort_model("base", "right")
    em.cfg.max_batch_size = 1

    class Bar:
        n = 0
        calls = 0

        def update(self, k):
            self.n += k
            self.calls += 1

    for rows in (PREFIX_ROWS, [[5, 9, 3], [7, 30, 12, 1]]):  # prefix path, then the padded path
        bar = Bar()
        em.norms(rows, progress=False, bar=bar)
        assert bar.n == len(rows) and bar.calls == len(rows)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16_head"])
@pytest.mark.parametrize("prefix_reuse", [True, False], ids=["prefix", "padded"])
def test_toy_loss_head_precision(precision, prefix_reuse):
    """The loss head's products run in bf16 only for ``bf16_head`` (``bf16`` keeps the head fp32
    like the target layer): its gradient equals autograd through the head in fp32, or under bf16
    autocast for ``bf16_head``; and every mode's scores stay close to fp32, on both paths."""
    em = toy_effort_model("lora_B", "right")
    em.model.float()
    em.cfg.prefix_reuse = prefix_reuse
    ref = em.norms(PREFIX_ROWS, progress=False)
    em.precision = precision
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, em.model.config.hidden_size, generator=g)
    targets = torch.randint(em.model.config.vocab_size, (9,), generator=g)
    tw = torch.rand(9, generator=g)
    _, dh = em.head_grad(hidden, targets, tw)
    _, dh32 = head_grad_autograd(em._lm_head(), hidden, targets, tw)
    _, dh16 = head_grad_autograd(em._lm_head(), hidden, targets, tw, bf16=True)
    assert not torch.allclose(dh16, dh32, rtol=1e-5, atol=0)
    torch.testing.assert_close(dh, dh16 if precision == "bf16_head" else dh32, rtol=1e-2 if precision == "bf16_head"
                               else 1e-5, atol=1e-2 * dh32.abs().max().item() if precision == "bf16_head" else 1e-7)
    got = em.norms(PREFIX_ROWS, progress=False)
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0)


# --------------------------------------------------------------------------------------------
# Precision: resolution and errors (no model)
# --------------------------------------------------------------------------------------------


def test_resolve_precision(monkeypatch):
    monkeypatch.setenv("DEALREC_NATIVE_BF16", "1")
    assert resolve_precision("auto", "cpu") == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu", quantization="8bit") == "fp32"
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("int8", "cpu") == "int8"
    assert resolve_precision("auto", "cuda:0") == "fp32"  # the GPU runs the model's own dtype
    assert resolve_precision("bf16_head", "cpu") == "bf16_head"  # opt-in only: auto never picks it
    assert resolve_precision("bf16_head", "cuda:0") == "fp32"
    monkeypatch.setenv("DEALREC_NATIVE_BF16", "0")
    assert resolve_precision("auto", "cpu") == "fp32"
    for mode in ("bf16", "bf16_head"):
        with pytest.warns(UserWarning, match="no native bf16.*using fp32"):
            assert resolve_precision(mode, "cpu") == "fp32"
        with pytest.raises(ModelError, match="no native bf16.*drop --force_precision"):
            resolve_precision(mode, "cpu", force=True)
    with pytest.raises(ModelError, match="int8 is a CPU mode.*--quantization 8bit"):
        resolve_precision("int8", "cuda:0")
    with pytest.raises(ModelError, match="int8 needs fp32 base weights, but --quantization 4bit"):
        resolve_precision("int8", "cpu", quantization="4bit")
    with pytest.raises(ValueError, match="--effort_precision must be one of"):
        resolve_precision("fp8", "cpu")


def test_precision_errors_come_before_loading(monkeypatch):
    import dealrec.scores.effort as effort_mod

    monkeypatch.setattr(effort_mod, "load_base_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ModelError, match="int8 is a CPU mode"):
        EffortModel.load(EffortConfig(precision="int8"), device="cuda:0")
    with pytest.raises(ModelError, match="int8 needs fp32 base weights"):
        EffortModel.load(EffortConfig(precision="int8", quantization="8bit"))


# --------------------------------------------------------------------------------------------
# The embedded SmolLM2 on real Games prompts
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_rows(games):
    from dealrec.llm import model as llm

    tok = llm.load_tokenizer(None)
    ex = build_examples(games, range(40), "train", tok, CUTOFF, progress=False)
    em = EffortModel.load(EffortConfig(cutoff_len=CUTOFF, target="base", prefix_reuse=False))
    rows = em.encode(ex)[:12]
    assert any(len(r) == CUTOFF for r in rows)  # some prompts are cut at cutoff_len
    assert common_prefix_len(rows) > 50  # the shared preamble, found from the tokens
    return em, rows


@pytest.mark.slow
def test_real_prefix_path_equals_padded_path(real_rows):
    em, rows = real_rows
    for target in ("base", "lora_B"):
        cfg = dataclasses.replace(em.cfg, target=target)
        if target != em.cfg.target:
            em = EffortModel.load(cfg)
        em.cfg.prefix_reuse = False
        ref = em.norms(rows, progress=False)
        em.cfg.prefix_reuse = True
        torch.testing.assert_close(em.norms(rows, progress=False), ref, rtol=1e-4, atol=0, msg=target)


@pytest.mark.slow
def test_real_bf16_agrees(real_rows, monkeypatch):
    """A smoke check on 12 prompts (the ≥ 1,000-prompt agreement is measured by bench/bench_effort.py)."""
    em, rows = real_rows
    monkeypatch.setenv("DEALREC_NATIVE_BF16", "1")  # run bf16 even where it is emulated
    ref = em.norms(rows, progress=False)
    low = EffortModel.load(dataclasses.replace(em.cfg, precision="bf16"))
    assert low.precision == "bf16"
    got = low.norms(rows, progress=False)
    assert spearmanr(ref, got).statistic > 0.95
    torch.testing.assert_close(got, ref, rtol=0.02, atol=0)


@pytest.mark.slow
def test_real_int8_quantizes_only_below_the_target(real_rows):
    """int8 runs the layers below the target with dynamically quantized linears and keeps the
    target layer in fp32. Its agreement with fp32 is poor on SmolLM2 (activation outliers of
    ~2e4 defeat per-tensor dynamic activation scales): measured by the bench, never picked by auto."""
    em, rows = real_rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        low = EffortModel.load(dataclasses.replace(em.cfg, precision="int8"))
    assert low.precision == "int8"
    quantized = torch.ao.nn.quantized.dynamic.Linear
    assert all(isinstance(m, quantized) for m in (low.layers[0].self_attn.v_proj, low.layers[-2].mlp.down_proj))
    assert type(low.layers[-1].self_attn.v_proj) is torch.nn.Linear  # the target layer: untouched (base target)
    got = low.norms(rows[:4], progress=False)
    assert torch.isfinite(got).all() and (got > 0).all()
