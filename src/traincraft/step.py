"""One optimizer step: autocast, the accumulation window, GradScaler, clipping, and what a
non-finite loss or gradient does (:class:`NonFinitePolicy`: raise, skip or roll back).

The order inside a step is fixed, because getting it wrong is the classic bug::

    for each micro-batch of the window:
        backward(loss × samples_in_micro_batch)        # scaled by the fp16 scaler when on
    unscale (fp16)                                     # gradients back in true units
    divide gradients by the window's sample count      # exact mean over the whole window
    clip (norm or value), once                         # on true, averaged gradients
    optimizer.step()                                   # skipped by the scaler on overflow
    zero_grad(set_to_none=True)

With ``accumulate=1`` the multiply/divide is left out: the step is exactly a hand-written one.

A loss that is not a per-sample mean comes as sums (:mod:`traincraft.loss_sums`,
:meth:`Stepper.backward_sums`). A ratio (cross-entropy with class weights or ``ignore_index``)
back-propagates each micro-batch's numerator and the window is divided by the sum of its
denominators (over all processes: one all-reduce of one number per step), so a window of ``k``
micro-batches on ``n`` processes is exactly one batch of all their samples. A set loss (a dice
over the batch) under several processes all-reduces its sums before each backward, so that the
processes' gradients add up to that of the global micro-batch.

Under several processes (:meth:`Stepper.distribute`) the micro-batches that do not end the window
run forward and backward under DDP's ``no_sync`` (one gradient all-reduce per optimizer step, not
per micro-batch), and the window is divided by its samples over all processes divided by their
number: DDP averages over processes, so the result is the exact mean over the global batch even
when the processes' last batches hold different numbers of samples.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from traincraft.errors import TraincraftError, check_positive, check_whole
from traincraft.loss_sums import SummedLoss, safe_denominator, surrogate

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_NO_CONTEXT = contextlib.nullcontext()  # reusable: one object for every plain step
NONFINITE_POLICIES = ("raise", "skip", "rollback")


class NonFiniteError(TraincraftError, FloatingPointError):
    """Training produced a non-finite loss or gradient."""


def parse_precision(precision: str | int) -> str:
    value = str(precision).lower().removesuffix("-mixed").replace("float", "").replace("fp32", "32")
    value = {"16": "fp16", "b16": "bf16", "bfloat16": "bf16"}.get(value, value)
    if value not in PRECISIONS:
        raise TraincraftError(f"precision must be one of '32', 'bf16', 'fp16', got {precision!r}")
    return value


class Stepper:
    """Runs the backward passes of an accumulation window and the optimizer step that ends it.

    Args:
        optimizer: the optimizer to step.
        params: the trainable parameters (for clipping and the window average).
        device: where training runs (autocast and the scaler need its type).
        accumulate: micro-batches per optimizer step.
        precision: "32", "bf16" or "fp16".
        clip_grad_norm: clip the total gradient norm to this value (after unscaling).
        clip_norm_type: the norm's order (2.0 by default, ``inf`` for the max norm).
        clip_grad_value: clip each gradient element to ``[-value, value]``.

    Example:
        >>> stepper = Stepper(opt, model.parameters(), device=torch.device("cpu"), accumulate=2)
        >>> with stepper.autocast():
        ...     loss = loss_fn(model(x), y)
        >>> stepper.backward(loss, samples=len(x))
        >>> if stepper.window_full(): stepper.step()
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Iterable[torch.nn.Parameter],
        *,
        device: torch.device,
        accumulate: int = 1,
        precision: str | int = "32",
        clip_grad_norm: float | None = None,
        clip_norm_type: float = 2.0,
        clip_grad_value: float | None = None,
        on_nonfinite: str = "raise",
    ):
        if on_nonfinite not in NONFINITE_POLICIES:
            raise TraincraftError(f"on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {on_nonfinite!r}")
        if int(accumulate) < 1:
            raise TraincraftError(f"accumulate must be >= 1, got {accumulate}")
        for name, value in (("clip_grad_norm", clip_grad_norm), ("clip_grad_value", clip_grad_value)):
            if value is not None and not value > 0:
                raise TraincraftError(f"{name} must be > 0, got {value}")
        self.optimizer = optimizer
        self.params = [p for p in params if p.requires_grad]
        self.device = device
        self.accumulate = int(accumulate)
        self.precision = parse_precision(precision)
        self.clip_grad_norm, self.clip_norm_type = clip_grad_norm, float(clip_norm_type)
        self.clip_grad_value = clip_grad_value
        self.scaler = (
            torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        )
        # "skip" and "rollback" look at every window (one host read per step); "raise" does not.
        self.check_every_step = on_nonfinite != "raise"
        self.micro_batches = 0  # in the current window
        self.window_samples = 0
        # Several processes (distribute): DDP, their number, and the window's samples over all.
        self.ddp: Any = None
        self.world_size = 1
        self.window_total: int | None = None
        self._all_true: Callable[[bool], bool] | None = None
        self._reduce_sum: Callable[[list[torch.Tensor]], Any] | None = None
        self._start_sum: Callable[[torch.Tensor], Callable[[], torch.Tensor]] | None = None
        self._ends_window = False  # the current micro-batch ends its window (micro_batch)
        self._window_sum: Callable[[], torch.Tensor] | None = None  # the denominators' sum under way
        # A ratio loss: the window's summed denominators (its numerators are back-propagated).
        self.window_denominator: torch.Tensor | None = None
        self.window_loss: torch.Tensor | None = None  # summed, only when checking every step
        self.grad_norm: torch.Tensor | None = None  # before clipping, of the last step
        from traincraft.optim import needs_closure

        # L-BFGS: the step re-evaluates the window through a closure (see closure_step).
        self.closure_optimizer = needs_closure(optimizer)
        if self.closure_optimizer and self.scaler is not None:
            raise TraincraftError(
                f"optimizer {type(optimizer).__name__} re-evaluates the loss inside its step (a closure), "
                "which fp16's gradient scaler cannot follow: use precision bf16 or 32"
            )

    def distribute(self, ddp: Any, world_size: int, all_true: Callable[[bool], bool],
                   reduce_sum: Callable[[list[torch.Tensor]], Any] | None = None,
                   start_sum: Callable[[torch.Tensor], Callable[[], torch.Tensor]] | None = None) -> None:
        """Train under DDP with ``world_size`` processes; ``all_true`` agrees on a flag among them
        (the non-finite policies skip or roll back a step on every process or on none);
        ``reduce_sum`` sums tensors over them in place, ``start_sum`` without waiting (losses
        carried as sums)."""
        self.ddp, self.world_size, self._all_true = ddp, int(world_size), all_true
        self._reduce_sum, self._start_sum = reduce_sum, start_sum

    @property
    def weighted(self) -> bool:
        """Micro-batches are weighted by their samples and the window divided by its total."""
        return self.accumulate > 1 or self.world_size > 1

    def micro_batch(self, *, last_of_epoch: bool) -> contextlib.AbstractContextManager[Any]:
        """Around one micro-batch's forward and backward: under DDP, a micro-batch that does not
        end its window skips the gradient all-reduce (``no_sync``); the window's last one does it."""
        ends_window = self._ends_window = last_of_epoch or self.micro_batches + 1 >= self.accumulate
        if self.ddp is None or ends_window:
            return _NO_CONTEXT
        return self.ddp.no_sync()

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return _NO_CONTEXT
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor, samples: int) -> None:
        """Back-propagate one micro-batch's mean loss, weighted for an exact window average."""
        if self.weighted:
            loss = loss * samples
        self._backward(loss, samples)

    def backward_sums(self, summed: SummedLoss, penalty: torch.Tensor | None, samples: int,
                      batch_samples: int | None = None) -> torch.Tensor:
        """Back-propagate one micro-batch whose loss is carried as sums; returns its value.

        * one micro-batch a step in one process: the batch's value, as a plain loss;
        * a ratio: its numerator (and the penalty times its denominator); :meth:`prepare`
          divides the window by its denominators summed over the window and every process;
        * a set loss under several processes: ``g · sums`` at the global micro-batch's sums
          (:func:`~traincraft.loss_sums.surrogate`), weighted by the global micro-batch's
          ``batch_samples``; the value returned is the global micro-batch's;
        * a set loss under accumulation in one process: each micro-batch's value, weighted by
          its samples (a dice is the dice of the batch it is computed over).
        """
        if summed.ratio and self.weighted:
            numerator, denominator = summed.numerator, summed.denominator  # type: ignore[attr-defined]
            loss = numerator if penalty is None else numerator + penalty * denominator
            previous = self.window_denominator
            self.window_denominator = denominator if previous is None else previous + denominator
            if self.world_size > 1 and self._ends_window and self._start_sum is not None:
                # The window's denominators known: their sum over processes runs during the backward.
                self._window_sum = self._start_sum(self.window_denominator.float().clone())
            self._backward(loss, samples)
            return summed.value.detach()
        if self.world_size > 1 and not summed.ratio:
            part, value = surrogate(summed, self._reduce_sum or _no_reduction)
            share = (batch_samples if batch_samples is not None else samples) / samples if samples else 0.0
            self.backward(part * share if penalty is None else part * share + penalty, samples)
            return value
        value = summed.value
        self.backward(value if penalty is None else value + penalty, samples)
        return value

    def _backward(self, loss: torch.Tensor, samples: int) -> None:
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        if self.check_every_step:
            detached = loss.detach()
            self.window_loss = detached if self.window_loss is None else self.window_loss + detached
        loss.backward()
        self.micro_batches += 1
        self.window_samples += samples

    def window_full(self) -> bool:
        return self.micro_batches >= self.accumulate

    @property
    def pending(self) -> bool:
        """Micro-batches have been back-propagated but not stepped yet (a partial window)."""
        return self.micro_batches > 0

    def prepare(self) -> None:
        """Make the gradients final: unscale, average over the window, clip. Once per step."""
        if not (self.scaler is not None or self.weighted or self.check_every_step
                or self.clip_grad_norm is not None or self.clip_grad_value is not None):
            return  # plain steps: the gradients are final as they are
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.weighted and grads:
            torch._foreach_div_(grads, self._window_divisor())
        if self.clip_grad_norm is not None:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(
                self.params, self.clip_grad_norm, norm_type=self.clip_norm_type, foreach=None
            )
        elif self.check_every_step:
            self.grad_norm = torch.nn.utils.get_total_norm(grads, foreach=None) if grads else None
        if self.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(self.params, self.clip_grad_value, foreach=None)

    def _window_divisor(self) -> float | torch.Tensor:
        if self.window_denominator is not None:  # a ratio loss: Σ denominators, all processes
            denominator = self.window_denominator.float()
            if self.world_size > 1:
                if self._window_sum is not None:
                    denominator, self._window_sum = self._window_sum(), None
                elif self._reduce_sum is not None:
                    denominator = denominator.clone()
                    self._reduce_sum([denominator])
                # DDP divides the sum over processes by their number: what is left to divide by.
                return safe_denominator(denominator) / self.world_size
            return safe_denominator(denominator)
        if self.world_size > 1 and self.window_total is not None:
            # DDP divides the sum over processes by their number: what is left to divide by.
            return self.window_total / self.world_size
        return float(self.window_samples)

    def window_is_finite(self) -> bool:
        """Whether the window's loss and gradient norm are finite (reads the device: one sync);
        under several processes, whether they are on every process."""
        total = self.window_loss if self.window_loss is not None else torch.zeros(())
        if self.grad_norm is not None:
            total = total + self.grad_norm.to(total.device)
        finite = bool(torch.isfinite(total))
        return self._all_true(finite) if self._all_true is not None else finite

    def drop(self) -> None:
        """Throw the window away: no optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()  # clear the unscale bookkeeping for the next window
        self._reset_window()

    def _reset_window(self) -> None:
        self.micro_batches = 0
        self.window_samples = 0
        self.window_total = None
        self.window_loss = None
        self.window_denominator = None
        self._window_sum = None

    def closure_step(self, window: list[tuple[Callable[[], torch.Tensor], int]]) -> bool:
        """Step an optimizer that takes a closure (L-BFGS), as Lightning does: each call of the
        closure zeroes the gradients and back-propagates the whole window again, each
        micro-batch's mean loss weighted by its share of the window's samples (the exact window
        mean), then clips as configured; it returns that mean. ``window`` holds, per micro-batch,
        a function computing its mean loss, and its sample count."""
        total = sum(samples for _, samples in window) or 1

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            mean = torch.zeros((), device=self.device)
            with torch.enable_grad():
                for loss_of, samples in window:
                    with self.autocast():
                        loss = loss_of() * (samples / total)
                    loss.backward()
                    mean = mean + loss.detach().float()
            if self.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad_norm, norm_type=self.clip_norm_type)
            if self.clip_grad_value is not None:
                torch.nn.utils.clip_grad_value_(self.params, self.clip_grad_value)
            return mean

        self.optimizer.step(closure)
        self.optimizer.zero_grad(set_to_none=True)
        self._reset_window()
        return True

    def step(self) -> bool:
        """Step the optimizer (after :meth:`prepare`); False when the fp16 scaler skipped it."""
        took = True
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            took = self.scaler.get_scale() >= scale  # the scale shrinks only on a skipped step
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._reset_window()
        return took

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _no_reduction(tensors: list[torch.Tensor]) -> None:
    """One process (a stepper told of several without a reduction): the sums are the total."""


class NonFinitePolicy:
    """What a non-finite loss or gradient does to training, written once.

    Args:
        policy: ``"raise"``: an error naming the steps and parameters, checked at progress
            refreshes (every half second) and epoch ends, at no cost per step; ``"skip"``: the
            step is dropped; ``"rollback"``: back to the last good weights (taken every
            ``every`` steps) with the learning rate times ``lr_factor``, at most
            ``max_rollbacks`` times. skip and rollback check every step (one host read).
        every: optimizer steps between two snapshots of good weights (rollback).
        lr_factor: the learning rate's factor at each rollback.
        max_rollbacks: rollbacks allowed before the run stops with an error.

    Example:
        >>> trainer = Trainer(model, loss="mse", nonfinite={"policy": "rollback", "every": 50})
    """

    def __init__(self, policy: str = "raise", *, every: int = 100, lr_factor: float = 0.5, max_rollbacks: int = 3):
        if policy not in NONFINITE_POLICIES:
            raise TraincraftError(f"on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {policy!r}")
        check_whole(rollback_every=every, max_rollbacks=max_rollbacks)
        check_positive(rollback_every=every, rollback_lr_factor=lr_factor)
        self.policy, self.every = policy, int(every)
        self.lr_factor, self.max_rollbacks = float(lr_factor), int(max_rollbacks)
        self._good: dict[str, Any] | None = None
        self._next_check, self._last_finite_step = 0.0, 0

    @property
    def every_step(self) -> bool:
        """Whether each window is checked before its step (skip, rollback)."""
        return self.policy != "raise"

    def start(self, trainer: Any) -> None:
        """At the start of a run: the first good weights (rollback), the first check's time."""
        self._next_check, self._last_finite_step, self._good = time.monotonic() + 0.5, 0, None
        if self.policy == "rollback":
            self.keep_good_weights(trainer)

    def after_step(self, trainer: Any) -> None:
        """After each optimizer step: a snapshot every ``every`` steps (rollback), or the check
        that is due (raise)."""
        if self.policy == "rollback" and trainer.state.step % self.every == 0:
            self.keep_good_weights(trainer)
        elif self.policy == "raise" and time.monotonic() >= self._next_check:
            self.check(trainer)

    def parameters_changed(self, trainer: Any) -> None:
        """The optimizer has more groups (unfreezing): so must the snapshot it goes back to."""
        if self.policy == "rollback" and self._good is not None:
            self.keep_good_weights(trainer)

    def check(self, trainer: Any) -> None:
        """Raise when the loss or gradient norm went non-finite since the last check (reads the
        epoch's running sums, which a non-finite value poisons for good)."""
        self._next_check = time.monotonic() + 0.5
        totals = trainer.epoch_sums.sums
        bad = [name for name in ("loss", "grad_norm") if name in totals and not math.isfinite(float(totals[name]))]
        if not bad:
            self._last_finite_step = trainer.state.step
            return
        params = [n for n, p in trainer.model.named_parameters() if not bool(torch.isfinite(p).all())]
        what = "the loss" if "loss" in bad else "the gradient norm"
        where = f"parameters now non-finite: {', '.join(params[:5])}" if params else "the parameters are still finite"
        raise NonFiniteError(
            f"non-finite {what.removeprefix('the ')} in epoch {trainer.state.epoch + 1}, between optimizer steps "
            f"{self._last_finite_step + 1} and {trainer.state.step}; {where}. Lower the learning rate, "
            "clip gradients (clip_grad_norm), or use on_nonfinite='skip' or 'rollback'"
        )

    def keep_good_weights(self, trainer: Any) -> None:
        from traincraft.checkpoint import stage

        self._good = None  # never two snapshots at once
        self._good = stage({"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()})

    def recover(self, trainer: Any) -> None:
        """A non-finite window: ``skip`` drops it; ``rollback`` goes back to the last good
        weights with a lower LR (through the schedule, which owns the LR)."""
        state = trainer.state
        trainer.stepper.drop()
        state.skipped_steps += 1
        where = f"epoch {state.epoch + 1}, after optimizer step {state.step}"
        if self.policy == "skip":
            trainer.log(f"Non-finite loss or gradient in {where}: step skipped ({state.skipped_steps} so far)")
            return
        if state.rollbacks >= self.max_rollbacks:
            raise NonFiniteError(
                f"non-finite loss or gradient in {where}, after {state.rollbacks} rollbacks "
                f"(max_rollbacks={self.max_rollbacks}); lower the learning rate or clip gradients"
            )
        state.rollbacks += 1
        assert self._good is not None
        trainer.model.load_state_dict(self._good["model"])
        trainer.optimizer.load_state_dict(self._good["optimizer"])
        trainer.schedule.scale(self.lr_factor)
        trainer.log(
            f"Non-finite loss or gradient in {where}: rolled back to the last good weights, "
            f"learning rate × {self.lr_factor} (rollback {state.rollbacks} of {self.max_rollbacks})"
        )
