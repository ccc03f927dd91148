"""No host sync per step: ``Trainer.fit`` reads tensor values per epoch and per clock tick.

Every way Python code can pull a tensor's value to the host is counted while ``fit`` runs:
``Tensor.item``, ``.cpu``, ``.tolist``, ``.numpy`` and the conversions ``float()``, ``int()``,
``bool()`` and ``operator.index()`` (``__float__``, ``__int__``, ``__bool__``, ``__index__``).
``.to("cpu")`` is left out: on the CPU every batch goes through ``.to(device)`` without reading
anything, and a real device-to-host copy by ``.to`` is only done per epoch (the best-weights
snapshot) or per checkpoint.

Two things in the loop are paced by time rather than by steps: the progress bar's refresh and
the trainer's periodic non-finite check. Both read ``time.monotonic`` of their own module, which
is replaced here by a clock that ticks with the optimizer steps, ``TICKS_PER_EPOCH`` times per
epoch, by more than either interval: the number of time-paced reads is then the same whatever the
machine's speed. The progress bar writes to a stream that says it is a terminal, so tqdm really
renders.

The budget, derived from what the loop must read:

* per epoch, for training and for validation: the loss sum (one ``float``) and, per metric, its
  accumulators copied to the host (one ``cpu`` each) plus the reads of ``finalize`` (``mae``: two
  accumulators, then ``float(total)`` and ``int(count)`` twice), 2 × (1 + 5) = 12 reads with one
  metric; and the epoch-end non-finite check (the loss, and the gradient norm when clipping).
  ``PER_EPOCH`` allows 16.
* per clock tick: the progress bar's running loss (one ``float``) and the non-finite check's loss
  and gradient norm (one or two ``float``). ``PER_TICK`` allows 3.
* per fit: nothing is read at the start or the end today. ``PER_FIT`` allows 8.

With 200 steps per epoch, one extra read per step is 200 reads per epoch: far past the budget;
and twice the steps per epoch must not add a single read.
"""

from __future__ import annotations

import collections
import contextlib
import io
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import traincraft.callbacks.progress as progress_module
import traincraft.step as step_module
import traincraft.trainer as trainer_module
from traincraft import EarlyStopping, Trainer

READS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")
EPOCHS = 3
TICKS_PER_EPOCH = 4
PER_EPOCH, PER_TICK, PER_FIT = 16, 3, 8


