"""The causal-LM training loss with the LM head run only where a label is set.

A transformers ``*ForCausalLM`` computes the logits of every position (tokens × vocabulary: 49,152
columns for SmolLM2) and then ignores the positions labelled ``-100``. With the BIGRec recipe's
response-only loss (``train_on_inputs`` False) that is most of them: a Games training prompt has
≈ 230 tokens, its response ≈ 20. :func:`labelled_head` makes the model run its decoder as usual and
its head on the labelled positions only, then calls the model's own ``loss_function`` with the
already shifted labels, so the reduction (mean, or sum / ``num_items_in_batch`` under gradient
accumulation) is the model's. The loss and its gradient are the same function (equal up to float
summation order: ``tests/test_lm_loss.py``); only the time and memory of the head change.

A model whose head is not a plain linear layer, that lacks ``get_decoder``/``loss_function``, or
whose loss on a real batch differs from its own forward (a logit soft-cap or scale, for example),
keeps its own forward (:func:`check_labelled_head` decides, before training).
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Any

import torch

from dealrec.llm.model import causal_lm

IGNORE = -100
LOSS_POSITIONS = ("labelled", "all")


def supports_labelled_head(model: Any) -> bool:
    lm = causal_lm(model)
    return (callable(getattr(lm, "get_decoder", None)) and callable(getattr(lm, "loss_function", None))
            and isinstance(lm.get_output_embeddings(), torch.nn.Linear))


def _labelled_forward(self: Any, input_ids: Any = None, attention_mask: Any = None, labels: Any = None,
                      **kwargs: Any) -> Any:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    if labels is None:
        return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    loss_kwargs = {k: kwargs.pop(k) for k in ("num_items_in_batch", "ignore_index") if k in kwargs}
    kwargs.pop("logits_to_keep", None)
    hidden = self.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
    shift = labels[:, 1:]
    keep = shift != loss_kwargs.get("ignore_index", IGNORE)
    logits = self.get_output_embeddings()(hidden[:, :-1][keep])[None]  # [1, labelled positions, vocab]
    loss = self.loss_function(logits=logits, labels=None, shift_labels=shift[keep][None],
                              vocab_size=self.config.vocab_size, **loss_kwargs)
    return CausalLMOutputWithPast(loss=loss, logits=logits)


@contextmanager
def labelled_head(model: Any, enabled: bool = True):
    """Within the block, ``model(..., labels=...)`` runs the LM head on the labelled positions only."""
    lm = causal_lm(model)
    if not enabled:
        yield
        return
    lm.forward = types.MethodType(_labelled_forward, lm)
    try:
        yield
    finally:
        del lm.forward  # the class's forward again


def check_labelled_head(model: Any, batch: dict[str, torch.Tensor], rtol: float = 1e-4) -> str | None:
    """Why the labelled-positions loss cannot be used for ``model`` (None: it can).

    Compares it with the model's own loss on ``batch`` (dropout off, no gradient)."""
    if not supports_labelled_head(model):
        return "its LM head is not a linear layer (or it lacks get_decoder/loss_function)"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = model(**batch).loss
            with labelled_head(model):
                got = model(**batch).loss
    finally:
        model.train(was_training)
    if not torch.isclose(got.float(), ref.float(), rtol=rtol, atol=0):
        return f"its loss on a training batch differs from its own forward ({got.item():.6g} vs {ref.item():.6g})"
    return None
