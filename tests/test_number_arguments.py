"""Arguments that take a number get one, or one line naming them: an optimizer's and a loss's
keyword arguments (checked against the class's defaults), a schedule's (its own checks)."""

import pytest
import torch

from traincraft import losses, optim, schedules
from traincraft.errors import TraincraftError


def model():
    return torch.nn.Linear(2, 1)


@pytest.mark.parametrize("spec, message", [
    ({"name": "adamw", "eps": "abc"}, "optimizer 'adamw': eps must be a number, got 'abc'"),
    ({"name": "adam", "eps": "1e-8"}, "optimizer 'adam': eps must be a number, got '1e-8'; a number in quotes is "
                                      "text: write 1e-8 without quotes"),
    ({"name": "adam", "betas": [0.9, "abc"]}, "optimizer 'adam': betas must be a list of 2 numbers, got [0.9, 'abc']"),
    ({"name": "adam", "betas": 0.9}, "optimizer 'adam': betas must be a list of 2 numbers, got 0.9"),
    ({"name": "sgd", "momentum": True}, "optimizer 'sgd': momentum must be a number, got True"),
    ({"name": "sgd", "momentum": None}, "optimizer 'sgd': momentum must be a number, got None"),
])
def test_optimizer_arguments_that_are_no_numbers(spec, message):
    with pytest.raises(TraincraftError) as caught:
        optim.build(spec, model())
    assert str(caught.value) == message


def test_optimizer_numbers_in_every_form_are_taken():
    opt = optim.build({"name": "adam", "eps": 1e-8, "betas": [0.8, 0.99]}, model(), lr=0.5)
    assert opt.defaults["eps"] == 1e-8 and tuple(opt.defaults["betas"]) == (0.8, 0.99)
    opt = optim.build({"name": "sgd", "momentum": torch.tensor(0.9)}, model())  # a tensor is a number
    assert float(opt.defaults["momentum"]) == pytest.approx(0.9)


@pytest.mark.parametrize("spec, message", [
    ({"name": "focal", "gamma": "abc"}, "loss 'focal': gamma must be a number, got 'abc'"),
    ({"name": "huber", "delta": "x"}, "loss 'huber': delta must be a number, got 'x'"),
    ({"name": "cross_entropy", "label_smoothing": "0.1"},
     "loss 'cross_entropy': label_smoothing must be a number, got '0.1'; a number in quotes is text"),
])
def test_loss_arguments_that_are_no_numbers(spec, message):
    with pytest.raises(TraincraftError) as caught:
        losses.build(spec)
    assert str(caught.value).startswith(message)


def test_loss_numbers_are_taken():
    assert losses.build({"name": "focal", "gamma": 2}).gamma == 2.0
    assert losses.build({"name": "huber", "delta": 0.5}).delta == 0.5


def test_schedule_arguments_that_are_no_numbers():
    optimizer = torch.optim.SGD(model().parameters(), lr=0.1)
    with pytest.raises(TraincraftError, match="schedule 'cosine' eta_min must be a number, got '1e-6' .*"
                                              "a number in quotes is text: write 1e-6 without quotes"):
        schedules.build({"name": "cosine", "eta_min": "1e-6"}, optimizer, steps_per_epoch=10, total_steps=100)
