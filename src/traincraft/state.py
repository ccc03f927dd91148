"""The trainer's counters: what a callback reads, what a checkpoint saves."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class TrainState:
    """Where training stands. Every counter is exact and survives a checkpoint.

    Attributes:
        epoch: epochs completed (0 during the first epoch; history rows number epochs from 1).
        step: optimizer steps taken (micro-batches of an accumulation window and steps skipped by
            the fp16 scaler do not count).
        batch_in_epoch: micro-batches consumed in the current epoch.
        samples_seen: training samples consumed since the start of the run.
        skipped_steps: optimizer steps dropped (fp16 overflow, non-finite policy "skip").
        rollbacks: times the non-finite policy "rollback" went back to the last good weights.
        steps_per_epoch: optimizer steps in one full epoch (accumulation included), once known.
        max_steps: the run's total optimizer steps (max_epochs × steps_per_epoch, or max_steps).
        should_stop: set by a callback (or Ctrl-C) to end training after the current step.
        stop_reason: why training ended: "max_epochs", "max_steps", "early_stopping", ...
        metrics: the latest epoch's figures (``train_loss``, ``val_loss``, ``val_accuracy``, ...).
        lrs: the learning rate of each parameter group that the latest optimizer step used (the
            one record of it: the history, the report and the loggers read it).
    """

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    skipped_steps: int = 0
    rollbacks: int = 0
    steps_per_epoch: int = 0
    max_steps: int = 0
    should_stop: bool = False
    stop_reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    lrs: list[float] = field(default_factory=list)

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after the current step; the first reason given is kept."""
        self.should_stop = True
        if self.stop_reason is None:
            self.stop_reason = reason

    def state_dict(self) -> dict[str, Any]:
        # Every field is a plain value but metrics, a dict of floats (asdict's deep copy is slow).
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["metrics"], state["lrs"] = dict(self.metrics), list(self.lrs)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, dict(value) if key == "metrics" else list(value) if key == "lrs" else value)
