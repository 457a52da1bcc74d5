"""TIGER training stopped after any epoch and started again with the same resume file ends with the
weights and losses of a run never stopped (dropout and the batch order included)."""

from __future__ import annotations

import pytest
import torch
from _interrupt import Stop, stopping_after

from dealrec.tiger.model import ModelConfig, build_model
from dealrec.tiger.train import TrainConfig, train_model

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB, N_ITEMS = 12, 20


def examples(n: int, seed: int) -> list[tuple[list[int], int]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, N_ITEMS, (int(torch.randint(1, 5, (1,), generator=g)),), generator=g).tolist(),
             int(torch.randint(0, N_ITEMS, (1,), generator=g))) for _ in range(n)]


def train(stop_after: int | None = None, valid: bool = True, **kw):
    """(weights, result) of a fresh run; ``stop_after``: raise :class:`Stop` after that epoch."""
    item_tokens = torch.randint(2, VOCAB, (N_ITEMS, 3), generator=torch.Generator().manual_seed(1))
    cfg = ModelConfig(d_model=16, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=8, dropout=0.2,
                      max_history=4)
    model = build_model(VOCAB, cfg, seed=3)
    tcfg = TrainConfig(batch_size=8, max_epochs=7, patience=2)
    with stopping_after(stop_after):
        res = train_model(model, examples(40, 0), examples(10, 1) if valid else [], item_tokens, cfg.max_history,
                          tcfg, seed=5, progress=False, **kw)
    return model.state_dict(), res


@pytest.mark.parametrize("valid", [True, False])
@pytest.mark.parametrize("stop_after", [1, 3])
def test_resumed_training_equals_an_uninterrupted_one(stop_after, valid, tmp_path):
    ref, ref_res = train(valid=valid)
    path = tmp_path / "train_state.pt"
    with pytest.raises(Stop):
        train(stop_after, valid, resume=path, resume_key="k")
    assert path.is_file()
    state, res = train(valid=valid, resume=path, resume_key="k")
    for k, v in ref.items():
        assert torch.equal(state[k], v), (stop_after, k)
    assert (res.epochs, res.best_epoch, res.train_loss, res.valid_loss, res.steps) == (
        ref_res.epochs, ref_res.best_epoch, ref_res.train_loss, ref_res.valid_loss, ref_res.steps)


def test_a_state_of_other_settings_is_not_used(tmp_path, caplog):
    ref, _ = train()
    path = tmp_path / "train_state.pt"
    with pytest.raises(Stop):
        train(2, resume=path, resume_key="settings A")
    with caplog.at_level("INFO", logger="dealrec"):
        state, _ = train(resume=path, resume_key="settings B")
    assert "belongs to other settings" in caplog.text
    for k, v in ref.items():
        assert torch.equal(state[k], v), k
