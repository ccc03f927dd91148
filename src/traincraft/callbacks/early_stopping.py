"""Stop training when a monitored figure stops improving, and give back the best weights.

Example:
    >>> stop = EarlyStopping(monitor="val_loss", patience=5, min_delta=1e-4)
    >>> trainer = Trainer(model, loss="cross_entropy", max_epochs=100, callbacks=[stop])
    >>> history = trainer.fit((X, y), val=(X_val, y_val))
    >>> stop.best_epoch, stop.best_value, trainer.state.stop_reason
    (12, 0.4016, 'early_stopping')
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

import torch

from traincraft.callbacks.base import Callback
from traincraft.callbacks.monitor import Monitor, format_value
from traincraft.checkpoint import stage
from traincraft.errors import TraincraftError

if TYPE_CHECKING:
    from traincraft.trainer import Trainer


class EarlyStopping(Callback):
    """Ends training after ``patience`` validations without improvement of ``monitor``.

    At each ``on_validation_end`` it reads ``trainer.state.metrics[monitor]`` and, in this order:

    1. a non-finite value stops training at once (reason ``"non_finite"``) when ``check_finite``;
       otherwise it counts as a validation without improvement;
    2. an improvement (see :class:`~traincraft.callbacks.monitor.Monitor`) becomes the best,
       resets the counter and, with ``restore_best``, is snapshotted; anything else adds one to
       the counter, from epoch ``start_from`` on;
    3. from epoch ``start_from`` on: reaching ``stopping_threshold`` stops (reason
       ``"stopping_threshold"``), going past ``divergence_threshold`` stops (reason
       ``"divergence_threshold"``), and ``wait >= patience`` stops (reason ``"early_stopping"``).

    At ``on_fit_end``, whatever ended training, ``restore_best`` loads the best snapshot back into
    ``trainer.model``.

    Args:
        monitor: the figure to watch, a key of ``trainer.state.metrics``.
        mode: ``"min"`` or ``"max"``; ``None`` infers it from the name.
        patience: validations without improvement to allow; the one that reaches it stops.
        min_delta: how much better than the best a value must be to count as an improvement.
        min_delta_mode: ``"abs"`` (figure's units) or ``"rel"`` (fraction of the best's size).
        start_from: first epoch (numbered from 1) at which patience and the thresholds may stop
            training. Earlier validations still update the best and its snapshot, but do not
            move the counter. A non-finite value stops at any epoch.
        check_finite: stop as soon as the figure is nan or inf.
        stopping_threshold: stop once the figure is this good (min: ``<=``, max: ``>=``).
        divergence_threshold: stop once the figure is worse than this (min: ``>``, max: ``<``).
        baseline: as Keras' ``baseline``: an improvement resets the counter only when it also
            beats this value (by ``min_delta``), so training stops after ``patience`` validations
            that do not reach it.
        restore_best: at the end of training, load the weights of the best epoch back.
        verbose: say, in each epoch's line of the progress output, whether the figure improved
            (``*``) and how much patience is used (``(patience 2/8)``), and log a line when the
            best weights are restored at the end (only when the best epoch is not the last). The
            line saying why training stops is logged either way.

    Attributes:
        monitor: the figure's name.
        mode: ``"min"`` or ``"max"``, resolved.
        best_value: the best value seen, ``None`` before the first improvement.
        best_epoch: the epoch (from 1) of the best value, ``None`` before the first improvement.
        wait: validations without improvement since the best (counted from ``start_from`` on).
        stopped_epoch: the epoch at which this callback asked to stop, or ``None``.

    Example:
        >>> stop = EarlyStopping("val_accuracy", patience=3, stopping_threshold=0.99)
        >>> stop.mode
        'max'
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str | None = None,
        patience: int = 10,
        min_delta: float = 0.0,
        min_delta_mode: str = "abs",
        start_from: int = 0,
        check_finite: bool = True,
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        baseline: float | None = None,
        restore_best: bool = True,
        verbose: bool = True,
    ) -> None:
        self._tracker = Monitor(monitor, mode, min_delta, min_delta_mode)
        self.monitor: str = self._tracker.monitor
        self.mode: str = self._tracker.mode
        self.patience = _positive_int("patience", patience, minimum=1)
        self.start_from = _positive_int("start_from", start_from, minimum=0)
        self.check_finite = bool(check_finite)
        self.stopping_threshold = _threshold("stopping_threshold", stopping_threshold)
        self.divergence_threshold = _threshold("divergence_threshold", divergence_threshold)
        self.baseline = _threshold("baseline", baseline)
        self._check_thresholds_order()
        self.restore_best = bool(restore_best)
        self.verbose = bool(verbose)
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self._snapshot: dict[str, torch.Tensor] | None = None
        self._resumed = False

    @property
    def best_value(self) -> float | None:
        """The best value seen, or ``None`` before the first improvement."""
        return None if self.best_epoch is None else self._tracker.best

    @property
    def min_delta(self) -> float:
        return self._tracker.min_delta

    @property
    def min_delta_mode(self) -> str:
        return self._tracker.min_delta_mode

    # ---- events -------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Trainer) -> None:
        # A resumed run (load_state_dict before fit) keeps its best, counter and snapshot.
        if not self._resumed:
            self._reset()
        self._resumed = False

    def on_validation_end(self, trainer: Trainer) -> None:
        state = trainer.state
        value = self._tracker.value_from(state.metrics)
        epoch = state.epoch
        if not math.isfinite(value) and self.check_finite:
            self._stop(trainer, "non_finite", f"{self.monitor} is {value} at epoch {epoch}")
            return
        improved = self._record(trainer, value, epoch)
        if epoch < self.start_from:
            return
        reason = self._threshold_reason(value)
        if reason is not None:
            self._stop(trainer, reason, self._threshold_message(reason, value, epoch))
        elif self.wait >= self.patience and not improved:
            self._stop(
                trainer,
                "early_stopping",
                f"no improvement in {self.monitor} for {self.wait} validations at epoch {epoch}",
            )

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.restore_best and self._snapshot is None:
            trainer.log(
                f"EarlyStopping: {self.monitor} never improved (no finite value); "
                "the model keeps its last weights"
            )

    def final_weights(self, trainer: Trainer) -> tuple[str, Any] | None:
        """The best weights, offered as the run's final weights (``restore_best``), whatever
        ended training; the trainer decides among the offers (``Trainer.FINAL_WEIGHTS``)."""
        if not self.restore_best or self._snapshot is None:
            return None

        def restore() -> None:
            self.restore_best_weights(trainer)
            if self.verbose and self.best_epoch != trainer.state.epoch:  # else nothing changed for the user
                trainer.log(
                    f"EarlyStopping: restored the best weights, from epoch {self.best_epoch} "
                    f"({self.monitor} {format_value(self._tracker.best)})"
                )

        return "best", restore

    def epoch_note(self, epoch: int) -> str:
        """What the progress line says after the monitored figure of ``epoch``: ``"*"`` for a new
        best, ``"(patience 2/8)"`` while waiting (both when a new best missed the ``baseline``);
        empty with ``verbose=False``."""
        if not self.verbose:
            return ""
        improved = self.best_epoch == epoch
        waiting = self.wait > 0 or not improved
        parts = ["*"] if improved else []
        if waiting:
            parts.append(f"(patience {self.wait}/{self.patience})")
        return " ".join(parts)

    def restore_best_weights(self, trainer: Trainer) -> bool:
        """Load the best weights seen so far into the model; False when there are none yet."""
        if self._snapshot is None:
            return False
        # load_state_dict copies into the live tensors, on whatever device they are.
        trainer.model.load_state_dict(self._snapshot)
        return True

    # ---- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Best value, best epoch, counter and the best weights (CPU tensors, or ``None``)."""
        return {
            "monitor": self._tracker.state_dict(),
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best_weights": None if self._snapshot is None else dict(self._snapshot),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state; the next ``on_fit_start`` then keeps it."""
        self._tracker.load_state_dict(state["monitor"])
        self.best_epoch = state["best_epoch"]
        self.wait = int(state["wait"])
        self.stopped_epoch = state.get("stopped_epoch")
        weights = state.get("best_weights")
        # Snapshots live on the host whatever map_location the checkpoint was loaded with.
        self._snapshot = (
            None if weights is None else {k: v.detach().to("cpu") for k, v in weights.items()}
        )
        self._resumed = True

    # ---- internals ----------------------------------------------------------------------------

    def _reset(self) -> None:
        self._tracker.reset()
        self.best_epoch = None
        self.wait = 0
        self.stopped_epoch = None
        self._snapshot = None

    def _record(self, trainer: Trainer, value: float, epoch: int) -> bool:
        if self._tracker.update(value):
            self.best_epoch = epoch
            # Keras: the counter restarts only for a value that beats the baseline too.
            if self.baseline is None or self._tracker.beats(value, self.baseline):
                self.wait = 0
            elif epoch >= self.start_from:
                self.wait += 1
            if self.restore_best:
                self._take_snapshot(trainer.model)
            return True
        if epoch < self.start_from:
            return False
        self.wait += 1
        return False

    def _take_snapshot(self, model: torch.nn.Module) -> None:
        # Drop the old copy first so that the host never holds two snapshots at once.
        self._snapshot = None
        self._snapshot = stage(model.state_dict())  # detached CPU copies, never aliases

    def _threshold_reason(self, value: float) -> str | None:
        # "Reaching" a target includes equality; "going past" a divergence limit does not.
        better, worse = (
            (operator.le, operator.gt) if self.mode == "min" else (operator.ge, operator.lt)
        )
        if self.stopping_threshold is not None and better(value, self.stopping_threshold):
            return "stopping_threshold"
        if self.divergence_threshold is not None and worse(value, self.divergence_threshold):
            return "divergence_threshold"
        return None

    def _threshold_message(self, reason: str, value: float, epoch: int) -> str:
        shown = format_value(value)
        if reason == "stopping_threshold":
            limit = format_value(self.stopping_threshold)  # type: ignore[arg-type]
            return f"{self.monitor} {shown} reached stopping_threshold {limit} at epoch {epoch}"
        limit = format_value(self.divergence_threshold)  # type: ignore[arg-type]
        return f"{self.monitor} {shown} went past divergence_threshold {limit} at epoch {epoch}"

    def _stop(self, trainer: Trainer, reason: str, why: str) -> None:
        self.stopped_epoch = trainer.state.epoch
        if self.best_epoch is None:
            best = "no best yet"
        else:
            best = f"best {format_value(self._tracker.best)} at epoch {self.best_epoch}"
        trainer.log(f"EarlyStopping: {why}; stopping ({best})")
        trainer.state.request_stop(reason)

    def _check_thresholds_order(self) -> None:
        stop, diverge = self.stopping_threshold, self.divergence_threshold
        if stop is None or diverge is None:
            return
        if (self.mode == "min" and stop >= diverge) or (self.mode == "max" and stop <= diverge):
            side = "below" if self.mode == "min" else "above"
            raise TraincraftError(
                f"EarlyStopping: stopping_threshold {stop} must lie {side} divergence_threshold "
                f"{diverge} for mode={self.mode!r}"
            )

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(monitor={self.monitor!r}, mode={self.mode!r}, "
            f"patience={self.patience}, best_epoch={self.best_epoch}, "
            f"best_value={self.best_value}, wait={self.wait})"
        )


def _positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TraincraftError(
            f"EarlyStopping: {name} must be an integer >= {minimum}, got {value!r}"
        )
    return value


def _threshold(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise TraincraftError(
            f"EarlyStopping: {name} must be a finite number or None, got {value!r}"
        )
    return number
