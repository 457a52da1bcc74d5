"""Learning-effort scores (paper Eq. 12): batched per-sample gradient norms vs. references.

The toy tests use a tiny random Llama (fast, float64 reference); the ``slow`` ones the
embedded SmolLM2 on a few real Games prompts of different lengths.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dealrec.core.files import read_json
from dealrec.data.fewshot import build_examples
from dealrec.llm.model import ModelError, add_lora, lora_config
from dealrec.scores.effort import EffortConfig, EffortModel, chunk_timing, effort_scores, target_linear

CUTOFF = 128

pytestmark = pytest.mark.usefixtures("one_thread")



# --------------------------------------------------------------------------------------------
# Toy: a tiny random Llama, the batched norms against per-sample autograd, both targets
# --------------------------------------------------------------------------------------------

TOY_ROWS = [[5, 9, 3, 17, 22, 8, 41, 2], [7, 30, 12], [60, 1, 4, 4, 19, 33], [11, 25]]


def toy_effort_model(target: str, padding_side: str) -> EffortModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    cfg = EffortConfig(target=target, cutoff_len=32)
    if target == "lora_B":
        model = add_lora(model, lora_config(4, 8, 0.0, ("q_proj", "v_proj")), trainable=False)
    model = model.double().eval()
    if target == "lora_B":
        with torch.no_grad():  # a non-zero B so that the output depends on it (any B works)
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    for p in model.parameters():
        p.requires_grad_(False)
    tok = SimpleNamespace(pad_token_id=0, padding_side=padding_side)
    return EffortModel(model, tok, target_linear(model, cfg), cfg, torch.device("cpu"))


def materialised_norms(em: EffortModel, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, unpadded: ‖∂L/∂W‖ by plain autograd on W, and ‖Σ_t g_t x_tᵀ‖ from hooks."""
    weight = em.linear.weight
    autograd_norms, sum_norms = [], []
    for row in rows:
        saved = {}

        def hook(mod, inputs, output, saved=saved):  # noqa: ANN001
            saved["x"] = inputs[0]
            output.retain_grad()
            saved["y"] = output

        handle = em.linear.register_forward_hook(hook)
        weight.requires_grad_(True)
        try:
            ids = torch.tensor([row])
            logits = em.model(input_ids=ids, use_cache=False).logits
            loss = F.cross_entropy(logits[0, :-1], ids[0, 1:])
            loss.backward()
        finally:
            handle.remove()
            weight.requires_grad_(False)
        g, x = saved["y"].grad[0], saved["x"][0].detach()  # [T, out], [T, in]
        per = sum(torch.outer(g[t], x[t]) for t in range(len(row)))
        torch.testing.assert_close(per, weight.grad, rtol=1e-10, atol=1e-12)
        autograd_norms.append(weight.grad.norm())
        sum_norms.append(per.norm())
        weight.grad = None
    return torch.stack(autograd_norms).float(), torch.stack(sum_norms).float()


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("target", ["lora_B", "base"])
def test_toy_batched_norms_equal_per_sample_autograd(target, padding_side):
    em = toy_effort_model(target, padding_side)
    assert em.linear is target_linear(em.model, em.cfg)
    by_autograd, by_sum = materialised_norms(em, TOY_ROWS)
    assert (by_autograd > 0).all()
    torch.testing.assert_close(by_sum, by_autograd, rtol=1e-6, atol=0)
    ids, mask = em.pad(TOY_ROWS)
    assert mask[:, -1 if padding_side == "left" else 0].all() and not mask.all()
    # One padded batch (Gram trick for 'base', materialised B gradient for 'lora_B').
    torch.testing.assert_close(em.batch_norms(ids, mask), by_autograd, rtol=1e-5, atol=0)
    # Length-sorted batches of 2 under a small budget: same values, in the input order.
    em.cfg.max_batch_size = 2
    assert em.batches([[1] * len(r) for r in TOY_ROWS]) == [[3, 1], [2, 0]]
    torch.testing.assert_close(em.norms(TOY_ROWS, progress=False), by_autograd, rtol=1e-5, atol=0)
    torch.testing.assert_close(em.norms_loop(TOY_ROWS), by_autograd, rtol=1e-5, atol=0)


