"""Resumable surrogate training: a run stopped after any epoch and started again with the same
resume file ends with the weights, history and best epoch of a run never stopped — for every
registered surrogate (their random parts: negatives, BERT4Rec's masks, dropout, DCRec's edge
dropout)."""

from __future__ import annotations

import pytest
import torch
from _interrupt import Stop, stopping_after
from _surrogates import make_train

from dealrec.data.dataset import RecData
from dealrec.surrogate import SURROGATES, build_surrogate, surrogate_spec
from dealrec.surrogate.trainer import train_surrogate

pytestmark = pytest.mark.usefixtures("one_thread")
N_ITEMS = 15


def data() -> RecData:
    train = make_train(n_users=30, n_items=N_ITEMS, seed=3, longest=9)
    valid = [[(s[-1] + 1) % N_ITEMS] if s else [] for s in train]
    test = [[(s[-1] + 2) % N_ITEMS] if s else [] for s in train]
    return RecData("synthetic", None, train, valid, test, [f"t{i}" for i in range(N_ITEMS)])


def config(name: str):
    return surrogate_spec(name).config(epochs=5, eval_every=2, patience=0, batch_size=8, hidden_size=8,
                                       max_seq_length=10, ks=(5,), dropout=0.3, seed=7)


def train(name: str, d: RecData, stop_after: int | None = None, **kw):
    """(model, result) of a fresh training run; ``stop_after``: raise :class:`Stop` after that epoch."""
    cfg = config(name)
    model = build_surrogate(name, d.n_items, cfg, train=d.train)
    with stopping_after(stop_after):
        return model, train_surrogate(model, d, cfg, **kw)


@pytest.mark.parametrize("name", list(SURROGATES))
@pytest.mark.parametrize("stop_after", [1, 2, 4])
def test_resumed_training_equals_an_uninterrupted_one(name, stop_after, tmp_path):
    d = data()
    ref_model, ref = train(name, d)
    path = tmp_path / "surrogate.resume.pt"
    with pytest.raises(Stop):
        train(name, d, stop_after, resume=path, resume_key="k")
    assert path.is_file()
    model, res = train(name, d, resume=path, resume_key="k")
    for k, v in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), (name, stop_after, k)
    assert res.history == ref.history and res.best_epoch == ref.best_epoch and res.test == ref.test


def test_a_resume_file_of_other_settings_is_not_used(tmp_path, caplog):
    d = data()
    ref_model, _ = train("SASRec", d)
    path = tmp_path / "surrogate.resume.pt"
    with pytest.raises(Stop):
        train("SASRec", d, 2, resume=path, resume_key="settings A")
    with caplog.at_level("INFO", logger="dealrec"):
        model, res = train("SASRec", d, resume=path, resume_key="settings B")
    assert "belongs to other settings" in caplog.text
    assert [r["epoch"] for r in res.history] == list(range(5))
    for k, v in ref_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_an_unreadable_resume_file_costs_only_its_epochs(tmp_path, caplog):
    d = data()
    path = tmp_path / "surrogate.resume.pt"
    path.write_bytes(b"not a torch file")
    with caplog.at_level("WARNING", logger="dealrec"):
        _, res = train("SASRec", d, resume=path, resume_key="k")
    assert "unreadable resume file" in caplog.text and len(res.history) == 5
