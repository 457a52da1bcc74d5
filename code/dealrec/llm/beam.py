"""Beam search for a CPU: each prompt prefilled once, the shared prompt prefix computed once.

transformers' ``generate`` copies every prompt ``num_beams`` times *before* the first forward
pass, so the prompt tokens (≈ 230 per Games test prompt, of which the first ≈ 77 are the same
for every prompt) go through the model ``num_beams`` times. Here:

1. the longest common token prefix of the prompts runs once (batch 1) and its keys/values
   are shared by every batch;
2. each batch runs only its prompts' suffixes, *once* per prompt (not per beam), laid out as
   ``[prefix][left padding][suffix]`` with position ids counted over the real tokens, so every
   real token sees exactly the positions and context it has in the padded reference;
3. only then is the cache copied to the beams, and the beam loop is the same algorithm as
   transformers' vectorised ``_beam_search`` (``length_penalty``, ``early_stopping=False``
   heuristic, ``2 × num_beams`` candidates per step, EOS and max-length stopping), which
   :func:`dealrec.llm.generate.generate` keeps as the reference path.

The answers equal the reference path's up to float summation order (different matrix shapes),
which can flip a near-tie between two beams; ``bench/bench_llm.py`` counts the equal answers.
``precision="bf16"`` runs the whole model in bf16 (logits and beam scores stay fp32): faster on
a CPU with native bf16, not exact; the same bench reports its agreement.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dealrec.core.token_rows import common_prefix_len, pad_batch
from dealrec.llm.kv_buffer import buffer_cache
from dealrec.llm.model import cache_kwarg, output_cache

NEG = -1.0e9  # transformers' "minus infinity" for beam scores

# Fields of a generation config that add logits processors; the fast path implements none of
# them, so a model whose generation_config.json sets one is answered by the reference path.
PROCESSOR_FIELDS = {
    "repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "min_length": (None, 0),
    "min_new_tokens": (None, 0), "bad_words_ids": (None,), "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,), "suppress_tokens": (None,), "begin_suppress_tokens": (None,),
    "encoder_repetition_penalty": (None, 1.0), "exponential_decay_length_penalty": (None,),
    "sequence_bias": (None,), "num_beam_groups": (None, 1), "diversity_penalty": (None, 0.0),
    "constraints": (None,), "force_words_ids": (None,), "early_stopping": (None, False),
    "renormalize_logits": (None, False), "remove_invalid_values": (None, False), "stop_strings": (None,),
    "max_time": (None,),
}


def unsupported_settings(gen_config: Any) -> list[str]:
    """Names of the settings of ``gen_config`` that the fast path does not implement."""
    return [k for k, ok in PROCESSOR_FIELDS.items() if getattr(gen_config, k, None) not in ok]


@dataclass
class SharedPrefix:
    """KV cache (batch 1, detached) of the first ``len(ids)`` tokens common to all prompts."""

    ids: list[int]
    cache: Any


@torch.no_grad()
def shared_prefix(model: Any, seqs: Sequence[Sequence[int]]) -> SharedPrefix | None:
    """Run the common prefix of ``seqs`` once; every prompt keeps ≥ 1 token of its own."""
    c = min(common_prefix_len([list(s) for s in seqs]), min(len(s) for s in seqs) - 1)
    if c < 1:
        return None
    device = next(model.parameters()).device
    ids = torch.tensor([list(seqs[0][:c])], device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=torch.arange(c, device=device)[None],
                use_cache=True, logits_to_keep=1)
    return SharedPrefix(list(seqs[0][:c]), output_cache(out))


def _prefill(model: Any, seqs: Sequence[Sequence[int]], pad_id: int, prefix: SharedPrefix | None
             ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
    """Last-token logits [B, V] (fp32), the cache, the 2-D attention mask and the next positions."""
    device = next(model.parameters()).device
    c = len(prefix.ids) if prefix is not None else 0
    if prefix is not None and any(list(s[:c]) != prefix.ids for s in seqs):
        raise ValueError("a prompt does not start with the shared prefix")
    ids, smask = pad_batch([list(s[c:]) for s in seqs], pad_id, "left")
    b = ids.shape[0]
    pos = c + (smask.cumsum(1) - 1).clamp(min=0)
    mask = torch.cat([torch.ones((b, c), dtype=torch.long), smask], 1)
    kw: dict[str, Any] = {}
    if prefix is not None:
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(b)
        kw[cache_kwarg(model)] = cache
    ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **kw)
    return out.logits[:, -1].float(), output_cache(out), mask, pos[:, -1] + 1


def _greedy(model: Any, logits: torch.Tensor, cache: Any, mask: torch.Tensor, next_pos: torch.Tensor,
            max_new_tokens: int, eos: torch.Tensor) -> list[list[int]]:
    """transformers' greedy search: the arg-max token until EOS (kept) or ``max_new_tokens``.

    A prompt that reached EOS leaves the batch (its rows of the cache, mask and positions are
    dropped), where transformers keeps computing it to the end.
    """
    ckw = cache_kwarg(model)
    out: list[list[int]] = [[] for _ in range(logits.shape[0])]
    rows = list(range(logits.shape[0]))  # the prompt of each live row
    for t in range(max_new_tokens):
        token = logits.argmax(-1)
        for j, i in enumerate(rows):
            out[i].append(int(token[j]))
        done = torch.isin(token, eos)
        if t + 1 == max_new_tokens or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().flatten()
            cache.reorder_cache(keep)
            mask, next_pos, token = mask[keep], next_pos[keep], token[keep]
            rows = [rows[j] for j in keep.tolist()]
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=mask.device)], 1)
        o = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos[:, None], use_cache=True,
                  logits_to_keep=1, **{ckw: cache})
        logits, cache = o.logits[:, -1].float(), output_cache(o)
        next_pos = next_pos + 1
    return out


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[b, idx[b, j], ...]`` for a [B, K, ...] tensor and [B, J] indices."""
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


