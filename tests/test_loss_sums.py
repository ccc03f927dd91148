"""Losses that are not a per-sample mean, carried as sums (traincraft/loss_sums.py).

In one process: an accumulation window equals one batch of its samples, and ``evaluate`` and the
epoch figures are the loss of the whole data as one batch, whatever the batch size (torch on the
whole data is the oracle). Without a process group: the stepper's division of a ratio over
processes, and the set-loss surrogate whose gradients over processes add up to the global batch's.
The two-process runs are in tests/test_distributed.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import traincraft as tc
from traincraft import losses
from traincraft.loss_sums import EpochLossSums, Ratio, SummedLoss, surrogate
from traincraft.step import Stepper

LR = 0.5


def data(targets: str = "plain") -> tuple[torch.Tensor, torch.Tensor]:
    """40 samples of 3 classes; "ignored": 7 of the first 10 targets are -100, so batches differ
    in how many targets count."""
    g = torch.Generator().manual_seed(7)
    X = torch.randn(40, 4, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    if targets == "ignored":
        y[[0, 1, 2, 4, 5, 7, 9]] = -100
    return X, y


def model() -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def one_step(spec, batch_size: int, accumulate: int, targets: str) -> tuple[dict, dict]:
    trainer = tc.Trainer(model(), loss=spec, optimizer="sgd", lr=LR, batch_size=batch_size,
                         step={"accumulate": accumulate}, max_epochs=1, seed=0, data={"shuffle": False},
                         progress=False)
    history = trainer.fit(data(targets))
    return trainer.model.state_dict(), history.epochs[0]


def torch_step(spec, targets: str) -> tuple[dict, float]:
    """The oracle: torch's loss on the 40 samples as one batch, one SGD step."""
    X, y = data(targets)
    net, loss_fn = model(), losses.build(spec)
    loss = loss_fn(net(X), y)
    loss.backward()
    with torch.no_grad():
        for param in net.parameters():
            param -= LR * param.grad
    return net.state_dict(), float(loss.detach())


RATIOS = {
    "class_weights": ({"name": "cross_entropy", "class_weight": [1.0, 5.0, 0.2]}, "plain"),
    "ignore_index": ({"name": "cross_entropy", "ignore_index": -100}, "ignored"),
    "weights_and_ignore": ({"name": "cross_entropy", "weight": [2.0, 1.0, 0.5], "ignore_index": -100,
                            "label_smoothing": 0.1}, "ignored"),
    "nll": ({"name": "nll", "weight": [2.0, 1.0, 0.5]}, "plain"),
    "focal": ({"name": "focal", "ignore_index": -100, "gamma": 2.0}, "ignored"),
}


@pytest.mark.parametrize("case", [case for case in RATIOS if case != "nll"])  # nll: log-probabilities
@pytest.mark.parametrize("batch_size, accumulate", [(20, 2), (10, 4), (7, 6)])
def test_an_accumulation_window_of_a_ratio_loss_is_one_batch_of_its_samples(case, batch_size, accumulate) -> None:
    spec, targets = RATIOS[case]
    weights, row = one_step(spec, batch_size, accumulate, targets)
    expected, loss = torch_step(spec, targets)
    for key in expected:
        torch.testing.assert_close(weights[key], expected[key], rtol=0, atol=1e-6)
    assert row["train_loss"] == pytest.approx(loss, rel=1e-6)  # the window's weights: the 40 as one batch


@pytest.mark.parametrize("case", list(RATIOS))
def test_a_ratio_loss_ignores_the_batch_size_in_figures_and_evaluate(case) -> None:
    spec, targets = RATIOS[case]
    X, y = data(targets)
    net = model()
    if case == "nll":
        net = nn.Sequential(net, nn.LogSoftmax(dim=1))
    with torch.no_grad():
        expected = float(losses.build(spec)(net(X), y))
    for batch_size in (1, 7, 40):
        trainer = tc.Trainer(net, loss=spec, batch_size=batch_size, progress=False)
        assert trainer.evaluate((X, y))["loss"] == pytest.approx(expected, rel=1e-6), batch_size


