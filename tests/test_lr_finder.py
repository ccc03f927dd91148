"""The learning-rate range test: its curve, its suggestions, and leaving the trainer untouched."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

import traincraft as tc
from traincraft.errors import TraincraftError
from traincraft.lr_finder import (
    LRFindResult,
    lr_find,
    smoothed,
    steepest,
    valley,
)


def regression(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    y = X @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return X, y


def net(seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))


def make_trainer(**kwargs):
    kwargs = {"loss": "mse", "lr": 3e-3, "weight_decay": 0.01, "max_epochs": 2, "batch_size": 32,
              "seed": 0, "device": "cpu", "progress": False,
              "schedule": {"name": "cosine", "warmup": "10%"}, **kwargs}
    return tc.Trainer(net(), **kwargs)


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------- untouched


def test_fit_after_lr_find_gives_bitwise_the_weights_of_fit_alone():
    data = regression()
    alone = make_trainer()
    alone.fit(data)
    tested = make_trainer()
    lr_find(tested, data, steps=30)
    tested.fit(data)
    assert_bitwise_equal(weights(alone), weights(tested))


def test_a_second_fit_after_lr_find_matches_too_optimizer_state_and_all():
    data = regression()
    alone = make_trainer(val_split=0.25, accumulate=2, clip_grad_norm=1.0)
    alone.fit(data)
    alone.fit(data)
    tested = make_trainer(val_split=0.25, accumulate=2, clip_grad_norm=1.0)
    tested.fit(data)  # the optimizer now has moments, the schedule a position
    lr_find(tested, data, steps=20)
    tested.fit(data)
    assert_bitwise_equal(weights(alone), weights(tested))
    for a, b in zip(alone.optimizer.state.values(), tested.optimizer.state.values()):
        assert_bitwise_equal(a, b)


def test_lr_find_restores_every_piece_it_touches():
    data = regression()
    trainer = make_trainer()
    trainer.fit(data)
    trainer.model[1].eval()  # a frozen batch norm: modes are per module
    for p in trainer.model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = weights(trainer)
    grads = [p.grad.clone() for p in trainer.model.parameters()]
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    schedule = trainer.schedule.state_dict()
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    lr_find(trainer, data, steps=15)
    assert_bitwise_equal(before, weights(trainer))
    assert all(torch.equal(p.grad, g) for p, g in zip(trainer.model.parameters(), grads))
    assert [g["lr"] for g in trainer.optimizer.param_groups] == lrs
    assert trainer.schedule.state_dict() == schedule
    assert trainer.model.training and not trainer.model[1].training
    after = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], after[0]) and expected[1:] == after[1:]


# --------------------------------------------------------------------------- the curve


def test_the_recorded_losses_are_those_of_a_hand_written_range_test():
    X, y = regression(n=128)
    torch.manual_seed(3)
    model = nn.Linear(6, 1)
    reference = nn.Linear(6, 1)
    reference.load_state_dict(model.state_dict())
    trainer = tc.Trainer(model, loss="mse", optimizer="sgd", lr=0.1, batch_size=32, shuffle=False,
                         seed=0, device="cpu", progress=False, decay_exclude=None)
    result = lr_find(trainer, (X, y), start_lr=1e-4, end_lr=10.0, steps=40)

    opt = torch.optim.SGD(reference.parameters(), lr=1e-4)
    lrs, losses, best, avg = [], [], math.inf, 0.0
    for i in range(40):
        lr = 1e-4 * (10.0 / 1e-4) ** (i / 39)
        start = (i % 4) * 32  # four batches per epoch, in order
        loss = nn.functional.mse_loss(reference(X[start : start + 32]), y[start : start + 32])
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        loss.backward()
        opt.step()
        lrs.append(lr)
        losses.append(loss.item())
        avg = 0.98 * avg + 0.02 * loss.item()
        current = avg / (1 - 0.98 ** (i + 1))
        best = min(best, current)
        if current > 4 * best:
            break
    assert result.stop_reason == "diverged" and len(result.lrs) == len(lrs) < 40
    assert result.lrs == pytest.approx(lrs, rel=1e-12)
    assert result.raw_losses == pytest.approx(losses, rel=1e-5)
    assert result.losses[-1] > 4 * min(result.losses[:-1])
    assert result.losses == pytest.approx(smoothed(losses, 0.98), rel=1e-5)
    lo, hi = 4, len(lrs) - 5  # the suggestions skip the first tenth of the steps and the last five
    assert result.suggestion == steepest(result.lrs[lo:hi], result.losses[lo:hi])
    assert result.valley == valley(result.lrs[lo:hi], result.losses[lo:hi])
    assert 1e-3 < result.valley < 1.0  # plain SGD on a linear regression: a sane rate


def test_smoothing_is_the_debiased_moving_average():
    values = [4.0, 2.0, 3.0, 1.0]
    ema = np.zeros(len(values))
    avg = 0.0
    for i, v in enumerate(values):
        avg = 0.9 * avg + 0.1 * v
        ema[i] = avg / (1 - 0.9 ** (i + 1))
    assert smoothed(values, 0.9) == pytest.approx(ema.tolist(), rel=1e-15)
    assert smoothed(values, 0.0) == values
    assert smoothed(values, 0.9)[0] == 4.0  # debiased: the first value as it is


def test_steepest_is_the_start_of_the_steepest_segment_in_log_lr():
    lrs = np.logspace(-5, 0, 11).tolist()
    losses = [5.0, 4.9, 4.7, 4.0, 2.0, 1.5, 1.3, 1.2, 1.25, 2.0, 6.0]
    slopes = np.diff(losses) / np.diff(np.log(lrs))
    assert steepest(lrs, losses) == lrs[int(np.argmin(slopes))] == lrs[3]
    assert steepest([1.0], [1.0]) is None


def test_valley_is_half_way_into_the_longest_descent():
    lrs = [10.0**-k for k in range(10, 0, -1)]
    # The longest decreasing run is 9, 8, ..., 2 (indices 0, 2..8); half-way in: index 3.
    losses = [9.0, 1.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 9.0]
    assert valley(lrs, losses) == lrs[3]
    assert valley(lrs[:1], losses[:1]) is None


def test_a_non_finite_loss_stops_the_test_without_recording_it():
    X, y = regression(n=64)
    torch.manual_seed(0)
    trainer = tc.Trainer(nn.Linear(6, 1), loss="mse", optimizer="sgd", lr=0.1, batch_size=64,
                         seed=0, device="cpu", progress=False)
    result = lr_find(trainer, (X, y), start_lr=1.0, end_lr=1e12, steps=50, diverge=1e30)
    assert result.stop_reason == "non_finite"
    assert all(math.isfinite(v) for v in result.raw_losses) and len(result.lrs) < 50


@pytest.mark.parametrize(
    "kwargs, message",
    [({"start_lr": 1.0, "end_lr": 0.1}, "0 < start_lr < end_lr"), ({"steps": 1}, "steps must be >= 2"),
     ({"smooth": 1.0}, "smooth must be in"), ({"diverge": 1.0}, "diverge must be > 1")],
)
def test_bad_arguments_are_one_clear_line(kwargs, message):
    with pytest.raises(TraincraftError, match=message):
        lr_find(make_trainer(), regression(), **kwargs)


def test_the_plot_marks_both_suggestions(tmp_path):
    result = LRFindResult(lrs=[1e-4, 1e-3, 1e-2, 1e-1], losses=[2.0, 1.5, 1.0, 3.0],
                          raw_losses=[2.0, 1.4, 1.1, 3.0], suggestion=1e-3, valley=1e-2)
    fig = result.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").read_bytes().startswith(b"\x89PNG")
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["loss", "smoothed loss", "steepest: 1.00e-03", "valley: 1.00e-02"]
    assert fig.axes[0].get_xscale() == "log"


@pytest.mark.parametrize("param_groups, layer_decay", [([{"params": "0.*", "lr_mult": 0.1}], None), (None, 0.5)])
def test_the_swept_lr_is_the_base_lr_whatever_group_comes_first(param_groups, layer_decay):
    X, y = regression(n=64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    finetune = {"layer_decay": layer_decay} if layer_decay else None
    trainer = tc.Trainer(model, loss="mse", optimizer="sgd", lr=0.1, batch_size=32, seed=0, device="cpu",
                         progress=False, param_groups=param_groups, finetune=finetune, decay_exclude=None)
    mults = [g["lr"] / 0.1 for g in trainer.optimizer.param_groups]
    assert min(mults) < 1.0 and mults[0] < 1.0  # the first group is not the base
    seen = []
    step = trainer.optimizer.step

    def spy(*args, **kwargs):
        seen.append([g["lr"] for g in trainer.optimizer.param_groups])
        return step(*args, **kwargs)

    trainer.optimizer.step = spy
    result = lr_find(trainer, (X, y), start_lr=1e-3, end_lr=1.0, steps=5)
    for base, lrs in zip(result.lrs, seen):
        assert lrs == pytest.approx([base * m for m in mults], rel=1e-12)
