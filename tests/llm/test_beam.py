"""The prefill-once beam search (dealrec.llm.beam) against transformers' generate, token for token."""

from __future__ import annotations

import pytest
import torch

from dealrec.core.token_rows import pad_batch
from dealrec.llm.beam import beam_search, shared_prefix, unsupported_settings

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, EOS, PAD = 40, 29, 0  # 29: a token this random model writes often, made the EOS


@pytest.fixture(scope="module")
def tiny():
    """A random 2-layer LLaMA (vocab 40) whose EOS is frequent enough that beams end at many lengths."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)  # peaked distributions: beams that differ
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    return model


def _prompts(n: int, seed: int, common: int = 7) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    head = [1] + torch.randint(4, VOCAB, (common,), generator=g).tolist()
    return [head + torch.randint(4, VOCAB, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def _reference(model, seqs, num_beams, max_new_tokens, length_penalty=1.0) -> list[list[int]]:
    """transformers' generate on the left-padded batch; new tokens up to the first EOS (kept)."""
    from transformers import GenerationConfig

    ids, mask = pad_batch(seqs, PAD, "left")
    gc = GenerationConfig(num_beams=num_beams, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=PAD,
                          eos_token_id=EOS, bos_token_id=1, length_penalty=length_penalty)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
    res = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = row.index(EOS) + 1 if EOS in row else len(row)
        res.append(row[:cut])
    return res


@pytest.mark.parametrize("num_beams,max_new,lp", [(4, 12, 1.0), (2, 9, 1.0), (3, 10, 0.0), (4, 8, 2.0), (1, 10, 1.0)])
def test_fast_beam_search_equals_transformers(tiny, num_beams, max_new, lp):
    seqs = _prompts(12, seed=num_beams * 10 + max_new)
    ref = _reference(tiny, seqs, num_beams, max_new, lp)
    prefix = shared_prefix(tiny, seqs)
    assert prefix is not None and len(prefix.ids) == 8
    for pre in (None, prefix):
        got = beam_search(tiny, seqs, num_beams, max_new, [EOS], PAD, prefix=pre, length_penalty=lp)
        assert got == ref
    if lp <= 1.0:  # (a length penalty of 2 favours long answers: all run to max_new_tokens)
        assert min(len(r) for r in ref) < max_new  # some answers ended on EOS ...
    assert any(r[-1] != EOS for r in ref)  # ... and some ran to max_new_tokens


def test_batched_equals_one_prompt_at_a_time(tiny):
    seqs = _prompts(6, seed=5)
    prefix = shared_prefix(tiny, seqs)
    batched = beam_search(tiny, seqs, 3, 10, [EOS], PAD, prefix=prefix)
    assert batched == [beam_search(tiny, [s], 3, 10, [EOS], PAD, prefix=prefix)[0] for s in seqs]


def test_prefix_leaves_every_prompt_a_token_and_checks_it(tiny):
    seqs = _prompts(3, seed=1)
    same = [seqs[0], list(seqs[0])]
    pre = shared_prefix(tiny, same)
    assert len(pre.ids) == len(seqs[0]) - 1
    with pytest.raises(ValueError, match="shared prefix"):
        beam_search(tiny, [[1, 5, 6]], 2, 3, [EOS], PAD, prefix=pre)


def test_settings_that_need_logits_processors_are_named():
    from transformers import GenerationConfig

    assert unsupported_settings(GenerationConfig(num_beams=4)) == []
    assert unsupported_settings(GenerationConfig(repetition_penalty=1.1, no_repeat_ngram_size=3)) == [
        "repetition_penalty", "no_repeat_ngram_size"]


def test_cpu_precision_falls_back_to_fp32_without_native_bf16(monkeypatch):
    from dealrec.core.hardware import cpu_precision

    monkeypatch.setenv("DEALREC_NATIVE_BF16", "1")
    assert cpu_precision("bf16", "cpu", "--gen_precision") == "bf16"
    assert cpu_precision("auto", "cpu", "--gen_precision", auto="bf16") == "bf16"
    assert cpu_precision("auto", "cpu", "--gen_precision") == "fp32"
    monkeypatch.setenv("DEALREC_NATIVE_BF16", "0")
    with pytest.warns(UserWarning, match="--gen_precision bf16: this CPU .* no native bf16"):
        assert cpu_precision("bf16", "cpu", "--gen_precision") == "fp32"
    assert cpu_precision("auto", "cpu", "--ground_precision", auto="bf16") == "fp32"
    assert cpu_precision("bf16", "cuda:0", "--gen_precision") == "fp32"  # a GPU keeps its dtype
    with pytest.raises(ValueError, match="--train_precision must be one of"):
        cpu_precision("int4", "cpu", "--train_precision")


def test_bf16_fast_path_mostly_agrees(tiny, monkeypatch):
    """bf16 is not exact, but on a model this small most answers stay the same."""
    from dealrec.llm.generate import bf16_copy

    seqs = _prompts(12, seed=3)
    ref = beam_search(tiny, seqs, 2, 6, [EOS], PAD)
    got = beam_search(bf16_copy(tiny), seqs, 2, 6, [EOS], PAD)
    assert sum(a == b for a, b in zip(ref, got)) >= 6