SET_LOSSES = {
    "dice": "dice",
    "tversky": {"name": "tversky", "alpha": 0.3, "beta": 0.7},
    "terms": [{"name": "cross_entropy", "class_weight": [1.0, 5.0, 0.2]}, {"name": "dice", "weight": 0.5}],
}


@pytest.mark.parametrize("case", list(SET_LOSSES))
def test_a_set_loss_is_evaluated_over_the_whole_data_as_one_batch(case) -> None:
    spec = SET_LOSSES[case]
    X, y = data()
    net = model()
    with torch.no_grad():
        loss_fn = losses.build(spec)
        expected = float(loss_fn(net(X), y))
        terms = {k: float(v) for k, v in getattr(loss_fn, "last_terms", {}).items()}
    for batch_size in (1, 7, 40):
        figures = tc.Trainer(net, loss=spec, batch_size=batch_size, progress=False).evaluate((X, y))
        assert figures["loss"] == pytest.approx(expected, rel=1e-6), batch_size
        for name, value in terms.items():  # each term over the whole data too
            assert figures[f"loss/{name}"] == pytest.approx(value, rel=1e-6)


def test_a_set_loss_under_accumulation_averages_its_micro_batches_by_samples() -> None:
    # A dice is the dice of the batch it is computed over: a window of 10 + 10 + 10 + 10 is the
    # mean of four dice values (documented), and its epoch figure is the dice of all 40.
    X, y = data()
    weights, row = one_step("dice", 10, 4, "plain")
    net, loss_fn = model(), losses.build("dice")
    sum(loss_fn(net(Xc), yc) / 4 for Xc, yc in zip(X.chunk(4), y.chunk(4))).backward()
    with torch.no_grad():
        for param in net.parameters():
            param -= LR * param.grad
    for key, value in net.state_dict().items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=1e-6)
    with torch.no_grad():
        assert row["train_loss"] == pytest.approx(float(loss_fn(model()(X), y)), rel=1e-6)


def test_a_plain_loss_stays_a_per_sample_mean() -> None:
    for spec in ("cross_entropy", "mse", "focal", {"name": "dice", "per_sample": True},
                 [{"name": "cross_entropy"}, {"name": "focal"}]):
        assert losses.summing(losses.build(spec)) is None, spec
    # A module's own ignore_index other than torch's default, or class weights, make it a ratio.
    assert losses.summing(nn.CrossEntropyLoss(ignore_index=0)) is not None
    assert losses.summing(nn.NLLLoss(weight=torch.ones(3))) is not None


def test_class_probabilities_stay_a_per_element_mean() -> None:
    sums_of = losses.summing(losses.build({"name": "cross_entropy", "class_weight": [1.0, 2.0]}))
    pred, probs = torch.randn(5, 2), torch.softmax(torch.randn(5, 2), dim=1)
    value = sums_of(pred, probs)
    assert not isinstance(value, SummedLoss)
    torch.testing.assert_close(value, F.cross_entropy(pred, probs, weight=torch.tensor([1.0, 2.0])))


def test_a_batch_in_which_no_target_counts_adds_nothing_and_gives_no_nan() -> None:
    # torch's mean of such a batch is 0/0; as sums it adds (0, 0), and a window of them alone
    # steps with a zero gradient.
    sums_of = losses.summing(losses.build({"name": "cross_entropy", "ignore_index": -100}))
    pred = torch.randn(3, 2, requires_grad=True)
    summed = sums_of(pred, torch.full((3,), -100))
    assert summed.sums.tolist() == [0.0, 0.0] and float(summed.value.detach()) == 0.0
    param = nn.Parameter(torch.ones(2))
    stepper = Stepper(torch.optim.SGD([param], lr=1.0), [param], device=torch.device("cpu"), accumulate=2)
    for _ in range(2):
        stepper.backward_sums(sums_of(param.expand(3, 2), torch.full((3,), -100)), None, 3)
    stepper.prepare()
    assert param.grad.tolist() == [0.0, 0.0]