def test_toy_gram_trick_is_the_frobenius_norm():
    """‖Σ_t g_t x_tᵀ‖²_F = Σ_{t,t'} (g_t·g_t')(x_t·x_t') on random data."""
    g = torch.randn(3, 7, 5, dtype=torch.float64)
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    direct = torch.einsum("bto,bti->boi", g, x).flatten(1).norm(dim=1)
    gram = (torch.einsum("bto,bso->bts", g, g) * torch.einsum("bti,bsi->bts", x, x)).sum((1, 2)).sqrt()
    torch.testing.assert_close(gram, direct)


# --------------------------------------------------------------------------------------------
# Configuration errors (no model forward)
# --------------------------------------------------------------------------------------------


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"--effort_target must be one of .*'bogus'"):
        EffortConfig(target="bogus").validate()
    with pytest.raises(ValueError, match=r"lora_B of 'k_proj' needs it among --lora_target_modules"):
        EffortConfig(target="lora_B", module="k_proj").validate()
    EffortConfig(target="base", module="k_proj").validate()  # any module for the frozen weight
    with pytest.raises(ValueError, match="effort_target"):
        EffortModel.load(EffortConfig(target="bogus"))  # before loading anything
    empty = tmp_path / "adapter"
    empty.mkdir()
    with pytest.raises(ModelError, match="no adapter_config.json"):
        EffortModel.load(EffortConfig(cutoff_len=CUTOFF, resume_from_checkpoint=str(empty)))
    with pytest.raises(ModelError, match="no such directory"):
        EffortModel.load(EffortConfig(cutoff_len=CUTOFF, resume_from_checkpoint=str(tmp_path / "nope")))


def test_unknown_module_is_named():
    em = toy_effort_model("base", "right")
    with pytest.raises(ValueError, match="no module named 'nope'"):
        target_linear(em.model, EffortConfig(target="base", module="nope"))
    with pytest.raises(ValueError, match="has no LoRA adapter"):
        target_linear(em.model, EffortConfig(target="lora_B"))


# --------------------------------------------------------------------------------------------
# The embedded SmolLM2 on real prompts
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples(games):
    from dealrec.llm import model as llm

    return build_examples(games, range(6), "train", llm.load_tokenizer(None), CUTOFF, progress=False)


@pytest.fixture(scope="module")
def models():
    """Loaded lazily, one per (target, seed), shared by the module's tests."""
    cache: dict[tuple[str, int], EffortModel] = {}

    def get(target: str, seed: int = 42) -> EffortModel:
        if (target, seed) not in cache:
            cache[(target, seed)] = EffortModel.load(EffortConfig(target=target, cutoff_len=CUTOFF, seed=seed))
        em = cache[(target, seed)]
        em.tokenizer.padding_side = "right"
        return em

    yield get
    cache.clear()


@pytest.fixture(scope="module")
def token_ids(models, examples):
    """Six real prompts; some cut shorter so that the padded batch mixes very different lengths."""
    ids = models("lora_B").encode(examples)
    assert len(ids) == 6 and all(len(r) <= CUTOFF for r in ids)
    ids = [r[:n] for r, n in zip(ids, (CUTOFF, 24, 80, 40, CUTOFF, 56))]
    assert len({len(r) for r in ids}) == 6
    return ids


REFERENCE: dict[str, torch.Tensor] = {}


@pytest.mark.slow
@pytest.mark.parametrize("target", ["lora_B", "base"])
def test_batched_norms_equal_loop(models, token_ids, target):
    em = models(target)
    assert em.batches(token_ids) == [sorted(range(6), key=lambda i: len(token_ids[i]))]  # one padded batch
    ref = em.norms_loop(token_ids)
    assert (ref > 0).all() and torch.isfinite(ref).all()
    REFERENCE[target] = ref
    em.cfg.prefix_reuse = False  # the padded batches (no shared-prefix reuse)
    for side in ("right", "left"):
        em.tokenizer.padding_side = side
        got = em.norms(token_ids, progress=False)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=0, msg=lambda m, s=side: f"{s} padding: {m}")
    em.tokenizer.padding_side = "right"
    em.cfg.prefix_reuse = True
    # The shared-prefix path: the rows share only the first 24 tokens (one is cut there).
    torch.testing.assert_close(em.norms(token_ids, progress=False), ref, rtol=1e-4, atol=0)


