"""The learning-rate range test: which learning rate to train with, in about a hundred steps.

The test trains for ``steps`` optimizer steps with a learning rate that grows exponentially from
``start_lr`` to ``end_lr``, records the loss of every step, smooths it (a debiased exponential
moving average) and stops once the smoothed loss passes ``diverge`` times its minimum. Two rules
read a rate off the curve: the **steepest descent** of the smoothed loss, and fastai's **valley**
(the middle of the longest stretch over which the loss keeps falling).

The test trains the trainer's own model with its own optimizer, loss, precision, accumulation and
clipping, then puts back everything it touched: weights and buffers, gradients, optimizer state
and learning rates, the schedule, the gradient scaler, train/eval modes and every random
generator. ``fit`` after ``lr_find`` gives bitwise the weights that ``fit`` alone gives.

Example:
    >>> result = tc.lr_find(trainer, (X, y))
    >>> result.suggestion, result.valley
    (0.0021, 0.0046)
    >>> result.plot("lr_find.png")
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traincraft.errors import TraincraftError
from traincraft.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from traincraft.trainer import Trainer

__all__ = ["LRFindResult", "lr_find", "steepest", "valley"]


@dataclass
class LRFindResult:
    """What :func:`lr_find` measured.

    Attributes:
        lrs: the learning rate of each step taken (the first parameter group's).
        losses: the smoothed training loss of each step.
        raw_losses: the training loss of each step, as measured (mean over the step's samples).
        suggestion: the rate of steepest descent of the smoothed loss (None with too few steps).
        valley: fastai's valley rule (None with too few steps).
        stop_reason: ``"diverged"`` (the smoothed loss passed ``diverge`` × its minimum),
            ``"non_finite"`` (the loss became nan or inf) or ``"steps"`` (all steps were taken).
    """

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float] = field(default_factory=list)
    suggestion: float | None = None
    valley: float | None = None
    stop_reason: str = "steps"

    def plot(self, path: str | Path | None = None) -> Figure:
        """The smoothed loss against the learning rate (log axis), both suggestions marked.

        Args:
            path: where to save the figure (format from the suffix; written atomically).

        Example:
            >>> fig = result.plot("lr_find.png")
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 4.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if self.raw_losses:
            ax.plot(self.lrs, self.raw_losses, color="tab:blue", alpha=0.25, linewidth=1, label="loss")
        ax.plot(self.lrs, self.losses, color="tab:blue", linewidth=1.8, label="smoothed loss")
        for rate, name, color in ((self.suggestion, "steepest", "tab:red"), (self.valley, "valley", "tab:orange")):
            if rate is not None:
                loss = self.losses[self.lrs.index(rate)]
                ax.plot([rate], [loss], "o", color=color, markersize=8, label=f"{name}: {rate:.2e}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title(f"learning-rate range test ({len(self.lrs)} steps, {self.stop_reason})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        if self.losses:  # keep the divergence from squashing the interesting part
            low, high = min(self.losses), max(self.losses[: max(1, len(self.losses) // 3)])
            if math.isfinite(low) and math.isfinite(high) and high > low:
                ax.set_ylim(low - 0.1 * (high - low), high + 0.5 * (high - low))
        if path is not None:
            path = Path(path)
            fmt = path.suffix.lstrip(".").lower() or "png"
            atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, dpi=100))
        from traincraft.inline import inline

        return inline(fig)  # shown as a picture in a notebook


def lr_find(
    trainer: Trainer,
    train: Any = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    smooth: float = 0.98,
    diverge: float = 4.0,
) -> LRFindResult:
    """Run the learning-rate range test on ``trainer`` and put everything back as it was.

    Step ``i`` (from 0) uses the base LR ``start_lr · (end_lr/start_lr)^(i/(steps-1))`` (the
    optimizer's ``lr``, which ``lr_mult`` rules and layer decay multiply); each parameter group
    keeps its multiple of it, so the suggestion is a base LR, whichever group comes first. Each step is one optimizer step of
    ``trainer.accumulate`` micro-batches, going round the training data as often as needed. The
    smoothed loss is ``avg_i / (1 - smooth^(i+1))`` with ``avg_i = smooth·avg_{i-1} + (1-smooth)·loss_i``.
    The suggestions skip the first tenth of the requested steps and the last five taken
    (fastai's choice: the start is noise, the end is divergence).

    Args:
        trainer: the trainer whose model, optimizer, loss and step settings are tested.
        train: the training data, as ``fit`` takes it; None uses the recipe's. With
            ``val_split``, the same share as in ``fit`` is held out first.
        start_lr, end_lr: the range, ``0 < start_lr < end_lr``.
        steps: the most optimizer steps to take (at least 2).
        smooth: the moving average's weight of the past, in ``[0, 1)``.
        diverge: stop once the smoothed loss exceeds ``diverge`` × its minimum (> 1).

    Returns:
        The :class:`LRFindResult`.

    Example:
        >>> result = lr_find(trainer, (X, y), steps=100)
        >>> trainer.fit((X, y))          # unaffected by the test
    """
    _check_args(start_lr, end_lr, steps, smooth, diverge)
    if train is None:
        if trainer.data is None:
            raise TraincraftError("lr_find needs training data: lr_find(trainer, (X, y))")
        train = trainer.data.train
    options = trainer.data_options
    if options.val_split:
        from traincraft.data import split_off

        train, _ = split_off(train, options.val_split, seed=trainer.seed)
    batches = trainer.batches(train, shuffle=options.shuffle, what="train")
    if len(batches) == 0:
        raise TraincraftError("lr_find: the training data holds no batch")
    snapshot = _Snapshot(trainer)
    try:
        lrs, raw, stop_reason = _range_test(trainer, batches, start_lr, end_lr, steps, smooth, diverge)
    finally:
        snapshot.restore(trainer)
    losses = smoothed(raw, smooth)
    lo, hi = steps // 10, len(raw) - 5
    lrs_cut, losses_cut = (lrs[lo:hi], losses[lo:hi]) if hi - lo >= 2 else (lrs, losses)
    return LRFindResult(
        lrs=lrs, losses=losses, raw_losses=raw, stop_reason=stop_reason,
        suggestion=steepest(lrs_cut, losses_cut), valley=valley(lrs_cut, losses_cut),
    )


def _check_args(start_lr: float, end_lr: float, steps: int, smooth: float, diverge: float) -> None:
    if not 0 < start_lr < end_lr:
        raise TraincraftError(f"lr_find needs 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}")
    if int(steps) < 2:
        raise TraincraftError(f"lr_find steps must be >= 2, got {steps}")
    if not 0 <= smooth < 1:
        raise TraincraftError(f"lr_find smooth must be in [0, 1), got {smooth}")
    if not diverge > 1:
        raise TraincraftError(f"lr_find diverge must be > 1, got {diverge}")


def _range_test(
    trainer: Trainer, batches: Any, start_lr: float, end_lr: float, steps: int, smooth: float,
    diverge: float,
) -> tuple[list[float], list[float], str]:
    from traincraft.data import num_samples, to_device

    groups = trainer.optimizer.param_groups
    # The swept value is the base LR (the recipe's optimizer.lr), each group at its multiple of
    # it: the suggestion can then be written back as optimizer.lr, whatever group comes first.
    base = float(trainer.optimizer.defaults.get("lr") or groups[0]["lr"] or 1.0)
    ratios = [float(g["lr"]) / base for g in groups]
    stepper, device = trainer.stepper, trainer.device
    trainer.model.train()
    stream = _cycle(batches)
    lrs: list[float] = []
    raw: list[float] = []
    avg, best = 0.0, math.inf
    for i in range(int(steps)):
        lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
        for group, ratio in zip(groups, ratios):
            group["lr"] = lr * ratio
        total, count = None, 0
        for _ in range(stepper.accumulate):
            inputs, target = next(stream)
            inputs, target = trainer.on_device(inputs, training=True), to_device(target, device)
            samples = num_samples(target)
            _, _, loss, _ = trainer.train_micro_batch(inputs, target, samples)
            part = loss.detach().float() * samples
            total = part if total is None else total + part
            count += samples
        stepper.prepare()
        stepper.step()
        value = float(total) / count  # one read per step: the stop test needs the value
        if not math.isfinite(value):
            return lrs, raw, "non_finite"
        lrs.append(lr)
        raw.append(value)
        avg = smooth * avg + (1 - smooth) * value
        current = avg / (1 - smooth ** (i + 1))
        best = min(best, current)
        if current > diverge * best:
            return lrs, raw, "diverged"
    return lrs, raw, "steps"


def _cycle(batches: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def smoothed(losses: Sequence[float], smooth: float) -> list[float]:
    """The debiased exponential moving average of ``losses`` (what :func:`lr_find` plots)."""
    out, avg = [], 0.0
    for i, value in enumerate(losses):
        avg = smooth * avg + (1 - smooth) * value
        out.append(avg / (1 - smooth ** (i + 1)))
    return out


def steepest(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The LR where the loss falls fastest per unit of ``log(lr)`` (the start of the steepest
    segment between two neighbouring points); None with fewer than two points."""
    if len(lrs) < 2:
        return None
    slopes = [
        (losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)
    ]
    return lrs[min(range(len(slopes)), key=slopes.__getitem__)]


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """fastai's valley rule: the longest decreasing subsequence of the loss is the valley; the
    suggestion lies half-way into it (a third plus a sixth of its span). None with < 2 points."""
    n = len(losses)
    if n < 2:
        return None
    longest = [1] * n  # longest decreasing subsequence ending at i
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[end] < longest[i]:
                end, start = i, i - longest[i]
    sections = (end - start) / 3
    index = start + int(sections) + int(sections / 2)
    return lrs[min(max(index, 0), n - 1)]


class _Snapshot:
    """Everything the range test changes, copied before and put back after."""

    def __init__(self, trainer: Trainer):
        from traincraft.seeding import rng_state

        model = trainer.model
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
        self.modes = {name: m.training for name, m in model.named_modules()}
        self.optimizer = copy.deepcopy(trainer.optimizer.state_dict())
        self.schedule = copy.deepcopy(trainer.schedule.state_dict()) if trainer.schedule is not None else None
        stepper = trainer.stepper
        self.scaler = copy.deepcopy(stepper.scaler.state_dict()) if stepper.scaler is not None else None
        self.window = (stepper.micro_batches, stepper.window_samples, stepper.window_loss, stepper.grad_norm)
        self.adapt_target = trainer._adapt_target
        self.rng = rng_state()

    def restore(self, trainer: Trainer) -> None:
        from traincraft.seeding import set_rng_state

        model = trainer.model
        model.load_state_dict(self.weights)
        for param, grad in zip(model.parameters(), self.grads):
            param.grad = grad
        for name, module in model.named_modules():
            module.training = self.modes[name]
        if self.schedule is not None:
            trainer.schedule.load_state_dict(self.schedule)
        # After the schedule: the optimizer's groups hold the exact learning rates to go back to.
        trainer.optimizer.load_state_dict(self.optimizer)
        stepper = trainer.stepper
        if self.scaler is not None:
            stepper.scaler.load_state_dict(self.scaler)
        stepper.micro_batches, stepper.window_samples, stepper.window_loss, stepper.grad_norm = self.window
        trainer._adapt_target = self.adapt_target
        set_rng_state(self.rng)