@dataclass
class _Beams:
    """The beams of a batch of B prompts, K per prompt; token rows are [B, K, max_new_tokens]."""

    running: torch.Tensor  # tokens of the live beams
    running_scores: torch.Tensor  # [B, K] their summed log-probabilities
    finished: torch.Tensor  # tokens of the best finished hypotheses, best first
    finished_scores: torch.Tensor  # [B, K] their length-normalised scores
    is_finished: torch.Tensor  # [B, K] whether a slot of ``finished`` holds a hypothesis
    lengths: torch.Tensor  # [B, K] tokens in each finished hypothesis
    improvable: torch.Tensor  # [B, 1] whether a live beam can still beat the worst finished one

    @classmethod
    def start(cls, b: int, k: int, max_new_tokens: int, pad_id: int, device: torch.device) -> _Beams:
        """No finished hypothesis; only beam 0 is live at the first step (the others score ``NEG``)."""
        running = torch.full((b, k, max_new_tokens), pad_id, dtype=torch.long, device=device)
        running_scores = torch.zeros((b, k), device=device)
        running_scores[:, 1:] = NEG
        return cls(
            running=running,
            running_scores=running_scores,
            finished=running.clone(),
            finished_scores=torch.full((b, k), NEG, device=device),
            is_finished=torch.zeros((b, k), dtype=torch.bool, device=device),
            lengths=torch.zeros((b, k), dtype=torch.long, device=device),
            improvable=torch.ones((b, 1), dtype=torch.bool, device=device),
        )


