"""The progress bar: one tqdm bar per epoch on a terminal, one plain line per epoch otherwise.

Under several processes only rank 0 shows it; its running loss is rank 0's, the epoch's figures
are over every process.

Figures are read from the device only at refreshes (at most ``1 / refresh_seconds`` per second)
and at the end of the epoch, never per step.
"""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Any

from traincraft.callbacks.base import Callback
from traincraft.callbacks.monitor import format_value

if TYPE_CHECKING:
    from traincraft.trainer import Trainer


def format_figures(figures: dict[str, float], skip: tuple[str, ...] = ("epoch", "step")) -> str:
    parts = [f"{k} {format_value(v)}" for k, v in figures.items() if k not in skip and k != "seconds"]
    if "seconds" in figures:
        parts.append(f"{figures['seconds']:.2f}s")
    return "  ".join(parts)


class ProgressBar(Callback):
    """Shows training progress. Added by the trainer when ``progress=True``."""

    def __init__(self, refresh_seconds: float = 0.1, stream: IO[str] | None = None):
        self.refresh_seconds = refresh_seconds
        self.stream = stream
        self.bar: Any = None
        self._last = 0.0
        self._unshown = 0

    @property
    def out(self) -> IO[str]:
        return self.stream or sys.stderr

    def interactive(self) -> bool:
        return bool(getattr(self.out, "isatty", lambda: False)())

    def on_epoch_start(self, trainer: Trainer) -> None:
        if not self.interactive() or not trainer.is_main_process:  # one bar: rank 0's
            return
        from tqdm.auto import tqdm

        state = trainer.state
        total = state.steps_per_epoch or None
        self.bar = tqdm(
            total=total,
            initial=0,
            desc=f"Epoch {state.epoch + 1}/{trainer.max_epochs}",
            file=self.out,
            leave=True,
            dynamic_ncols=True,
            unit="step",
            mininterval=self.refresh_seconds,
        )
        self._last, self._unshown = time.monotonic(), 0

    def on_step_end(self, trainer: Trainer) -> None:
        if self.bar is None:
            return
        self._unshown += 1
        now = time.monotonic()
        if now - self._last >= self.refresh_seconds:
            self.bar.update(self._unshown)
            self.bar.set_postfix_str(format_figures(trainer.running_figures()), refresh=True)
            self._last, self._unshown = now, 0

    def on_validation_end(self, trainer: Trainer) -> None:
        if not trainer.is_main_process:
            return
        row = trainer.history.epochs[-1] if trainer.history.epochs else {}
        if self.bar is not None:
            self.bar.update(self._unshown)
            self.bar.set_postfix_str(format_figures(row), refresh=True)
            self.bar.close()
            self.bar = None
        else:
            epoch = f"epoch {trainer.state.epoch}/{trainer.max_epochs}"
            print(f"{epoch}  {format_figures(row)}", file=self.out, flush=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def write(self, message: str) -> None:
        """Print a line without breaking a live bar."""
        if self.bar is not None:
            self.bar.write(message, file=self.out)
        else:
            print(message, file=self.out, flush=True)

    def summary(self, trainer: Trainer, train_batches: Any, val_batches: Any) -> str:
        """The line said as training starts: device, parameters, samples, steps, processes."""
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in trainer.model.parameters() if not p.requires_grad)
        val = f", {val_batches.num_samples:,} val" if val_batches is not None else ""
        return (
            f"Training on {trainer.device}: {trainable:,} trainable parameters"
            f"{f' ({frozen:,} frozen)' if frozen else ''}; {train_batches.num_samples:,} train{val} "
            f"samples; {trainer.state.steps_per_epoch} steps per epoch, up to {trainer.max_epochs} epochs"
            f"{_global_batch(trainer)}"
        )


def _global_batch(trainer: Trainer) -> str:
    if trainer.world_size == 1:
        return ""
    size = trainer.batch_size * trainer.world_size * trainer.stepper.accumulate
    return (f"; {trainer.world_size} processes, global batch {size:,} = {trainer.batch_size} per process "
            f"× {trainer.world_size} processes × accumulate {trainer.stepper.accumulate}")
