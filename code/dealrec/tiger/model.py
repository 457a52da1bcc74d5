"""The seq2seq model of TIGER: a small T5 trained from scratch on semantic-ID tokens.

The encoder reads a user's history as the token tuples of its last ``max_history`` items, one
after the other; the decoder generates the next item's tuple (``depth`` tokens, no end token: every
ID has the same length). :func:`beam_search` runs ``transformers``' beam search constrained by
the prefix trie; :func:`item_log_likelihoods` scores every item exhaustively (the reference the
beam search is tested against: a beam as wide as the catalogue ranks the same).

The beam's score of an item is the sum over its tokens of the model's log-probability (log-softmax
over the whole vocabulary, before the trie's mask), which is what the exhaustive scoring sums too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dealrec.tiger.semantic_ids import EOS, PAD
from dealrec.tiger.trie import PrefixTrie

# HF beam search starts every beam but the first at this score (so that they do not repeat the
# first); a candidate below half of it came from such a filler beam, not from a real prefix.
_FILLER_SCORE = -5e8


@dataclass
class ModelConfig:
    """A tiny T5 (TIGER's is 4+4 layers, d_model 128: this default halves the layers and the
    feed-forward width so that decoding every Games test user takes minutes on a CPU)."""

    d_model: int = field(default=128, metadata={"help": "hidden size"})
    d_ff: int = field(default=512, metadata={"help": "feed-forward size"})
    num_layers: int = field(default=2, metadata={"help": "encoder layers"})
    num_decoder_layers: int = field(default=2, metadata={"help": "decoder layers"})
    num_heads: int = field(default=4, metadata={"help": "attention heads"})
    d_kv: int = field(default=32, metadata={"help": "size of each head"})
    dropout: float = field(default=0.1, metadata={"help": "dropout rate"})
    max_history: int = field(default=20, metadata={"help": "latest history items fed to the encoder"})

    def check(self) -> None:
        for name in ("d_model", "d_ff", "num_layers", "num_decoder_layers", "num_heads", "d_kv", "max_history"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")


def build_model(vocab_size: int, cfg: ModelConfig, seed: int = 0) -> Any:
    """A randomly initialised ``T5ForConditionalGeneration`` over the semantic-ID vocabulary."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg.check()
    config = T5Config(
        vocab_size=vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff, num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_decoder_layers, num_heads=cfg.num_heads, dropout_rate=cfg.dropout,
        feed_forward_proj="relu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
        pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, use_cache=True,
    )
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(config)



def history_inputs(histories: Sequence[Sequence[int]], item_tokens: torch.Tensor,
                   max_history: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, T]: each history's last ``max_history`` items' tokens in
    order, right-padded; an empty history is the single end token."""
    rows = []
    for h in histories:
        h = list(h)[-max_history:]
        rows.append(item_tokens[torch.tensor(h, dtype=torch.long)].reshape(-1) if h
                    else torch.tensor([EOS], dtype=torch.long))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


@torch.no_grad()
def item_log_likelihoods(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         item_tokens: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """[B, items]: log p(item's tokens | history), teacher-forced, for every item (exhaustive)."""
    model.eval()
    enc = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    out = torch.empty((input_ids.shape[0], item_tokens.shape[0]))
    for b in range(input_ids.shape[0]):
        for s in range(0, item_tokens.shape[0], chunk):
            labels = item_tokens[s: s + chunk]
            n = labels.shape[0]
            logits = model(encoder_outputs=(enc[b: b + 1].expand(n, -1, -1),),
                           attention_mask=attention_mask[b: b + 1].expand(n, -1), labels=labels).logits
            logp = torch.log_softmax(logits.float(), -1).gather(2, labels.unsqueeze(2)).squeeze(2)
            out[b, s: s + n] = logp.sum(1)
    return out


def _beam_cache(model: Any) -> dict[str, Any]:
    """``generate``'s cache argument: an encoder-decoder cache whose beam reordering leaves the
    cross-attention keys and values alone. Beam search only reorders beams within each history, and
    all beams of one history attend to the same encoder states, so that reordering changes nothing;
    skipping it saves copying them at every step (the larger part of decoding time otherwise)."""
    import inspect

    from transformers import DynamicCache, EncoderDecoderCache

    class _Cache(EncoderDecoderCache):
        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.self_attention_cache.reorder_cache(beam_idx)

    # the argument is ``cache`` in recent transformers, ``past_key_values`` before
    name = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    return {name: _Cache(DynamicCache(), DynamicCache())}


@torch.no_grad()
def beam_search(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, trie: PrefixTrie,
                num_beams: int) -> list[list[tuple[int, float]]]:
    """Per history, the items found by constrained beam search with their scores (sum of token
    log-probabilities), best first (ties: lower item id first); at most ``num_beams`` items, fewer
    when fewer valid IDs survive (e.g. a catalogue smaller than the beam)."""
    model.eval()
    out = model.generate(
        input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device), num_beams=num_beams,
        num_return_sequences=num_beams, max_new_tokens=trie.depth, do_sample=False, length_penalty=0.0,
        early_stopping=True, prefix_allowed_tokens_fn=trie.prefix_allowed_tokens_fn(), output_scores=True,
        return_dict_in_generate=True, **_beam_cache(model),
    )
    seqs = out.sequences[:, 1: 1 + trie.depth].reshape(input_ids.shape[0], num_beams, -1).tolist()
    scores = out.sequences_scores.float().reshape(input_ids.shape[0], num_beams).tolist()
    ranked = []
    for user_seqs, user_scores in zip(seqs, scores):
        found: dict[int, float] = {}
        for seq, score in zip(user_seqs, user_scores):
            item = trie.item(seq) if len(seq) == trie.depth else None
            if item is not None and score > _FILLER_SCORE and item not in found:
                found[item] = score
        ranked.append(sorted(found.items(), key=lambda t: (-t[1], t[0])))
    return ranked