@contextlib.contextmanager
def counting_reads() -> Iterator[collections.Counter[str]]:
    """Count calls of the methods in ``READS`` on any tensor, for the duration of the block."""
    counts: collections.Counter[str] = collections.Counter()
    patched = []

    def counted(name: str, original: Any) -> Any:
        def read(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return original(self, *args, **kwargs)

        return read

    try:
        for name in READS:
            own = name in vars(torch.Tensor)  # else inherited from the C base class
            patched.append((name, own, getattr(torch.Tensor, name)))
            setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
        yield counts
    finally:
        for name, own, original in reversed(patched):
            if own:
                setattr(torch.Tensor, name, original)
            else:
                delattr(torch.Tensor, name)


def time_with_clock(monotonic: Callable[[], float]) -> types.SimpleNamespace:
    """The ``time`` module with ``monotonic`` replaced (``perf_counter`` and the rest kept)."""
    names = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    return types.SimpleNamespace(**{**names, "monotonic": monotonic})


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal, so the progress bar renders into it."""

    def isatty(self) -> bool:
        return True


@dataclass
class Run:
    reads: collections.Counter[str]
    refreshes: int
    steps: int
    output: str

    @property
    def total(self) -> int:
        return sum(self.reads.values())


def budget(epochs: int, ticks: int) -> int:
    return PER_EPOCH * epochs + PER_TICK * ticks + PER_FIT


def regression(steps: int, batch_size: int) -> tuple[tuple[torch.Tensor, ...], ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch_size, 8, generator=g)
    xv = torch.randn(5 * batch_size, 8, generator=g)
    return (x, x.sum(1, keepdim=True)), (xv, xv.sum(1, keepdim=True))


def classification(steps: int, batch_size: int) -> tuple[tuple[torch.Tensor, ...], ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch_size, 8, generator=g)
    xv = torch.randn(5 * batch_size, 8, generator=g)
    return (x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()), (xv, (xv[:, 0] > 0).long())


def fit_counting(
    monkeypatch: pytest.MonkeyPatch,
    steps: int,
    *,
    task: str = "regression",
    loss: Any = "mse",
    run_dir: Path | None = None,
    ticks_per_epoch: int = TICKS_PER_EPOCH,
    **kwargs: Any,
) -> Run:
    """Fit ``EPOCHS`` epochs of ``steps`` optimizer steps with the defaults on, counting reads.

    The clock moves by a second every ``steps // ticks_per_epoch`` optimizer steps (0: it never
    moves, so nothing paced by time happens mid-epoch).
    """
    batch_size, accumulate = 16, kwargs.get("accumulate", 1)
    make = regression if task == "regression" else classification
    train, val = make(steps * accumulate, batch_size)
    torch.manual_seed(0)
    outputs = 1 if task == "regression" else 3
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, outputs))
    metrics = ["mae"] if task == "regression" else ["accuracy", "f1_macro"]
    trainer = Trainer(
        model,
        loss=loss,
        metrics=metrics,
        max_epochs=EPOCHS,
        batch_size=batch_size,
        callbacks=[EarlyStopping(patience=EPOCHS)],
        seed=0,
        device="cpu",
        run_dir=run_dir,
        **kwargs,
    )
    tick = steps // ticks_per_epoch if ticks_per_epoch else 0
    clock = time_with_clock(lambda: float(trainer.state.step // tick) if tick else 0.0)
    monkeypatch.setattr(progress_module, "time", clock)
    monkeypatch.setattr(trainer_module, "time", clock)
    monkeypatch.setattr(step_module, "time", clock)  # the non-finite policy's periodic check
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    refreshes = 0
    running_figures = trainer.running_figures

    def counted_figures() -> dict[str, float]:
        nonlocal refreshes
        refreshes += 1
        return running_figures()

    monkeypatch.setattr(trainer, "running_figures", counted_figures)
    with counting_reads() as reads:
        trainer.fit(train, val=val)
    return Run(collections.Counter(reads), refreshes, trainer.state.step, terminal.getvalue())


def test_reads_are_bounded_per_epoch_and_per_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    run = fit_counting(monkeypatch, steps=200)
    assert run.steps == 200 * EPOCHS
    ticks = TICKS_PER_EPOCH * EPOCHS
    assert run.refreshes == ticks  # the bar refreshed at every tick of the clock, and only then
    # The bar really rendered, on a terminal: carriage returns, the last epoch, the figures.
    assert "\r" in run.output and "epoch 3/3" in run.output and "train_loss" in run.output
    assert run.total <= budget(EPOCHS, ticks), dict(run.reads)
    assert run.reads["item"] == 0 and run.reads["tolist"] == 0, dict(run.reads)


def test_each_tick_reads_a_bounded_number(monkeypatch: pytest.MonkeyPatch) -> None:
    still = fit_counting(monkeypatch, steps=100, ticks_per_epoch=0)
    moving = fit_counting(monkeypatch, steps=100)
    ticks = TICKS_PER_EPOCH * EPOCHS
    assert still.refreshes == 0 and moving.refreshes == ticks
    assert still.total <= PER_EPOCH * EPOCHS + PER_FIT, dict(still.reads)
    # A refresh shows the running loss: it reads the device, but only a fixed amount.
    assert 0 < moving.total - still.total <= PER_TICK * ticks, (
        dict(still.reads),
        dict(moving.reads),
    )


CLASSIFICATION = {
    "task": "classification",
    "loss": "cross_entropy",
    "clip_grad_norm": 1.0,
    "accumulate": 2,
    "schedule": {"name": "cosine", "warmup": "10%"},
}


@pytest.mark.parametrize(
    ("settings", "run_folder"),
    [
        pytest.param({}, False, id="regression"),
        pytest.param(CLASSIFICATION, False, id="classification-clip-accumulate-schedule"),
        pytest.param({}, True, id="run-folder"),
    ],
)
def test_reads_do_not_grow_with_steps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: dict[str, Any], run_folder: bool
) -> None:
    short, long = (
        fit_counting(
            monkeypatch,
            steps,
            run_dir=tmp_path / f"run{steps}" if run_folder else None,
            **settings,
        )
        for steps in (20, 40)
    )
    assert long.steps == 2 * short.steps
    assert short.refreshes == long.refreshes == TICKS_PER_EPOCH * EPOCHS
    # Twice the steps, not one read more.
    assert long.reads == short.reads, (dict(short.reads), dict(long.reads))


def loss_reading_every_batch(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    loss = nn.functional.mse_loss(pred, target)
    loss.item()  # the classic `running_loss += loss.item()`
    return loss


def test_one_read_per_step_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The harness itself: a single .item() per batch must break both checks above.
    short = fit_counting(monkeypatch, steps=20, loss=loss_reading_every_batch)
    long = fit_counting(monkeypatch, steps=100, loss=loss_reading_every_batch)
    assert long.reads["item"] >= long.steps
    assert long.total > budget(EPOCHS, TICKS_PER_EPOCH * EPOCHS)
    assert long.reads != short.reads
