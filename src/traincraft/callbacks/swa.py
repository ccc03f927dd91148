"""Stochastic weight averaging (SWA): average the weights of the run's last epochs.

From optimizer step ``start`` on, the learning rate of each group anneals from its value at
``start`` to ``lr × its lr_mult`` over ``anneal`` steps (cosine or linear, as
``torch.optim.swa_utils.SWALR`` does, per optimizer step), then stays there: the anneal is a
phase of the schedule from then on (``Schedule.take_over``), so the schedule stays the one writer
of the learning rate. At the end of every epoch from ``start`` on, the weights join an equal-weight
average (``torch.optim.swa_utils.AveragedModel``). When the run ends, the model takes the
averaged weights and its batch-norm statistics are recomputed with one pass over the training
data (as ``torch.optim.swa_utils.update_bn`` does); the averaged model is then validated once and,
with a run folder, written to ``best.safetensors`` (``best.json`` says ``"swa": true``).

An interrupted run keeps its live weights, so that it resumes exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from traincraft.callbacks.base import Callback
from traincraft.errors import TraincraftError

if TYPE_CHECKING:
    from traincraft.trainer import Trainer

STRATEGIES = ("cos", "linear")


def swa_lr(k: int, start_lr: float, target_lr: float, anneal_steps: int, strategy: str) -> float:
    """The LR after ``k`` optimizer steps of SWA (SWALR's value after ``k`` of its steps)."""
    t = max(0.0, min(1.0, k / max(1, anneal_steps)))
    alpha = (1 - math.cos(math.pi * t)) / 2 if strategy == "cos" else t
    return target_lr * alpha + start_lr * (1 - alpha)


class SWA(Callback):
    """Stochastic weight averaging over the end of the run.

    Args:
        start: when averaging starts: optimizer steps, ``"8ep"`` or a share of the run
            (``"75%"``).
        lr: the SWA learning rate (each group gets ``lr × its lr_mult``); None keeps each
            group's LR at ``start``.
        anneal: how long the LR takes to reach ``lr`` (a duration; 0 jumps at once).
        anneal_strategy: ``"cos"`` or ``"linear"``.
        update_bn: recompute batch-norm statistics at the end (when the model has batch norm).

    Example:
        >>> trainer = Trainer(model, loss="mse", max_epochs=20,
        ...                   callbacks=[SWA(start="75%", lr=0.01, anneal="2ep")])
    """

    def __init__(
        self, start: Any = "75%", lr: float | None = None, anneal: Any = 0,
        anneal_strategy: str = "cos", update_bn: bool = True,
    ):
        from traincraft.durations import parse_duration

        parse_duration(start, "swa.start")
        parse_duration(anneal, "swa.anneal")
        if anneal_strategy not in STRATEGIES:
            raise TraincraftError(f"swa anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        if lr is not None and not float(lr) > 0:
            raise TraincraftError(f"swa lr must be > 0, got {lr}")
        self.start, self.lr, self.anneal = start, lr, anneal
        self.anneal_strategy, self.update_bn = anneal_strategy, bool(update_bn)
        self.start_step = self.anneal_steps = 0
        self.start_lrs: list[float] | None = None  # each group's LR when SWA began
        self.averaged: Any = None  # torch.optim.swa_utils.AveragedModel
        self._loaded: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return self.start_lrs is not None

    # ------------------------------------------------------------------ events

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.optim.swa_utils import AveragedModel

        from traincraft.durations import duration_steps

        if trainer.keeps_best:
            raise TraincraftError(
                "swa and early stopping's restore_best both choose the final weights; set "
                "early_stopping restore_best: false (early stopping may still end the run)"
            )
        spe, total = trainer.state.steps_per_epoch, trainer.state.max_steps
        self.start_step = duration_steps(self.start, "swa.start", steps_per_epoch=spe, total_steps=total)
        self.anneal_steps = duration_steps(self.anneal, "swa.anneal", steps_per_epoch=spe, total_steps=total)
        if total and self.start_step > total:
            raise TraincraftError(
                f"swa.start {self.start!r} is step {self.start_step:,}, after the run's last step ({total:,}): "
                "averaging would never start; start earlier (e.g. '75%') or train longer"
            )
        self.averaged = AveragedModel(trainer.model)
        if self._loaded is not None:  # a resumed run
            self.start_lrs = self._loaded["start_lrs"]
            if self.active:
                self.start_step = int(self._loaded["start_step"])
            if self._loaded["averaged"] is not None:
                self.averaged.load_state_dict(self._loaded["averaged"])
            self._loaded = None
            if self.active:
                trainer.schedule.take_over(lambda step: self._set_lrs(trainer))
        else:
            self.start_lrs = None
            if self.start_step <= trainer.state.step:
                self._begin(trainer)

    def on_step_end(self, trainer: Trainer) -> None:
        if not self.active and trainer.state.step >= self.start_step:
            self._begin(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self.active:
            self.averaged.update_parameters(trainer.model)

    def final_weights(self, trainer: Trainer) -> tuple[str, Any] | None:
        """The average, offered as the run's final weights when the run ended by itself (an
        interrupted run keeps its live weights, so that it resumes exactly)."""
        if trainer.state.stop_reason in ("interrupted", "terminated", None) or self.averaged is None:
            return None
        return "swa", lambda: self._put_in(trainer)

    def _put_in(self, trainer: Trainer) -> None:
        averaged = int(self.averaged.n_averaged)
        if averaged == 0:
            trainer.log(f"SWA: the run ended before averaging started (step {self.start_step}); weights unchanged")
            return
        self.copy_to(trainer.model)
        if self.update_bn and _has_batch_norm(trainer.model):
            recompute_batch_norm(trainer)
        figures = trainer.validate() if trainer.has_validation_data else {}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in figures.items())
        trainer.log(f"SWA: the model holds the average of {averaged} epochs' weights" + (f"; {shown}" if shown else ""))
        if trainer.run_dir is not None and trainer.is_main_process and not trainer.run_complete:
            from traincraft.checkpoint import save_weights
            from traincraft.files import atomic_write_text

            folder = Path(trainer.run_dir)
            save_weights(trainer.model, folder / "best.safetensors")
            best = {"epoch": trainer.state.epoch, "step": trainer.state.step, "swa": True,
                    "epochs_averaged": averaged, **figures}
            atomic_write_text(folder / "best.json", json.dumps(best, indent=2))

    # ------------------------------------------------------------------ pieces

    def _begin(self, trainer: Trainer) -> None:
        self.start_step = trainer.state.step  # the anneal counts from here
        self.start_lrs = [float(group["lr"]) for group in trainer.optimizer.param_groups]
        # The anneal is a phase of the schedule from here: it sets the LRs after every step.
        trainer.schedule.take_over(lambda step: self._set_lrs(trainer))
        trainer.log(f"SWA: averaging from step {trainer.state.step} (epoch {trainer.state.epoch + 1})")

    def _set_lrs(self, trainer: Trainer) -> None:
        assert self.start_lrs is not None
        k = trainer.state.step - self.start_step
        groups = trainer.optimizer.param_groups
        while len(self.start_lrs) < len(groups):  # a group unfrozen after SWA began
            self.start_lrs.append(float(groups[len(self.start_lrs)]["lr"]))
        for group, start_lr in zip(groups, self.start_lrs):
            target = start_lr if self.lr is None else self.lr * float(group.get("lr_mult", 1.0))
            group["lr"] = swa_lr(k, start_lr, target, self.anneal_steps, self.anneal_strategy)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Put the averaged parameters into ``model``."""
        for live, average in zip(model.parameters(), self.averaged.module.parameters()):
            live.copy_(average)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        averaged = None
        if self.averaged is not None and self.active:
            averaged = {k: v.detach().cpu() for k, v in self.averaged.state_dict().items()}
        return {"start_lrs": self.start_lrs, "start_step": self.start_step, "averaged": averaged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._loaded = dict(state)


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recompute_batch_norm(trainer: Trainer) -> None:
    """Batch-norm running statistics recomputed over one pass of the training data, as
    ``torch.optim.swa_utils.update_bn`` does (cumulative average, train mode, no gradients)."""
    from traincraft import distributed
    from traincraft.finetune.freezing import kept_in_eval

    model = trainer.model
    # Layers a freezer holds in eval mode keep their statistics (they would not rebuild them).
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and not kept_in_eval(m)]
    momenta = {}
    for module in norms:
        module.reset_running_stats()
        momenta[module] = module.momentum
        module.momentum = None
    was_training = model.training
    model.train()
    try:
        with trainer.stepper.autocast():
            for inputs, _ in trainer.train_batches.epoch(0):
                trainer.forward(trainer.on_device(inputs))
    finally:
        for module, momentum in momenta.items():
            module.momentum = momentum
        model.train(was_training)
    if trainer.world_size > 1:  # each process saw its own shard: rank 0's statistics for all
        for module in norms:
            distributed.broadcast_weights(module)