@pytest.mark.slow
def test_lora_scores_depend_on_seed_base_scores_do_not(models, token_ids):
    rows = [token_ids[i] for i in (1, 3, 5)]  # the short ones
    lora42 = REFERENCE["lora_B"][[1, 3, 5]] if "lora_B" in REFERENCE else models("lora_B").norms(rows, progress=False)
    lora7 = models("lora_B", seed=7).norms(rows, progress=False)
    assert ((lora7 - lora42).abs() / lora42 > 1e-2).all(), (lora7, lora42)
    base42 = models("base").norms(rows, progress=False)
    base7 = models("base", seed=7).norms(rows, progress=False)
    assert torch.equal(base42, base7)


@pytest.mark.slow
def test_effort_scores_chunks_resume_and_key(models, examples, tmp_path, monkeypatch):
    em = models("lora_B")
    monkeypatch.setattr(em.cfg, "chunk_size", 2)
    monkeypatch.setattr(em.cfg, "cutoff_len", 32)  # short prompts: this test is about the chunks
    ex = [examples[0], None, examples[1], None, None]
    calls = []
    real_norms = em.norms

    def counting(ids, progress=True, desc="effort", bar=None):
        calls.append(len(ids))
        return real_norms(ids, progress=progress, desc=desc, bar=bar)

    monkeypatch.setattr(em, "norms", counting)
    chunk_dir = tmp_path / "effort.chunks"
    first = effort_scores(em, ex, chunk_dir, "key-a", progress=False)
    assert calls == [1, 1]  # the all-None third chunk needs no forward pass
    assert first.shape == (5,) and first[[1, 3, 4]].eq(0).all() and (first[[0, 2]] > 0).all()
    direct = real_norms(em.encode([examples[0], examples[1]]), progress=False)
    torch.testing.assert_close(first[[0, 2]], direct, rtol=1e-4, atol=0)
    files = sorted(p.name for p in chunk_dir.glob("chunk_*.pt"))
    assert files == ["chunk_00000000.pt", "chunk_00000002.pt", "chunk_00000004.pt"]
    assert read_json(chunk_dir / "key.json") == {"key": "key-a"}
    timed = chunk_timing(chunk_dir)  # every chunk timed, prompts counted (None rows are not prompts)
    assert (timed["chunks_timed"], timed["prompts_timed"]) == (3, 2) and timed["compute_seconds"] >= 0

    def boom(*a, **k):
        raise AssertionError("norms must not run: the chunks are cached")

    monkeypatch.setattr(em, "norms", boom)
    assert torch.equal(effort_scores(em, ex, chunk_dir, "key-a", progress=False), first)

    # A missing chunk is recomputed alone.
    (chunk_dir / "chunk_00000002.pt").unlink()
    calls.clear()
    monkeypatch.setattr(em, "norms", counting)
    torch.testing.assert_close(effort_scores(em, ex, chunk_dir, "key-a", progress=False), first, rtol=1e-5, atol=0)
    assert calls == [1]

    # Another key drops every chunk and recomputes.
    monkeypatch.setattr(em, "norms", lambda ids, progress=True, desc="effort", bar=None: torch.full((len(ids),), 7.0))
    other = effort_scores(em, ex, chunk_dir, "key-b", progress=False)
    assert other.tolist() == [7.0, 0.0, 7.0, 0.0, 0.0]
    assert read_json(chunk_dir / "key.json") == {"key": "key-b"}
    assert chunk_timing(chunk_dir)["chunks_timed"] == 3  # the old key's timings went with its chunks
    assert effort_scores(em, [], tmp_path / "empty", "k", progress=False).shape == (0,)
