import copy

import pytest
import torch
from torch import nn

from traincraft.errors import TraincraftError
from traincraft.step import Stepper, parse_precision

CPU = torch.device("cpu")


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))


def run(model, chunks, accumulate, **kwargs):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stepper = Stepper(opt, model.parameters(), device=CPU, accumulate=accumulate, **kwargs)
    for x, y in chunks:
        with stepper.autocast():
            loss = nn.functional.mse_loss(model(x), y)
        stepper.backward(loss, samples=len(x))
        if stepper.window_full():
            stepper.prepare()
            stepper.step()
    if stepper.pending:
        stepper.prepare()
        stepper.step()
    return stepper


@pytest.mark.parametrize("sizes", [[4, 4, 4], [4, 4, 2], [5, 1]])
def test_accumulated_window_equals_one_big_batch(sizes):
    x, y = torch.randn(sum(sizes), 3), torch.randn(sum(sizes), 1)
    big = make_model()
    run(big, [(x, y)], accumulate=1)
    small = make_model()
    chunks = list(zip(x.split(sizes), y.split(sizes)))
    run(small, chunks, accumulate=len(sizes))  # uneven micro-batches: weighted by samples
    for a, b in zip(big.parameters(), small.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_partial_last_window_is_stepped_and_normalised_by_its_own_samples():
    x, y = torch.randn(10, 3), torch.randn(10, 1)
    reference = make_model()
    # accumulate 2 over micro-batches of 4, 4, 2 -> steps on samples [0:8] then [8:10]
    run(reference, [(x[:8], y[:8]), (x[8:], y[8:])], accumulate=1)
    model = make_model()
    chunks = list(zip(x.split(4), y.split(4)))
    run(model, chunks, accumulate=2)
    for a, b in zip(reference.parameters(), model.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_clipping_runs_once_on_the_window_averaged_gradient(monkeypatch):
    calls = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, **kw):
        params = list(params)
        calls.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])).item())
        return original(params, max_norm, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    x, y = torch.randn(8, 3), torch.randn(8, 1) * 10
    model = make_model()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
    stepper = run(make_model(), list(zip(x.split(2), y.split(2))), accumulate=4, clip_grad_norm=0.5)
    assert len(calls) == 1
    assert calls[0] == pytest.approx(expected, rel=1e-5)
    assert stepper.grad_norm.item() == pytest.approx(expected, rel=1e-5)


def test_clipped_step_matches_torch_by_hand():
    x, y = torch.randn(8, 3), torch.randn(8, 1) * 10
    by_hand = make_model()
    opt = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    nn.functional.mse_loss(by_hand(x), y).backward()
    torch.nn.utils.clip_grad_norm_(by_hand.parameters(), 0.5)
    opt.step()
    ours = make_model()
    run(ours, [(x, y)], accumulate=1, clip_grad_norm=0.5)
    for a, b in zip(by_hand.parameters(), ours.parameters()):
        assert torch.equal(a, b)


def test_clip_value_limits_every_element():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stepper = Stepper(opt, model.parameters(), device=CPU, clip_grad_value=1e-3)
    stepper.backward(nn.functional.mse_loss(model(torch.randn(4, 3)), torch.randn(4, 1) * 100), 4)
    stepper.prepare()
    limit = torch.tensor(1e-3, dtype=torch.float32)
    assert all((p.grad.abs() <= limit).all() for p in model.parameters())
    assert any((p.grad.abs() == limit).any() for p in model.parameters())  # it did clip


def test_bf16_autocast_on_cpu():
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stepper = Stepper(opt, model.parameters(), device=CPU, precision="bf16")
    before = copy.deepcopy(model.state_dict())
    with stepper.autocast():
        out = model(torch.randn(4, 3))
    assert out.dtype == torch.bfloat16
    stepper.backward(out.float().pow(2).mean(), 4)
    stepper.prepare()
    assert stepper.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_precision_names_and_errors():
    assert parse_precision(32) == "32"
    assert parse_precision("16-mixed") == "fp16"
    assert parse_precision("bf16-mixed") == "bf16"
    with pytest.raises(TraincraftError, match="precision must be one of"):
        parse_precision("int8")
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TraincraftError, match="accumulate must be >= 1, got 0"):
        Stepper(opt, model.parameters(), device=CPU, accumulate=0)
    with pytest.raises(TraincraftError, match="clip_grad_norm must be > 0"):
        Stepper(opt, model.parameters(), device=CPU, clip_grad_norm=0)
