"""Reproducibility: the deterministic-kernel context restores the caller's setting; surrogate and TIGER
training run inside it; a surrogate trained twice on two threads on a slice of real Games ends with
identical weights and gives identical influence scores."""

from __future__ import annotations

import pytest
import torch
from _surrogates import MAX_LEN, N_ITEMS, make_train

from dealrec.core.seeds import deterministic_algorithms
from dealrec.data.dataset import RecData
from dealrec.scores.influence import InfluenceConfig, influence_scores
from dealrec.surrogate import build_surrogate, surrogate_spec
from dealrec.surrogate.samples import build_samples
from dealrec.surrogate.trainer import train_surrogate
from dealrec.tiger.model import ModelConfig, build_model
from dealrec.tiger.train import TrainConfig, train_model


def _mode() -> tuple[bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()


@pytest.mark.parametrize("before", [(False, False), (True, False), (True, True)])
def test_the_context_turns_deterministic_kernels_on_and_restores_the_callers_setting(before):
    saved = _mode()
    try:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        with deterministic_algorithms():
            assert _mode() == (True, True)
        assert _mode() == before
        with pytest.raises(KeyError), deterministic_algorithms():
            raise KeyError("a failing block")
        assert _mode() == before
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


class _ModeSeen:
    """A forward hook that records whether deterministic kernels were on at each call."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seen: list[bool] = []
        module.register_forward_hook(lambda *_: self.seen.append(torch.are_deterministic_algorithms_enabled()))


@pytest.mark.usefixtures("one_thread")
def test_surrogate_training_runs_with_deterministic_kernels():
    assert not torch.are_deterministic_algorithms_enabled()
    train = make_train(n_users=20, n_items=N_ITEMS, seed=1)
    data = RecData("synthetic", None, train, [[1] for _ in train], [[2] for _ in train],
                   [f"t{i}" for i in range(N_ITEMS)])
    cfg = surrogate_spec("SASRec").config(epochs=2, eval_every=1, batch_size=8, hidden_size=8,
                                          max_seq_length=MAX_LEN, ks=(5,))
    model = build_surrogate("SASRec", N_ITEMS, cfg)
    hook = _ModeSeen(model)
    train_surrogate(model, data, cfg)
    assert hook.seen and all(hook.seen)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.usefixtures("one_thread")
def test_tiger_training_runs_with_deterministic_kernels():
    g = torch.Generator().manual_seed(0)
    examples = [(torch.randint(0, 10, (3,), generator=g).tolist(), int(torch.randint(0, 10, (1,), generator=g)))
                for _ in range(16)]
    cfg = ModelConfig(d_model=16, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=8, max_history=4)
    model = build_model(12, cfg, seed=0)
    hook = _ModeSeen(model)
    item_tokens = torch.randint(2, 12, (10, 3), generator=g)
    train_model(model, examples, examples[:4], item_tokens, cfg.max_history, TrainConfig(batch_size=8, max_epochs=2),
                progress=False)
    assert hook.seen and all(hook.seen)
    assert not torch.are_deterministic_algorithms_enabled()


@pytest.mark.slow
def test_a_surrogate_trained_twice_on_two_threads_has_identical_weights_and_scores(games):
    """Two threads accumulate the backward of indexing in a timing-dependent order unless the
    deterministic kernels are on; on this slice 3 epochs with the default kernels gave weights
    that differ by up to 8e-7 between repeats (bench/bench_determinism.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = surrogate_spec("SASRec").config(epochs=3, eval_every=0)
        users = list(range(600))
        samples = build_samples([games.train[u] for u in users], games.n_items, cfg.max_seq_length)
        states, scores = [], []
        for _ in range(2):
            model = build_surrogate("SASRec", games.n_items, cfg)
            train_surrogate(model, games, cfg, train_users=users)
            states.append(model.state_dict())
            scores.append(influence_scores(model, samples, InfluenceConfig(recursion_depth=50)).scores)
    finally:
        torch.set_num_threads(n)
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k
    assert torch.equal(scores[0], scores[1])