def _extend(beams: _Beams, log_probs: torch.Tensor, t: int, keep: int, eos: torch.Tensor, max_new_tokens: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step ``t``: the ``keep`` best one-token extensions of the beams ([B, K, V] ``log_probs``); the
    best K that did not stop (EOS or the last step) become the running beams.

    Returns the candidates' scores, tokens rows and stop flags, and each running beam's source beam."""
    b, k, v = log_probs.shape
    scores = (log_probs + beams.running_scores[:, :, None]).reshape(b, k * v)
    top_scores, top_idx = torch.topk(scores, keep)
    src_beam, token = top_idx // v, top_idx % v
    cand = _gather(beams.running, src_beam)
    cand[:, :, t] = token
    hits = torch.isin(token, eos) | (t + 1 >= max_new_tokens)

    live_scores = top_scores + hits.float() * NEG
    nxt = torch.topk(live_scores, k)[1]
    beams.running = _gather(cand, nxt)
    beams.running_scores = _gather(live_scores, nxt)
    return top_scores, cand, hits, _gather(src_beam, nxt)


def _collect_finished(beams: _Beams, top_scores: torch.Tensor, cand: torch.Tensor, hits: torch.Tensor, t: int,
                      top_k_mask: torch.Tensor, length_penalty: float) -> None:
    """Step ``t``: the stopped candidates among the top K join the finished hypotheses
    (length-normalised, the best K kept), then transformers' early-stop heuristic
    (``early_stopping=False``) marks the prompts whose best live beam can no longer win."""
    k = beams.finished_scores.shape[1]
    just_done = hits & top_k_mask[None, :]
    fin = top_scores / ((t + 1) ** length_penalty)
    fin = fin + (~beams.improvable).float() * NEG + (~just_done).float() * NEG
    m_seq = torch.cat([beams.finished, cand], 1)
    m_scores = torch.cat([beams.finished_scores, fin], 1)
    m_done = torch.cat([beams.is_finished, just_done], 1)
    m_len = torch.cat([beams.lengths, torch.full_like(fin, t + 1, dtype=torch.long)], 1)
    best = torch.topk(m_scores, k)[1]
    beams.finished, beams.finished_scores = _gather(m_seq, best), _gather(m_scores, best)
    beams.is_finished, beams.lengths = _gather(m_done, best), _gather(m_len, best)

    best_possible = beams.running_scores[:, :1] / ((t + 1) ** length_penalty)
    worst_done = torch.where(beams.is_finished, beams.finished_scores.min(1, keepdim=True)[0], NEG)
    beams.improvable = beams.improvable & (best_possible > worst_done).any(-1, keepdim=True)


@torch.no_grad()
def beam_search(
    model: Any,
    seqs: Sequence[Sequence[int]],
    num_beams: int,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    prefix: SharedPrefix | None = None,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """The best beam's new tokens (EOS included when reached) for each prompt of ``seqs``.

    Same algorithm and stopping rule as transformers' beam search with
    ``early_stopping=False`` (its default) and no logits processors.
    """
    if num_beams < 1 or max_new_tokens < 1:
        raise ValueError("num_beams and max_new_tokens must be positive")
    device = next(model.parameters()).device
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    logits, cache, mask, next_pos = _prefill(model, seqs, pad_id, prefix)
    buffer_cache(cache, max_new_tokens)  # decoding writes into the cache in place (:mod:`.kv_buffer`)
    if num_beams == 1:  # transformers then searches greedily, which is not a one-beam beam search
        return _greedy(model, logits, cache, mask, next_pos, max_new_tokens, eos)
    b, k, v = len(seqs), num_beams, logits.shape[-1]
    keep = max(2, 1 + len(eos)) * k  # candidates per step, as transformers
    top_k_mask = torch.arange(keep, device=device) < k
    beams = _Beams.start(b, k, max_new_tokens, pad_id, device)
    ckw = cache_kwarg(model)
    expanded = False  # whether cache, mask and positions have one row per beam (else one per prompt)

    for t in range(max_new_tokens):
        log_probs = torch.log_softmax(logits, dim=-1)
        if not expanded:  # every beam holds the same prompt: broadcast the one row per prompt
            log_probs = log_probs[:, None, :].expand(b, k, v)
        else:
            log_probs = log_probs.view(b, k, v)
        top_scores, cand, hits, beam_src = _extend(beams, log_probs, t, keep, eos, max_new_tokens)
        _collect_finished(beams, top_scores, cand, hits, t, top_k_mask, length_penalty)
        if not bool(beams.improvable.any()) or bool(hits.all()):
            break

        # next step: one token per live beam, on the cache of its source beam
        flat_src = (beam_src + torch.arange(b, device=device)[:, None] * k).flatten()
        if not expanded:
            cache.batch_repeat_interleave(k)
            mask, next_pos = mask.repeat_interleave(k, 0), next_pos.repeat_interleave(k, 0)
            expanded = True
        cache.reorder_cache(flat_src)
        mask = torch.cat([mask, torch.ones((b * k, 1), dtype=mask.dtype, device=device)], 1)
        out = model(input_ids=beams.running[:, :, t].reshape(b * k, 1), attention_mask=mask,
                    position_ids=next_pos[:, None], use_cache=True, logits_to_keep=1, **{ckw: cache})
        logits, cache = out.logits[:, -1].float(), output_cache(out)
        next_pos = next_pos + 1

    best_len = beams.lengths[:, 0].tolist()
    return [beams.finished[i, 0, : best_len[i]].tolist() for i in range(b)]
