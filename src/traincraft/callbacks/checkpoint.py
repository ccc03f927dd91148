"""Checkpointing: the resume file, the kept history of it, and the best weights.

In the run folder::

    checkpoints/last.ckpt          the newest full training state (what resume reads)
    checkpoints/step-00000120.ckpt the ``keep_last`` newest ones: copies of their own, so that a
                                   damaged newest file has a fallback on other blocks of the disk
    checkpoints/top-*.ckpt         the ``save_top_k`` best by the monitored value (copies too)
    best.safetensors, best.json    the weights of the best epoch so far, and which epoch that was

Retention never deletes the newest checkpoint nor the best. The files that mirror the training
state (``best.*``, ``metrics.csv``) are on disk before the checkpoint that follows them: a
checkpoint on disk never knows of a best epoch whose weights are not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traincraft.callbacks.base import Callback
from traincraft.callbacks.monitor import Monitor
from traincraft.checkpoint import save_checkpoint, save_weights
from traincraft.errors import TraincraftError
from traincraft.files import MIRROR_SECONDS, atomic_write_text, copy_durably, flush_waiting

if TYPE_CHECKING:
    from traincraft.trainer import Trainer

STOPPED_BY_SIGNAL = ("interrupted", "terminated")


class Checkpoint(Callback):
    """Saves the full training state for exact resume, and the best weights.

    Whatever its place in ``callbacks``, it acts after every other callback at the end of a step
    and of an epoch (its checkpoint holds their updates) and before them at the end of ``fit``
    (an interrupted run's checkpoint holds the live weights, not the best ones put back).

    Added by the trainer when it has a ``run_dir``. Put your own in ``callbacks=`` to change it.

    Args:
        folder: the run folder.
        every_n_epochs: save ``last.ckpt`` at the end of every n-th epoch (and the last one).
        every_n_steps: also save every n optimizer steps (None: only at epoch ends).
        keep_last: how many of the newest checkpoints to keep (at least 1: ``last.ckpt``).
        save_top_k: also keep the k best epoch checkpoints by ``monitor``.
        monitor: the figure that decides "best"; default: early stopping's monitor if there is
            one, else ``val_loss`` (``train_loss`` without validation data).
        mode: "min" or "max"; inferred from the name when None.

    Example:
        >>> trainer = Trainer(model, loss="mse", run_dir="runs/a",
        ...                   callbacks=[Checkpoint("runs/a", every_n_steps=500, keep_last=3)])
    """

    saves_training_state = True  # the trainer's event order puts it last / first (see above)

    def __init__(
        self,
        folder: str | Path,
        *,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        keep_last: int = 2,
        save_top_k: int = 0,
        monitor: str | None = None,
        mode: str | None = None,
    ):
        for name, value in (("every_n_epochs", every_n_epochs), ("keep_last", keep_last)):
            if int(value) < 1:
                raise TraincraftError(f"checkpoint {name} must be >= 1, got {value}")
        if every_n_steps is not None and int(every_n_steps) < 1:
            raise TraincraftError(f"checkpoint every_n_steps must be >= 1, got {every_n_steps}")
        if int(save_top_k) < 0:
            raise TraincraftError(f"checkpoint save_top_k must be >= 0, got {save_top_k}")
        self.folder = Path(folder)
        self.every_n_epochs, self.every_n_steps = int(every_n_epochs), every_n_steps
        self.keep_last, self.save_top_k = int(keep_last), int(save_top_k)
        self.monitor_name, self.mode = monitor, mode
        self.monitor: Monitor | None = None
        self.kept: list[str] = []  # newest last
        self.top: list[tuple[float, str]] = []  # (value, file), best first
        self.best_epoch: int | None = None
        self.best_step: int | None = None
        self._value: float | None = None  # this epoch's monitored value, from validation to its end
        self._loaded = False

    @property
    def directory(self) -> Path:
        return self.folder / "checkpoints"

    # ------------------------------------------------------------------ events

    def on_fit_start(self, trainer: Trainer) -> None:
        if self._loaded and self.monitor is not None:
            return  # a resumed run keeps its best and its kept files
        name, mode = self.monitor_name, self.mode
        delta: tuple[float, str] = (0.0, "abs")
        if name is None and trainer.early_stopping is not None:
            # Early stopping's best is the best: its improvement test too (min_delta), so that
            # best.safetensors holds the epoch whose weights early stopping restores.
            name, mode = trainer.monitor
            tracker = trainer.early_stopping._tracker
            delta = (tracker.min_delta, tracker.min_delta_mode)
        self._default_monitor = name is None
        self.monitor = Monitor(name or "val_loss", mode=mode, min_delta=delta[0], min_delta_mode=delta[1])
        self.kept, self.top, self.best_epoch, self.best_step = [], [], None, None

    def on_step_end(self, trainer: Trainer) -> None:
        if self.every_n_steps and trainer.state.step % self.every_n_steps == 0:
            self.save(trainer)

    def on_validation_end(self, trainer: Trainer) -> None:
        # Here the model holds the weights just validated (an EMA's, when it is evaluated).
        self._value = self._track_best(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        value, self._value = self._value, None
        state = trainer.state
        ranked = self.save_top_k > 0 and value is not None and math.isfinite(value)
        if state.epoch % self.every_n_epochs == 0 or state.should_stop or ranked:
            # The ranking is updated before saving, so the checkpoint knows its own place in it.
            then = self._rank(value, state.epoch) if ranked else None  # type: ignore[arg-type]
            self.save(trainer, then=then)

    def on_fit_end(self, trainer: Trainer) -> None:
        # Before early stopping puts the best weights back: the resume file holds the live state.
        # Not after a second Ctrl-C (or an error): the state may be in the middle of a step, and
        # the newest checkpoint on disk is then the one to resume from. Nor among the kept ones:
        # the retention of a resumed run stays that of a run never stopped.
        if trainer.state.stop_reason in STOPPED_BY_SIGNAL and not trainer.aborted:
            path = self.save(trainer, keep=False)
            hint = trainer.resume_hint or f"trainer.fit(..., resume={str(self.folder)!r})"
            trainer.log(f"Saved {path}; resume with: {hint}")

    # ------------------------------------------------------------------ saving

    def save(self, trainer: Trainer, then: Any = None, keep: bool = True) -> Path:
        """Write ``last.ckpt`` (atomically) and keep a copy under the step's name (``keep``)."""
        last = self.directory / "last.ckpt"
        named = self.directory / f"step-{trainer.state.step:08d}.ckpt"
        keep = keep and (self.keep_last > 1 or self.save_top_k > 0) and trainer.is_main_process
        dropped: list[str] = []
        if keep:  # before the state is taken: the checkpoint lists itself among the kept ones
            if named.name in self.kept:
                self.kept.remove(named.name)
            self.kept.append(named.name)
            dropped, self.kept = self.kept[: -self.keep_last], self.kept[-self.keep_last :]
        # Every process: under several, state_dict() gathers each one's random state and sums.
        state = trainer.state_dict()
        if not trainer.is_main_process:
            return last
        flush_waiting()  # the mirrors waiting to be written go first, in the writer's order

        def after_rename() -> None:  # on the file writer's thread, once last.ckpt is in place
            if keep:
                _link(last, named)
                for name in dropped:  # last.ckpt is the newest of keep_last
                    (self.directory / name).unlink(missing_ok=True)
            if then is not None:
                then()

        # The disk's part (fsync, rename) is done off the training thread; files.wait() joins it.
        save_checkpoint(state, last, then=after_rename, background=True)
        return named if keep else last

    def _track_best(self, trainer: Trainer) -> float | None:
        """The monitored value (None when not reported); on improvement, write the best weights."""
        assert self.monitor is not None
        metrics = trainer.state.metrics
        if self.monitor.monitor not in metrics and getattr(self, "_default_monitor", False):
            self.monitor = Monitor("train_loss", mode="min")  # no validation data
        try:
            value = self.monitor.value_from(metrics)
        except TraincraftError:
            if getattr(self, "_default_monitor", False):
                return None
            raise
        if not self.monitor.update(value):
            return value
        self.best_epoch, self.best_step = trainer.state.epoch, trainer.state.step
        if trainer.is_main_process:
            # Mirrors of the training state (the checkpoint holds the best weights too): written
            # at most every MIRROR_SECONDS, the newest version, and at the end of fit.
            every = mirror_interval(trainer)
            save_weights(trainer.model, self.folder / "best.safetensors", at_most_every=every)
            best = {"epoch": self.best_epoch, "step": trainer.state.step,
                    "monitor": self.monitor.monitor, "value": value}
            atomic_write_text(self.folder / "best.json", json.dumps(best, indent=2), at_most_every=every)
        return value

    def _rank(self, value: float, epoch: int) -> Any:
        """Put this epoch into the top k; returns the file work (a link to the checkpoint about
        to be written, deletions of those that fell out) to run once it is in place."""
        top_name = f"top-epoch-{epoch:04d}.ckpt"
        self.top.append((value, top_name))
        self.top.sort(key=lambda item: item[0], reverse=self.monitor.mode == "max")  # type: ignore[union-attr]
        dropped = [name for _, name in self.top[self.save_top_k :]]
        self.top = self.top[: self.save_top_k]

        def update_files() -> None:
            if top_name not in dropped:
                _link(self.directory / "last.ckpt", self.directory / top_name)
            for name in dropped:
                (self.directory / name).unlink(missing_ok=True)

        return update_files

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor.state_dict() if self.monitor else None,
            "monitor_name": self.monitor.monitor if self.monitor else None,
            "monitor_mode": self.monitor.mode if self.monitor else None,
            "kept": list(self.kept),
            "top": [[v, n] for v, n in self.top],
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("monitor_name"):
            saved = state["monitor"]  # its improvement test as the run had it (early stopping's)
            self.monitor = Monitor(state["monitor_name"], mode=state["monitor_mode"],
                                   min_delta=saved.get("min_delta", 0.0), min_delta_mode=saved.get("min_delta_mode", "abs"))
            self.monitor.load_state_dict(state["monitor"])
        self.kept = list(state["kept"])
        self.top = [(float(v), str(n)) for v, n in state["top"]]
        self.best_epoch = state["best_epoch"]
        self.best_step = state.get("best_step")
        self._loaded = True


def mirror_interval(trainer: Trainer) -> float:
    """How long a file mirroring the training state may wait: MIRROR_SECONDS, or nothing once
    the run is about to end (its last versions are then written while ``fit`` winds down)."""
    return 0.0 if trainer.state.should_stop else MIRROR_SECONDS


def _link(source: Path, target: Path) -> None:
    """Make ``target`` an independent copy of ``source`` (atomically, durably)."""
    copy_durably(source, target)