def test_a_compute_loss_of_ones_own_may_return_a_ratio() -> None:
    class TokenMean(tc.Trainer):
        def compute_loss(self, inputs, target):
            pred = self.forward(inputs)
            counted = target != -100
            numerator = F.cross_entropy(pred, target, reduction="sum")
            return Ratio(numerator, counted.sum()), pred, target

    X, y = data("ignored")
    net = model()
    with torch.no_grad():
        expected = float(F.cross_entropy(net(X), y))
    for batch_size in (3, 40):
        assert TokenMean(net, loss="mse", batch_size=batch_size, progress=False).evaluate((X, y))["loss"] == (
            pytest.approx(expected, rel=1e-6))
    trainer = TokenMean(model(), loss="mse", optimizer="sgd", lr=LR, batch_size=10, step={"accumulate": 4},
                        max_epochs=1, data={"shuffle": False}, progress=False, seed=0)
    trainer.fit((X, y))
    expected_weights, _ = torch_step({"name": "cross_entropy", "ignore_index": -100}, "ignored")
    for key, value in expected_weights.items():
        torch.testing.assert_close(trainer.model.state_dict()[key], value, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- several processes, simulated


def test_a_ratio_window_is_divided_by_its_denominators_over_all_processes() -> None:
    # This process holds numerator gradient 3 and denominator 2; the other process's
    # denominator is 4: DDP averages over 2, so the part left to divide by is (2 + 4) / 2.
    param = nn.Parameter(torch.zeros(1))
    stepper = Stepper(torch.optim.SGD([param], lr=1.0), [param], device=torch.device("cpu"))

    def other_process_adds_4(tensors):
        for t in tensors:
            t.add_(4.0)

    stepper.distribute(None, 2, all_true=lambda flag: flag, reduce_sum=other_process_adds_4)
    stepper.backward_sums(Ratio((3 * param).sum(), torch.tensor(2.0)), None, samples=5)
    stepper.prepare()
    assert param.grad.item() == pytest.approx(3 / 3)
    assert stepper.window_denominator is None or stepper.micro_batches == 1


@pytest.mark.parametrize("spec", ["dice", {"name": "tversky", "alpha": 0.2, "beta": 0.8},
                                  [{"name": "cross_entropy", "class_weight": [1.0, 3.0, 0.5]}, "dice"]])
def test_the_set_loss_surrogates_of_the_processes_add_up_to_the_global_batch_gradient(spec) -> None:
    X, y = data()
    loss_fn, sums_of = losses.build(spec), losses.summing(losses.build(spec))
    net = model()
    loss_fn(net(X), y).backward()
    expected = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    halves = [(X[:13], y[:13]), (X[13:], y[13:])]  # uneven shards
    parts = [sums_of(net(Xh), yh) for Xh, yh in halves]
    for rank, part in enumerate(parts):
        other = parts[1 - rank].sums.detach()

        def add_other(tensors, other=other):
            tensors[0].add_(other)

        piece, value = surrogate(part, add_other)
        piece.backward(retain_graph=True)
        assert float(value) == pytest.approx(float(loss_fn(net(X), y)), rel=1e-6)
    for param, grad in zip(net.parameters(), expected):
        torch.testing.assert_close(param.grad, grad, rtol=1e-5, atol=1e-7)


def test_epoch_sums_resume_and_sum_over_processes() -> None:
    sums_of = losses.summing(losses.build({"name": "cross_entropy", "ignore_index": -100}))
    X, y = data("ignored")
    pred = model()(X).detach()
    first = EpochLossSums(torch.device("cpu"))
    first.add(sums_of(pred[:10], y[:10]))
    again = EpochLossSums(torch.device("cpu"), source=first.source)
    again.load_state_dict(first.state_dict())
    again.add(sums_of(pred[10:], y[10:]))
    expected = float(F.cross_entropy(pred, y))
    assert again.figures("val_") == {"val_loss": pytest.approx(expected, rel=1e-6)}
    again.sync(lambda tensors: [t.mul_(2) for t in tensors])  # two processes with the same data
    assert again.figures("")["loss"] == pytest.approx(expected, rel=1e-6)
    assert EpochLossSums(torch.device("cpu")).figures("") == {}
