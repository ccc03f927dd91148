"""The Trainer: fit, evaluate, predict. The loop reads top to bottom."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from traincraft import distributed, files, losses, metrics, optim, schedules
from traincraft.callbacks.base import Callback
from traincraft.callbacks.checkpoint import Checkpoint
from traincraft.callbacks.early_stopping import EarlyStopping
from traincraft.callbacks.progress import ProgressBar
from traincraft.data import (
    Batches,
    TensorBatches,
    describe,
    make_batches,
    make_predict_batches,
    map_tensors,
    num_samples,
    split_off,
    to_device,
)
from traincraft.device import resolve_device
from traincraft.errors import ModelError, TraincraftError
from traincraft.finetune.plan import Finetuning
from traincraft.history import History
from traincraft.loggers import CSVLogger
from traincraft.metrics import RunningMeans
from traincraft.penalties import Penalty
from traincraft.seeding import (
    new_seed,
    rng_state,
    seed_everything,
    set_deterministic,
    set_rng_state,
)
from traincraft.state import TrainState
from traincraft.step import NonFiniteError, Stepper


class Trainer:
    """Trains a ``torch.nn.Module`` with the right strategies.

    Args:
        model: any ``nn.Module``; it is moved to ``device``.
        loss: a name (``"cross_entropy"``), a dict of keyword arguments (``{"name": "huber",
            "delta": 0.5}``), a list of weighted terms, an ``nn.Module`` or a callable
            ``(pred, target) -> Tensor``. See :mod:`traincraft.losses`.
        optimizer: a name, a dict, or a callable taking parameter groups. Default ``"adamw"``.
        lr: base learning rate (each parameter group's ``lr_mult`` multiplies it).
        weight_decay: the optimizer's own decay (decoupled for AdamW); None keeps its default.
            Biases and normalisation parameters are exempt (``decay_exclude="auto"``).
        decay_exclude: ``"auto"``, glob patterns of parameter names, or None.
        param_groups: per-pattern overrides, e.g. ``[{"params": "backbone.*", "lr_mult": 0.1}]``.
        l1, l2: coefficients of ``l1·Σ|w|`` and ``l2·Σw²`` added to the loss (``train_penalty``).
        penalty_exclude: parameters the penalties skip: ``"auto"`` (biases, norms, 1-D) or globs.
        metrics: names (``"accuracy"``, ``"rmse"``, ...) or objects with update/compute/reset.
        max_epochs: epochs to train (training may stop earlier).
        max_steps: optimizer steps to train at most.
        batch_size: samples per micro-batch (ignored for a DataLoader, which batches itself).
        val_split: share of the training data held out for validation when ``val`` is None.
        shuffle: reshuffle the training data every epoch (seeded).
        accumulate: micro-batches per optimizer step.
        precision: ``"32"``, ``"bf16"`` or ``"fp16"``.
        clip_grad_norm: clip the total gradient norm (``clip_norm_type``) once per step.
        clip_grad_value: clip every gradient element to ``[-v, v]`` once per step.
        on_nonfinite: a non-finite loss or gradient: ``"raise"`` (checked at progress refreshes and
            epoch ends, at no cost per step), ``"skip"`` the step, or ``"rollback"`` to the last good
            weights (taken every ``rollback_every`` steps) with the LR times ``rollback_lr_factor``,
            at most ``max_rollbacks`` times. skip and rollback check every step (one host read).
        compile: run the forward pass through ``torch.compile`` (saved weights keep plain keys).
        init_from: start from trained weights: a run folder, ``.safetensors``, ``.ckpt`` or a
            ``.pt`` state dict. Wrapper prefixes are stripped; keys missing, unexpected or of
            another shape (a new head) are skipped and listed in one line.
        finetune: ``{"freeze": [globs], "train_bn": False, "unfreeze": [{"at": "2ep", "params":
            globs, "lr_mult": 0.1}], "gradual": {"groups": [...], "every": "1ep"}, "lr_mult":
            {glob: mult}, "layer_decay": 0.75, "strict": False, "skip": [globs]}``; see
            ``docs/finetuning.md``.
        ema: an exponential moving average of the weights: True, a decay (``0.999``), a dict of
            :class:`~traincraft.callbacks.ema.EMA` arguments, or an ``EMA``.
        swa: stochastic weight averaging: a dict of :class:`~traincraft.callbacks.swa.SWA`
            arguments (``{"start": "75%", "lr": 0.01, "anneal": "5ep"}``) or an ``SWA``.
        schedule: the learning-rate schedule: a name, ``{"name": "cosine", "warmup": "5%", ...}``,
            or a function building a torch scheduler from the optimizer. Counted in optimizer
            steps; durations may be steps, ``"3ep"`` or ``"10%"``. See :mod:`traincraft.schedules`.
        schedule_interval: ``"step"`` or ``"epoch"`` for a torch scheduler you bring.
        callbacks: :class:`traincraft.Callback` objects, called in the order given.
        device: ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda:1"``, ...
        seed: seeds python, numpy, torch and the data order; None draws one (see ``trainer.seed``).
        deterministic: use torch's deterministic algorithms.
        gc_every: Python's automatic garbage collection is off during ``fit``; its young
            generations are collected every ``gc_every`` optimizer steps and after each epoch
            (collections then never land in the middle of a step, nor on one process of several
            at a time). DataLoader workers forked meanwhile keep automatic collection. None
            leaves the automatic collection on.
        sync_batchnorm: under several processes (CUDA), turn batch-norm layers into
            ``SyncBatchNorm``: statistics over the global batch. See ``docs/distributed.md``.
        dist_timeout: seconds a process waits for the others (to join, in a collective) before it
            stops with an error, e.g. when another process died.
        run_dir: a folder for ``metrics.csv``, checkpoints and the best weights; None writes no files.
        checkpoint: with a ``run_dir``: True for the default :class:`~traincraft.callbacks.checkpoint.Checkpoint`,
            a dict of its arguments (``{"every_n_steps": 500, "keep_last": 3}``), or False for none.
        loggers: with a ``run_dir``: ``"tensorboard"``, ``"mlflow"`` (or ``{"name": ..., **kwargs}``,
            or logger callbacks); ``metrics.csv`` is always written.
        report: with a ``run_dir``: plots in ``plots/`` and ``report.html`` at the end of ``fit``.
            Off by default in Python (drawing the plots takes 0.3-1 s per fit); ``traincraft
            fit`` and ``Trainer.from_recipe`` turn it on. ``traincraft report RUN_DIR`` builds it
            later from the run folder.
        progress: show a progress bar (a line per epoch when output is not a terminal).

    Example:
        >>> trainer = Trainer(model, loss="cross_entropy", metrics=["accuracy"], max_epochs=30,
        ...                   callbacks=[EarlyStopping(patience=5)], seed=0)
        >>> history = trainer.fit((X_train, y_train), val=(X_val, y_val))
        >>> trainer.evaluate((X_test, y_test))
        {'loss': 0.05, 'accuracy': 0.98}
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss: Any,
        optimizer: Any = "adamw",
        lr: float = 1e-3,
        weight_decay: float | None = None,
        decay_exclude: str | Sequence[str] | None = "auto",
        param_groups: Sequence[dict[str, Any]] | None = None,
        l1: float = 0.0,
        l2: float = 0.0,
        penalty_exclude: str | Sequence[str] | None = "auto",
        metrics: Sequence[Any] = (),
        max_epochs: int = 10,
        max_steps: int | None = None,
        batch_size: int = 32,
        val_split: float | None = None,
        shuffle: bool = True,
        accumulate: int = 1,
        precision: str | int = "32",
        clip_grad_norm: float | None = None,
        clip_norm_type: float = 2.0,
        clip_grad_value: float | None = None,
        on_nonfinite: str = "raise",
        rollback_every: int = 100,
        rollback_lr_factor: float = 0.5,
        max_rollbacks: int = 3,
        compile: bool = False,
        init_from: str | Path | None = None,
        finetune: dict[str, Any] | None = None,
        ema: Any = None,
        swa: Any = None,
        schedule: Any = None,
        schedule_interval: str | None = None,
        callbacks: Sequence[Callback] = (),
        device: str | torch.device = "auto",
        seed: int | None = None,
        deterministic: bool = False,
        gc_every: int | None = 1000,
        sync_batchnorm: bool = False,
        dist_timeout: float = distributed.DEFAULT_TIMEOUT,
        run_dir: str | Path | None = None,
        checkpoint: dict[str, Any] | bool = True,
        loggers: Sequence[Any] = (),
        report: bool = False,
        progress: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise TraincraftError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        _check_whole(max_epochs=max_epochs, batch_size=batch_size, accumulate=accumulate, max_steps=max_steps,
                     rollback_every=rollback_every, max_rollbacks=max_rollbacks)
        _check_positive(max_epochs=max_epochs, batch_size=batch_size, lr=lr)
        if max_steps is not None:
            _check_positive(max_steps=max_steps)
        if seed is not None:
            _check_whole(seed=seed)
            if not 0 <= int(seed) < 2**63:
                raise TraincraftError(f"seed must be between 0 and 2**63 - 1, got {seed}")
        self.device = resolve_device(device)
        # Under torchrun: join the other processes; each one takes its own GPU (distributed.py).
        self.world = distributed.join(self.device, timeout=dist_timeout)
        self.device, self.rank, self.world_size = self.world.device, self.world.rank, self.world.world_size
        self.dist_timeout = float(dist_timeout)
        if gc_every is not None:
            _check_positive(gc_every=gc_every)
        self.gc_every = None if gc_every is None else int(gc_every)
        self._stop_vote: distributed.StopVote | None = None  # several processes: made by fit()
        model, given_ddp = distributed.split_wrapper(model)  # a DDP built by the user keeps its options
        if sync_batchnorm:
            model = distributed.convert_sync_batchnorm(model, self.world)
        self.model = model.to(self.device)
        self.loss_fn = losses.build(loss).to(self.device)  # class weights are buffers
        self.metrics = metrics_module_set(metrics, probabilities=losses.takes_probabilities(loss))
        self.finetuning = Finetuning(self.model, init_from=init_from, **(finetune or {}))
        # Every rule serves the groups unfreezing adds; the optimizer starts with those that
        # match a trainable parameter.
        self._group_rules = [*(param_groups or []), *self.finetuning.rules]
        self.optimizer = optim.build(
            optimizer, self.model, lr=lr, weight_decay=weight_decay, decay_exclude=decay_exclude,
            param_groups=[*(param_groups or []),
                          *self.finetuning.group_rules(self.model, before=param_groups or [])] or None,
        )
        self._decay_exclude, self._penalty_args = decay_exclude, dict(l1=l1, l2=l2, exclude=penalty_exclude)
        self.penalty = Penalty(self.model, **self._penalty_args)
        self._penalize = bool(self.penalty)  # read at every step: the flag, not the check
        self.stepper = Stepper(
            self.optimizer, self.model.parameters(), device=self.device, accumulate=accumulate,
            precision=precision, clip_grad_norm=clip_grad_norm, clip_norm_type=clip_norm_type,
            clip_grad_value=clip_grad_value, on_nonfinite=on_nonfinite,
        )
        _check_positive(rollback_every=rollback_every, rollback_lr_factor=rollback_lr_factor)
        self.on_nonfinite, self.rollback_every = on_nonfinite, int(rollback_every)
        self.rollback_lr_factor, self.max_rollbacks = float(rollback_lr_factor), int(max_rollbacks)
        # The compiled module is only the forward pass: state dicts stay the plain module's.
        self.forward_model = torch.compile(self.model) if compile else self.model
        # Evaluation never goes through DDP: no collective, so shards of any size are fine.
        self.eval_model, self.ddp, self._compile = self.forward_model, None, compile
        if self.world.distributed:
            self._wrap_for_processes(given_ddp)
        self.schedule_spec, self.schedule_interval = schedule, schedule_interval
        self.schedule: Any = None  # built at the start of fit, when the run's length is known
        self.max_epochs, self.max_steps = int(max_epochs), max_steps
        self.batch_size, self.val_split, self.shuffle = int(batch_size), val_split, shuffle
        self.seed = new_seed() if seed is None else int(seed)
        self.deterministic = deterministic
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = ProgressBar() if progress else None
        # The progress bar comes first, so that an epoch's line precedes what callbacks say of it;
        # then the checkpoint, so that a resume file is written before early stopping restores weights.
        self.callbacks: list[Callback] = [*([self.progress] if self.progress else [])]
        if self.run_dir is not None and checkpoint is not False and not any(
            isinstance(c, Checkpoint) for c in callbacks
        ):
            self.callbacks.append(_made(Checkpoint, "checkpoint", self.run_dir,
                                        **(checkpoint if isinstance(checkpoint, dict) else {})))
        self.callbacks.extend(_averaging_callbacks(ema, swa))
        self.callbacks.extend(callbacks)
        if self.run_dir is not None:
            from traincraft import loggers as loggers_module
            from traincraft.report import RunReport

            # After the user's callbacks: results.json exists when the report is built.
            if report and not any(isinstance(c, RunReport) for c in callbacks):
                self.callbacks.append(RunReport(self.run_dir))
            self.callbacks.extend(loggers_module.build(list(loggers), self.run_dir))
            self.callbacks.append(CSVLogger(self.run_dir))
        elif loggers:
            raise TraincraftError("loggers need a run_dir to write to")
        self.state = TrainState()
        self.history = History()
        self._adapt_target: Callable[[Any, Any], Any] | None = None
        self._step_handlers: dict[str, list[Callable[[Trainer], Any]]] = {}
        self._sums = RunningMeans(self.device)
        self.data: Any = None  # the recipe's prepared data (from_recipe), used when fit() gets none
        self.recipe: Any = None
        # How an interrupted run is continued, said when it stops (the command line sets its own).
        self.resume_hint: str | None = None
        self.run_complete = False
        # True while fit() ends by an exception (a second Ctrl-C, an error): the state may be in
        # the middle of a step, and on_fit_end must not save it for a resume.
        self.aborted = False
        for line in self.finetuning.messages:
            self.log(line)
        if self.stepper.precision == "fp16" and self.device.type == "cpu":
            self.log("warning: precision fp16 on a CPU runs 12-50x slower than float32 (CPUs have no fast "
                     "float16 kernels, and the loss scaler adds work): use precision bf16 or 32 here")

    @classmethod
    def from_recipe(
        cls, recipe: Any, *, run_dir: str | Path | None = None, progress: bool = True,
        callbacks: Sequence[Callback] = (), checkpoint: bool = True, resuming: bool = False,
    ) -> Trainer:
        """Build data, model and trainer from a recipe (a path, a template name, a dict or a
        :class:`~traincraft.recipe.Recipe`); ``fit()`` then trains on the recipe's data.
        ``resuming=True`` when ``fit(resume=...)`` follows: the run folder's checkpoint gives the
        weights, and what the run started from (``init_from``, ``weights:``) is not read again.

        Example:
            >>> trainer = Trainer.from_recipe("sunspots", run_dir="runs/try")
            >>> history = trainer.fit()
        """
        from traincraft.run import trainer_from_recipe

        return trainer_from_recipe(
            recipe, run_dir=run_dir, progress=progress, callbacks=list(callbacks), checkpoint=checkpoint,
            resuming=resuming,
        )

    # ------------------------------------------------------------------ public API

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def fit(
        self, train: Any = None, val: Any = None, *, resume: str | Path | None = None, overwrite: bool = False,
        allow_changes: bool = False,
    ) -> History:
        """Train on ``train``, validating on ``val`` after every epoch.

        ``train``/``val``: a tuple ``(X, y)`` of tensors or numpy arrays (``X`` may be a tuple or a
        dict of them, passed as ``model(*X)`` / ``model(**X)``), a ``Dataset`` yielding
        ``(inputs, target)``, or a ``DataLoader``. Each call is a new run over the current weights
        (the optimizer keeps its state). With no ``train``, the recipe's data is used.
        ``resume`` (a run folder or a ``.ckpt`` file) continues an interrupted run exactly: the same
        next batch, learning rate, random numbers and early-stopping counters. ``resume="auto"``
        continues the ``run_dir``'s newest checkpoint when it has one and starts the run otherwise
        (what a job restarted by torchrun or a cluster scheduler wants). A run that ended (early
        stopping, its limits, a callback) is not trained again: resuming it finishes only what its
        end left undone (the test evaluation, the report), or nothing.
        ``overwrite``: a ``run_dir`` that already holds another run is refused unless True (its
        files are then removed first). ``allow_changes``: resume although the recipe differs from
        the one the checkpoint was written with (other than its limits).

        Order of events::

            on_fit_start
            while not stopped:                       # max_epochs, max_steps, a callback, Ctrl-C
                on_epoch_start
                for each micro-batch (seeded order of this epoch):
                    forward, loss (+ L1/L2 penalty), backward × samples
                    every `accumulate` micro-batches, and at the epoch's last one:
                        unscale, average over the window, clip
                        on_before_step
                        optimizer.step(), zero_grad      # the fp16 scaler may skip it
                        state.step += 1
                        on_step_end
                        [several processes: vote on a stop asked on one of them]
                [several processes: agree on stopping; sum the epoch's sums over all of them]
                validate (eval mode, inference mode)    # exact sums over samples
                history row; on_validation_end         # state.metrics holds the epoch's figures
                [several processes: agree on stopping]
                on_epoch_end
                [several processes: agree on stopping]
            on_fit_end                                 # always; EarlyStopping restores the best weights

        Under torchrun (several processes) every process calls ``fit``; see ``docs/distributed.md``.

        Returns:
            The :class:`History` of the run.
        """
        if train is None:
            if self.data is None:
                raise TraincraftError("fit() needs training data: fit((X, y)) or Trainer.from_recipe(...)")
            train, val = self.data.train, self.data.val if val is None else val
        if self.val_split and val is None:
            train, val = split_off(train, self.val_split, seed=self.seed)
        train_batches = self._batches(train, shuffle=self.shuffle, what="train", training=True)
        val_batches = self._batches(val, shuffle=False, what="val") if val is not None else None
        resume = self._resume_source(resume)
        if resume is None:
            self._claim_run_dir(overwrite)
        self._start_run(train_batches, val_batches)
        if resume is not None:
            self._resume(resume, allow_changes=allow_changes)
        if self.progress is not None and not self.state.should_stop:
            self.log(self._summary(train_batches, val_batches))
        with (
            self._stop_on_interrupt(),
            distributed.failures_explained(self.world, self.dist_timeout, self._stop_vote),
            _collecting_garbage_ourselves(self.gc_every is not None),
        ):
            self.aborted = True  # until the loop ends between two steps (not a second Ctrl-C, an error)
            try:
                self._unfreeze_due()
                self._emit("on_fit_start")
                while not self.state.should_stop:
                    self._run_epoch(train_batches, val_batches)
                self.aborted = False
            finally:
                ended = False
                try:
                    self._emit("on_fit_end")
                    ended = not self.aborted
                finally:
                    self._finish_run(mark_complete=ended)
        distributed.finish_together(self.world, self.dist_timeout)  # a hung process is named, not waited for
        return self.history

    def evaluate(self, data: Any) -> dict[str, float]:
        """Loss and metrics over ``data``, exact over its samples: ``{"loss": ..., "accuracy": ...}``."""
        return self._evaluate(self._batches(data, shuffle=False, what="evaluate data"), prefix="")

    def predict(self, data: Any) -> Any:
        """The model's outputs for ``data`` (inputs alone, a Dataset or a DataLoader), on the CPU."""
        outputs: list[Any] = []
        batches = make_predict_batches(data, batch_size=self.batch_size)
        with self._eval_mode():
            for inputs, _ in batches.epoch(0):
                pred = self._forward(to_device(inputs, self.device))
                outputs.append(map_tensors(lambda t: t.float().cpu() if t.is_floating_point() else t.cpu(), pred))
        return _concatenate(outputs)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: weights, optimizer, schedule, scaler,
        callbacks, counters, history, the epoch's running sums and every random generator."""
        from traincraft import __version__
        from traincraft.checkpoint import plain_state_dict

        state = {
            "traincraft": __version__,
            "seed": self.seed,
            "recipe_hash": self.recipe.fingerprint() if self.recipe is not None else None,
            "model": plain_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "stepper": self.stepper.state_dict(),
            "callbacks": {key: cb.state_dict() for key, cb in self._keyed_callbacks()},
            "state": self.state.state_dict(),
            "history": self.history.state_dict(),
            "epoch_sums": self._sums.state_dict(),
            "metrics": self.metrics.state_dict(),
            "step_lrs": list(self._step_lrs),
            "unfreeze": self.finetuning.plan.state_dict(),
            "rng": rng_state(),
            # The random state at the start of the epoch under way, restored on a mid-epoch resume
            # before anything that draws at an epoch's start (callbacks, the data's iterator).
            "epoch_rng": self._epoch_rng if self.state.batch_in_epoch else None,
            "world_size": self.world_size,
            "recipe": self.recipe.to_yaml() if self.recipe is not None else None,
        }
        if self.world_size > 1:  # every process's own random generators and partial epoch sums
            state["processes"] = distributed.all_gather_objects({key: state[key] for key in PER_PROCESS})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (called by ``fit(resume=...)`` after the run is set up)."""
        from traincraft.checkpoint import unwrap_key

        state = self._own_part(state)
        self.model.load_state_dict({unwrap_key(k): v for k, v in state["model"].items()})
        if state.get("unfreeze"):  # the optimizer's groups must be those of the saved run
            self._unfreeze_until(int(state["unfreeze"]["done"]))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None and state.get("schedule") is not None:
            self.schedule.load_state_dict(state["schedule"])
        self.stepper.load_state_dict(state["stepper"])
        saved = state.get("callbacks", {})
        for key, callback in self._keyed_callbacks():
            if key in saved:
                callback.load_state_dict(saved[key])
        self.state.load_state_dict(state["state"])
        self.history.load_state_dict(state["history"])
        self._sums.load_state_dict(state["epoch_sums"])
        self.metrics.load_state_dict(state["metrics"])
        self._step_lrs = list(state["step_lrs"])
        # Applied when the next epoch starts (_run_epoch): after on_fit_start, and around the
        # creation of the data's iterator on a mid-epoch resume.
        self._pending_rng = (state.get("epoch_rng") or state["rng"], state["rng"] if state.get("epoch_rng") else None)

    def _own_part(self, state: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint as this process continues it: its own random generators and sums."""
        from traincraft.checkpoint import CheckpointError

        saved = int(state.get("world_size", 1))
        if saved != self.world_size:
            raise CheckpointError(
                f"the checkpoint was written by {saved} process(es) and this run has {self.world_size}: "
                f"resume with {saved} (traincraft resume RUN_DIR --nproc {saved}); each process's data "
                "shard and random state are in it"
            )
        return {**state, **state["processes"][self.rank]} if saved > 1 else state

    def _keyed_callbacks(self) -> list[tuple[str, Callback]]:
        """Callbacks under stable keys (class name, numbered when a class appears twice)."""
        counts: dict[str, int] = {}
        keyed = []
        for callback in self.callbacks:
            name = type(callback).__name__
            counts[name] = counts.get(name, 0) + 1
            keyed.append((name if counts[name] == 1 else f"{name}-{counts[name]}", callback))
        return keyed

    def _resume_source(self, resume: str | Path | None) -> str | Path | None:
        """What ``fit(resume=...)`` continues: ``"auto"`` becomes the run folder when it holds a
        checkpoint, else None (a new run)."""
        if resume is None or str(resume) != "auto":
            return resume
        if self.run_dir is None:
            raise TraincraftError('resume="auto" continues the run in run_dir: give the Trainer a run_dir')
        from traincraft.checkpoint import checkpoint_candidates

        found = bool(checkpoint_candidates(self.run_dir))
        if self.world_size > 1:  # rank 0's file system decides for all
            found = bool(distributed.broadcast_object(found))
        if not found:
            self._claimed_run_dir = self.run_dir  # nothing to lose: a start before the first checkpoint
            return None
        return self.run_dir

    def _claim_run_dir(self, overwrite: bool) -> None:
        """A new run does not write into a folder holding another run, unless ``overwrite``."""
        if self.run_dir is None or getattr(self, "_claimed_run_dir", None) == self.run_dir:
            return
        from traincraft.runfolder import claim

        problem = claim(self.run_dir, overwrite=overwrite) if self.is_main_process else None
        if self.world_size > 1:
            problem = distributed.broadcast_object(problem)
        if problem is not None:
            raise TraincraftError(problem)
        self._claimed_run_dir = self.run_dir

    def _resume(self, source: str | Path, allow_changes: bool = False) -> None:
        from traincraft.checkpoint import CheckpointError, find_resume_checkpoint, mismatch
        from traincraft.runfolder import check_recipe, clean_leftovers, is_complete

        if self.run_dir is not None and self.is_main_process:
            clean_leftovers(self.run_dir)
        path, state = find_resume_checkpoint(source, warn=self.log)
        wrong = mismatch(self.model, state.get("model", {}))
        if wrong is not None:
            raise CheckpointError(f"{path} holds the weights of another model: {wrong}")
        if self.recipe is not None and not allow_changes:
            check_recipe(state.get("recipe"), self.recipe, path)
        if self.run_dir is not None and self.is_main_process and Path(source).is_dir():
            from traincraft.runfolder import rebuild_mirrors

            rebuilt = rebuild_mirrors(source, state, warn=self.log)  # what a kill kept from the disk
            if rebuilt:
                self.log(f"Wrote {', '.join(rebuilt)} again from {path}")
        self.load_state_dict(state)
        self._claimed_run_dir = self.run_dir
        if self.state.stop_reason in ("interrupted", "terminated", None) or self._limits_raised():
            # Interrupted, or finished by limits that have been raised since: it goes on.
            self.state.should_stop, self.state.stop_reason = False, None
        else:
            self.state.should_stop = True  # it ended: only what its end left undone is done
            folder = Path(source) if Path(source).is_dir() else None
            self.run_complete = folder is not None and is_complete(folder, self.state.step)
            what = "nothing to do" if self.run_complete else "finishing what its end left undone"
            self.log(f"The run in {source} ended ({self.state.stop_reason} at epoch {self.state.epoch}, "
                     f"step {self.state.step}): {what}")
            return
        if self.state.epoch >= self.max_epochs:
            self.state.request_stop("max_epochs")
        if self.max_steps is not None and self.state.step >= self.max_steps:
            self.state.request_stop("max_steps")
        self.log(
            f"Resuming from {path}: epoch {self.state.epoch + 1}, batch {self.state.batch_in_epoch}, "
            f"step {self.state.step}"
        )

    def _limits_raised(self) -> bool:
        """A run that its limits ended, resumed with higher limits."""
        reason = self.state.stop_reason
        if reason == "max_epochs":
            return self.state.epoch < self.max_epochs and (self.max_steps is None or self.state.step < self.max_steps)
        if reason == "max_steps":
            return self.max_steps is None or self.state.step < self.max_steps
        return False

    def _mark_complete(self) -> None:
        """A run that ended by itself and whose end (on_fit_end) went through: marked in its
        folder, so that resuming it does nothing."""
        if (self.run_dir is None or not self.is_main_process or getattr(self, "run_complete", False)
                or self.state.stop_reason in ("interrupted", "terminated", None)
                or not any(isinstance(c, Checkpoint) for c in self.callbacks)):
            return
        from traincraft.runfolder import mark_complete

        mark_complete(self.run_dir, self.state)

    def log(self, message: str) -> None:
        """Print one line on stderr (main process only) without breaking the progress bar."""
        if not self.is_main_process:
            return
        if self.progress is not None:
            self.progress.write(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def running_figures(self) -> dict[str, float]:
        """The current epoch's figures so far (reads the device: call it rarely)."""
        return {"loss": self._sums.mean("loss"), "lr": self.lr}

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------ the loop

    def _run_epoch(self, train_batches: Batches, val_batches: Batches | None) -> None:
        started = time.perf_counter()
        epoch_rng, resumed_rng = self._pending_rng or (None, None)
        self._pending_rng = None
        if epoch_rng is not None:  # a resumed run: the random state as this epoch started
            set_rng_state(epoch_rng)
        self._epoch_rng = rng_state()
        self._emit("on_epoch_start")
        # The iterator is set up now (a DataLoader draws its seeds, a mid-epoch resume replays
        # what its workers did), then a mid-epoch resume takes the random state it saved.
        batches = train_batches.epoch(self.state.epoch, start=self.state.batch_in_epoch)
        if resumed_rng is not None:
            set_rng_state(resumed_rng)
        figures = self._train_epoch(train_batches, batches)
        if self.state.stop_reason in ("interrupted", "terminated"):
            return  # a partial epoch: no validation, no history row
        # The epoch's files (checkpoint, best weights, metrics.csv) reach the disk while the
        # next epoch trains; their writer thread starts once they are all serialized.
        with files.deferred():
            self._end_epoch(val_batches, figures, started)
        if self.gc_every is not None:
            gc.collect(1)

    def _end_epoch(self, val_batches: Batches | None, figures: dict[str, float], started: float) -> None:
        with self.evaluation_weights():  # the EMA's when it is validated, else the live ones
            if val_batches is not None:
                figures.update(self._evaluate(val_batches, prefix="val_"))
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
            self.state.metrics = figures
            row = {"epoch": self.state.epoch, "step": self.state.step, **self._lr_figures(), **figures}
            self.history.append({**row, "seconds": time.perf_counter() - started})
            self._emit("on_validation_end")
        if self.schedule.epoch_end(self.state.epoch, figures) and self.schedule.restore_best_on_reduce:
            self._restore_best("the schedule cut the learning rate")
        if self.state.epoch >= self.max_epochs:
            self.state.request_stop("max_epochs")
        self._agree_on_stop()  # checkpoints save (together) when a stop is due
        self._emit("on_epoch_end")
        self._agree_on_stop()

    def _train_epoch(self, batches: Batches, epoch_batches: Iterator[Any]) -> dict[str, float]:
        model, state, stepper, sums = self.model, self.state, self.stepper, self._sums
        model.train()
        if state.batch_in_epoch == 0:  # not a mid-epoch resume: a fresh epoch
            sums.reset()
            self.metrics.reset()
        on_device = isinstance(batches, TensorBatches)  # moved once, at the start of fit
        # Several processes: real samples per batch, here and over all (a stand-in batch has 0).
        shards, last = batches.shard_sizes() if self.world_size > 1 else None, len(batches) - 1
        for inputs, target in epoch_batches:
            if not on_device:
                inputs, target = to_device(inputs, self.device), to_device(target, self.device)
            index, samples = state.batch_in_epoch, num_samples(target)
            if shards is not None:
                samples = shards.local[index]
                if not stepper.pending:
                    stepper.window_total = shards.window_total(index, stepper.accumulate)
            given = target
            with stepper.micro_batch(last_of_epoch=index == last):
                with stepper.autocast():
                    pred = self._forward(inputs)
                    target = self._adapt(pred, target)
                    loss = self._loss(pred, target)
                    penalty = self.penalty() if self._penalize else None
                stepper.backward(loss if penalty is None else loss + penalty, samples)
            if self._closure_window is not None:  # L-BFGS re-evaluates the window in its step
                self._closure_window.append((self._loss_of(inputs, given), samples))
            sums.add("loss", loss, samples)
            if penalty is not None:
                sums.add("penalty", penalty, samples)
            for name, term in getattr(self.loss_fn, "last_terms", {}).items():
                sums.add(f"loss/{name}", term, samples)
            if samples or shards is None:
                self.metrics.update(pred, target)  # held detached
            state.batch_in_epoch += 1
            state.samples_seen += samples if shards is None else shards.total[index]
            if stepper.window_full():
                self._optimizer_step()
                if state.should_stop:
                    break
        if stepper.pending:  # the epoch's last, partial accumulation window
            self._optimizer_step()
        if self.on_nonfinite == "raise":
            self._check_finite()
        self._agree_on_stop()
        # Once per epoch, every process's sums: the same figures everywhere. Not for an epoch
        # that a signal cut short: its checkpoint keeps each process's own partial sums.
        if self.world_size > 1 and state.stop_reason not in ("interrupted", "terminated"):
            distributed.reduce_figures(sums, self.metrics)
        figures = sums.means(prefix="train_")
        if "train_grad_norm" in figures:
            figures["grad_norm"] = figures.pop("train_grad_norm")  # mean over the epoch's steps
        return {**figures, **_prefixed(self.metrics.compute(), "train_")}

    def _optimizer_step(self) -> None:
        stepper = self.stepper
        stepper.prepare()
        if stepper.check_every_step and not stepper.window_is_finite():
            self._recover_from_nonfinite()
            return
        self._emit("on_before_step")
        self._step_lrs = [_plain(group["lr"]) for group in self.optimizer.param_groups]
        grad_norm = stepper.grad_norm
        if self._closure_window is not None:
            window, self._closure_window = self._closure_window, []
            stepper.closure_step(window)
        elif not stepper.step():
            self.state.skipped_steps += 1  # the fp16 scaler found an overflow
            return
        if grad_norm is not None:  # of steps taken: a skipped fp16 step's gradients are inf by design
            self._sums.add("grad_norm", grad_norm, 1)
        self.state.step += 1
        if self.gc_every is not None and self.state.step % self.gc_every == 0:
            gc.collect(1)
        self.schedule.step_end(self.state.step)
        if self.state.step >= self._next_unfreeze:
            self._unfreeze_due()
        self._emit("on_step_end")
        if self._stop_vote is not None:
            self._stop_vote.after_step(self.state)
        if self.max_steps is not None and self.state.step >= self.max_steps:
            self.state.request_stop("max_steps")
        if self.on_nonfinite == "rollback" and self.state.step % self.rollback_every == 0:
            self._keep_good_weights()
        elif self.on_nonfinite == "raise" and time.monotonic() >= self._next_finite_check:
            self._check_finite()

    def _evaluate(self, batches: Batches, prefix: str) -> dict[str, float]:
        sums = RunningMeans(self.device)
        self.metrics.reset()
        with self._eval_mode(), self.stepper.autocast():
            for inputs, target in batches.epoch(0):
                inputs, target = to_device(inputs, self.device), to_device(target, self.device)
                pred = self._forward(inputs)
                target = self._adapt(pred, target)
                samples = num_samples(target)
                sums.add("loss", self._loss(pred, target), samples)
                for name, term in getattr(self.loss_fn, "last_terms", {}).items():
                    sums.add(f"loss/{name}", term, samples)
                self.metrics.update(pred, target)
        if self.world_size > 1:  # each process evaluated its own samples: sum them up
            distributed.reduce_figures(sums, self.metrics)
        return {**sums.means(prefix=prefix), **_prefixed(self.metrics.compute(), prefix)}

    # ------------------------------------------------------------------ pieces of the loop

    def _forward(self, inputs: Any) -> Any:
        model = self.forward_model if self.model.training else self.eval_model
        try:
            if isinstance(inputs, dict):
                return model(**inputs)
            if isinstance(inputs, tuple):
                return model(*inputs)
            return model(inputs)
        except TraincraftError:
            raise
        except Exception as err:
            raise ModelError(
                f"the model's forward failed on inputs {describe(inputs)}: {type(err).__name__}: {err}"
            ) from err

    def _loss_of(self, inputs: Any, target: Any) -> Callable[[], torch.Tensor]:
        """The micro-batch's mean loss (and penalty) at the current weights, computed anew each
        call: what a closure optimizer re-evaluates."""

        def loss() -> torch.Tensor:
            pred = self._forward(inputs)
            value = self._loss(pred, self._adapt(pred, target))
            return value + self.penalty() if self._penalize else value

        return loss

    def _adapt(self, pred: Any, target: Any) -> Any:
        # Shapes are checked once, on the first batch; later batches get the same cheap alignment.
        if self._adapt_target is None:
            self._adapt_target = losses.target_adapter(self.loss_fn, pred, target)
        return self._adapt_target(pred, target)

    def _loss(self, pred: Any, target: Any) -> torch.Tensor:
        try:
            return self.loss_fn(pred, target)
        except TraincraftError:
            raise
        except Exception as err:
            raise TraincraftError(
                f"the loss failed on prediction {describe(pred)} and target {describe(target)}: "
                f"{type(err).__name__}: {err}"
            ) from err

    def _batches(self, data: Any, *, shuffle: bool, what: str, training: bool = False) -> Batches:
        batches = make_batches(
            data, batch_size=self.batch_size, shuffle=shuffle, seed=self.seed,
            rank=self.rank, world_size=self.world_size, equal_steps=training, what=what,
        )
        if isinstance(batches, TensorBatches):
            batches.to(self.device)  # once: every batch is then a slice on the device
        return batches

    def _start_run(self, train_batches: Batches, val_batches: Batches | None) -> None:
        seed_everything(self.seed + self.rank)  # each process its own dropout and augmentation
        self._stop_vote = distributed.StopVote() if self.world_size > 1 else None
        if self.deterministic:
            set_deterministic(True)
        self.state = TrainState()
        self.history = History()
        self._adapt_target = None
        per_epoch = math.ceil(len(train_batches) / self.stepper.accumulate)
        self.state.steps_per_epoch = per_epoch
        total = self.max_epochs * per_epoch if per_epoch else 0
        self.state.max_steps = min(total, self.max_steps) if self.max_steps else total
        self.schedule = schedules.build(
            self.schedule_spec, self.optimizer, steps_per_epoch=per_epoch,
            total_steps=self.state.max_steps, schedule_interval=self.schedule_interval,
        )
        self.schedule.start()
        self.finetuning.plan.resolve(steps_per_epoch=per_epoch, total_steps=self.state.max_steps)
        self._next_unfreeze = self.finetuning.plan.next_step
        self._train_batches, self._val_batches = train_batches, val_batches
        self._cache_step_handlers()
        self._step_lrs = [_plain(group["lr"]) for group in self.optimizer.param_groups]
        self._next_finite_check, self._last_finite_step = time.monotonic() + 0.5, 0
        self._good: dict[str, Any] | None = None
        if self.stepper.closure_optimizer and self.world_size > 1:
            raise TraincraftError(
                f"optimizer {type(self.optimizer).__name__} re-evaluates the loss inside its step (a "
                "closure): not supported under several processes; train it in one process"
            )
        self._closure_window: list[Any] | None = [] if self.stepper.closure_optimizer else None
        self._epoch_rng: dict[str, Any] | None = None
        self._pending_rng: tuple[Any, Any] | None = None
        self.run_complete = False  # a resumed run whose end already went through
        if self.on_nonfinite == "rollback":
            self._keep_good_weights()
        if self.schedule.restore_best_on_reduce and self._best_keeper() is None:
            raise TraincraftError(
                "schedule restore_best_on_reduce needs EarlyStopping(restore_best=True): "
                "it keeps the best weights to go back to"
            )

    def _finish_run(self, mark_complete: bool = False) -> None:
        self.history.stop_reason = self.state.stop_reason
        self.history.best = self._best()
        if mark_complete:
            self._mark_complete()  # written with the run's last files, before fit waits for them
        try:
            files.wait()  # the run's files are in place when fit() returns
        except OSError:
            if self.state.stop_reason is not None:  # else an error of the run is on its way up
                raise

    # ------------------------------------------------------------------ fine-tuning

    def _unfreeze_due(self) -> None:
        for event in self.finetuning.plan.pop_due(self.state.step):
            self._unfreeze(event, quiet=False)
        self._next_unfreeze = self.finetuning.plan.next_step

    def _unfreeze_until(self, done: int) -> None:
        """Apply the plan's first ``done`` events, quietly: a resumed run's optimizer had their
        groups (the plan was resolved when the run was set up)."""
        plan = self.finetuning.plan
        while plan.done < done:
            plan.done += 1
            self._unfreeze(plan.events[plan.done - 1], quiet=True)
        self._next_unfreeze = plan.next_step

    def _unfreeze(self, event: Any, quiet: bool) -> None:
        """Make ``event``'s parameters trainable: new groups in the live optimizer and schedule."""
        named = self.finetuning.unfreeze(event.params)
        if not named:
            return
        defaults = self.optimizer.defaults  # the optimizer's own base LR and decay
        groups = optim.added_groups(
            self.model, named, lr=defaults["lr"], weight_decay=defaults.get("weight_decay"),
            decay_exclude=self._decay_exclude, param_groups=self._group_rules,
            lr_mult=event.lr_mult, prefix=event.label,
        )
        for group in groups:
            self.optimizer.add_param_group(group)
            if self.schedule is not None:
                self.schedule.add_group(self.optimizer.param_groups[-1])
        self.stepper.params.extend(p for _, p in named)
        if self.on_nonfinite == "rollback" and getattr(self, "_good", None) is not None:
            self._keep_good_weights()  # the optimizer has more groups now: so must its snapshot
        if self.ddp is not None:
            self._wrap_for_processes()
        self.penalty = Penalty(self.model, **self._penalty_args)
        self._penalize = bool(self.penalty)  # read at every step: the flag, not the check
        if not quiet:
            count = sum(p.numel() for _, p in named)
            mults = sorted({g["lr_mult"] for g in groups})
            self.log(
                f"Unfroze {len(named)} tensors ({count:,} parameters) matching "
                f"{', '.join(event.params)} after step {self.state.step} ({event.label}); "
                f"LR × {', '.join(f'{m:g}' for m in mults)}"
            )

    @contextlib.contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        """The weights validation measures and the best checkpoint keeps: an averaging
        callback's (EMA with ``evaluate``) when there is one, else the live weights."""
        with contextlib.ExitStack() as stack:
            for callback in self.callbacks:
                provider = getattr(callback, "evaluation_weights", None)
                if provider is not None:
                    stack.enter_context(provider(self))
            yield

    @property
    def has_validation_data(self) -> bool:
        return getattr(self, "_val_batches", None) is not None

    def validate(self) -> dict[str, float]:
        """Loss and metrics of the current weights on this run's validation data (``val_*``)."""
        if not self.has_validation_data:
            raise TraincraftError("validate() needs a fit() with validation data")
        return self._evaluate(self._val_batches, prefix="val_")

    @torch.no_grad()
    def recompute_batch_norm(self) -> None:
        """Batch-norm running statistics recomputed over one pass of the training data, as
        ``torch.optim.swa_utils.update_bn`` does (cumulative average, train mode, no gradients)."""
        from traincraft.finetune.freezing import kept_in_eval

        # Layers a freezer holds in eval mode keep their statistics (they would not rebuild them).
        norms = [m for m in self.model.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and not kept_in_eval(m)]
        momenta = {}
        for module in norms:
            module.reset_running_stats()
            momenta[module] = module.momentum
            module.momentum = None
        was_training = self.model.training
        self.model.train()
        try:
            with self.stepper.autocast():
                for inputs, _ in self._train_batches.epoch(0):
                    self._forward(to_device(inputs, self.device))
        finally:
            for module, momentum in momenta.items():
                module.momentum = momentum
            self.model.train(was_training)
        if self.world_size > 1:  # each process saw its own shard: rank 0's statistics for all
            for module in norms:
                distributed.broadcast_weights(module)

    # ------------------------------------------------------------------ non-finite values

    def _check_finite(self) -> None:
        """Raise when the loss or gradient norm went non-finite since the last check (reads the
        epoch's running sums, which a non-finite value poisons for good)."""
        self._next_finite_check = time.monotonic() + 0.5
        totals = self._sums.sums
        bad = [name for name in ("loss", "grad_norm") if name in totals and not math.isfinite(float(totals[name]))]
        if not bad:
            self._last_finite_step = self.state.step
            return
        params = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        what = "the loss" if "loss" in bad else "the gradient norm"
        where = f"parameters now non-finite: {', '.join(params[:5])}" if params else "the parameters are still finite"
        raise NonFiniteError(
            f"non-finite {what.removeprefix('the ')} in epoch {self.state.epoch + 1}, between optimizer steps "
            f"{self._last_finite_step + 1} and {self.state.step}; {where}. Lower the learning rate, "
            "clip gradients (clip_grad_norm), or use on_nonfinite='skip' or 'rollback'"
        )

    def _keep_good_weights(self) -> None:
        from traincraft.checkpoint import stage

        self._good = None  # never two snapshots at once
        self._good = stage({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()})

    def _recover_from_nonfinite(self) -> None:
        """``skip``: drop the window. ``rollback``: back to the last good weights, lower LR."""
        self.stepper.drop()
        if self._closure_window is not None:
            self._closure_window.clear()
        self.state.skipped_steps += 1
        where = f"epoch {self.state.epoch + 1}, after optimizer step {self.state.step}"
        if self.on_nonfinite == "skip":
            self.log(f"Non-finite loss or gradient in {where}: step skipped ({self.state.skipped_steps} so far)")
            return
        if self.state.rollbacks >= self.max_rollbacks:
            raise NonFiniteError(
                f"non-finite loss or gradient in {where}, after {self.state.rollbacks} rollbacks "
                f"(max_rollbacks={self.max_rollbacks}); lower the learning rate or clip gradients"
            )
        self.state.rollbacks += 1
        self.model.load_state_dict(self._good["model"])
        self.optimizer.load_state_dict(self._good["optimizer"])
        self.schedule.scale(self.rollback_lr_factor)
        self.log(
            f"Non-finite loss or gradient in {where}: rolled back to the last good weights, "
            f"learning rate × {self.rollback_lr_factor} (rollback {self.state.rollbacks} of {self.max_rollbacks})"
        )

    def _lr_figures(self) -> dict[str, float]:
        """``lr`` (first group) and ``lr/<group>`` for each group when their base LRs differ, as used
        by the epoch's last optimizer step; ``momentum`` when the schedule cycles it."""
        groups = self.optimizer.param_groups
        figures = {"lr": float(self._step_lrs[0])}
        # The decay/no-decay split alone makes groups with equal LRs: a column each only when they differ.
        if len({group.get("initial_lr", group["lr"]) for group in groups}) > 1:
            for i, (group, lr) in enumerate(zip(groups, self._step_lrs)):
                figures[f"lr/{group.get('name', i)}"] = float(lr)
        momenta = self.schedule.momenta()
        if momenta:
            figures["momentum"] = float(momenta[0])
        return figures

    @property
    def early_stopping(self) -> EarlyStopping | None:
        """The first EarlyStopping callback, if any."""
        return next((c for c in self.callbacks if isinstance(c, EarlyStopping)), None)

    def _best_keeper(self) -> EarlyStopping | None:
        stopper = self.early_stopping
        return stopper if stopper is not None and stopper.restore_best else None

    def _restore_best(self, why: str) -> None:
        keeper = self._best_keeper()
        if keeper is not None and keeper.restore_best_weights(self):
            self.log(f"{why}: restored the best weights (epoch {keeper.best_epoch})")

    def _best(self) -> dict[str, Any] | None:
        stopper = self.early_stopping
        if stopper is not None:
            if stopper.best_epoch is None:
                return None
            return {"epoch": stopper.best_epoch, "monitor": stopper.monitor, "value": stopper.best_value}
        monitor = "val_loss" if any("val_loss" in r for r in self.history.epochs) else "train_loss"
        return self.history.best_by(monitor, "min")

    def _summary(self, train_batches: Batches, val_batches: Batches | None) -> str:
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        val = f", {val_batches.num_samples:,} val" if val_batches is not None else ""
        return (
            f"Training on {self.device}: {trainable:,} trainable parameters"
            f"{f' ({frozen:,} frozen)' if frozen else ''}; {train_batches.num_samples:,} train{val} "
            f"samples; {self.state.steps_per_epoch} steps per epoch, up to {self.max_epochs} epochs"
            f"{self._global_batch()}"
        )

    def _global_batch(self) -> str:
        if self.world_size == 1:
            return ""
        size = self.batch_size * self.world_size * self.stepper.accumulate
        return (f"; {self.world_size} processes, global batch {size:,} = {self.batch_size} per process "
                f"× {self.world_size} processes × accumulate {self.stepper.accumulate}")

    # ------------------------------------------------------------------ several processes

    def _wrap_for_processes(self, ddp: Any = None) -> None:
        """DDP around the plain model for the training forward passes. Rebuilt when parameters
        become trainable: DDP only all-reduces those that were trainable when it was built."""
        self.ddp = ddp if ddp is not None else distributed.wrap_model(self.model, self.world)
        self.forward_model = torch.compile(self.ddp) if self._compile else self.ddp
        self.eval_model = torch.compile(self.model) if self._compile else self.model
        self.stepper.distribute(self.ddp, self.world_size, distributed.all_true)

    def _agree_on_stop(self) -> None:
        """Several processes: a stop asked on any of them is acted on by all, now (blocking)."""
        if self._stop_vote is not None:
            self._stop_vote.settle(self.state)

    def _emit(self, event: str) -> None:
        handlers = self._step_handlers.get(event)
        if handlers is None:
            handlers = [getattr(callback, event) for callback in self._event_order(event)]
        for handler in handlers:
            handler(self)

    def _event_order(self, event: str) -> list[Callback]:
        """The callbacks in the order an event reaches them: the given order, except that those
        saving the training state (checkpoints) come last at a step's and an epoch's end, so that
        they hold every update of it (an average, a record), and first at the end of fit, before
        anything puts other weights into the model."""
        saving = [c for c in self.callbacks if getattr(c, "saves_training_state", False)]
        others = [c for c in self.callbacks if not getattr(c, "saves_training_state", False)]
        if event in ("on_step_end", "on_epoch_end"):
            return others + saving
        if event == "on_fit_end":
            return saving + others
        return list(self.callbacks)

    def _cache_step_handlers(self) -> None:
        """The per-step events' handlers, those that do something (the base class's no-ops left
        out), looked up once per fit rather than at every step."""
        self._step_handlers = {
            event: [
                getattr(callback, event) for callback in self._event_order(event)
                if getattr(type(callback), event, None) is not getattr(Callback, event)
                or event in vars(callback)
            ]
            for event in ("on_before_step", "on_step_end")
        }

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)

    @contextlib.contextmanager
    def _stop_on_interrupt(self) -> Iterator[None]:
        """Ctrl-C (and SIGTERM) stop after the current step; a second Ctrl-C aborts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        reasons = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}

        def handler(signum: int, frame: Any) -> None:
            vote = getattr(self, "_stop_vote", None)
            if self.state.stop_reason in reasons.values() or (vote is not None and vote.requested in reasons.values()):
                raise KeyboardInterrupt
            if vote is not None:  # several processes stop together, after a step they agree on
                vote.request(reasons[signal.Signals(signum)])
            else:
                self.state.should_stop, self.state.stop_reason = True, reasons[signal.Signals(signum)]
            if signum == signal.SIGINT:
                self.log("Interrupted: stopping after this step (Ctrl-C again to abort at once)")
            else:
                self.log("Terminated: stopping after this step (a second SIGTERM aborts at once)")

        previous = {sig: signal.signal(sig, handler) for sig in reasons}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


_gc_off_by_fit = False  # a process forked meanwhile (DataLoader workers) turns it back on


@contextlib.contextmanager
def _collecting_garbage_ourselves(active: bool) -> Iterator[None]:
    """Python's automatic garbage collection off (the trainer collects at fixed points), as it
    was afterwards."""
    global _gc_off_by_fit
    was_enabled = gc.isenabled()
    if active and was_enabled:
        gc.disable()
        _gc_off_by_fit = True
    try:
        yield
    finally:
        if active and was_enabled:
            _gc_off_by_fit = False
            gc.enable()


def _after_fork_in_child() -> None:
    # A worker forked during fit collects its own garbage: the trainer's fixed points are not its.
    if _gc_off_by_fit:
        gc.enable()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _averaging_callbacks(ema: Any, swa: Any) -> list[Callback]:
    """The EMA and SWA callbacks that the ``ema=`` and ``swa=`` arguments stand for."""
    from traincraft.callbacks.ema import EMA
    from traincraft.callbacks.swa import SWA

    made: list[Callback] = []
    if isinstance(ema, EMA):
        made.append(ema)
    elif ema is True:
        made.append(EMA())
    elif isinstance(ema, dict):
        made.append(_made(EMA, "ema", **ema))
    elif isinstance(ema, (int, float)) and not isinstance(ema, bool):
        made.append(EMA(decay=float(ema)))
    elif ema not in (None, False):
        raise TraincraftError(f"ema must be True, a decay, a dict of EMA arguments or an EMA; got {ema!r}")
    if isinstance(swa, SWA):
        made.append(swa)
    elif isinstance(swa, dict):
        made.append(_made(SWA, "swa", **swa))
    elif swa is True:
        made.append(SWA())
    elif swa not in (None, False):
        raise TraincraftError(f"swa must be a dict of SWA arguments or an SWA; got {swa!r}")
    return made


#: What each process keeps of its own in a checkpoint written under several processes.
PER_PROCESS = ("rng", "epoch_rng", "epoch_sums", "metrics")


def metrics_module_set(specs: Sequence[Any], probabilities: bool) -> metrics.MetricSet:
    if isinstance(specs, (str, dict)):
        specs = [specs]
    return metrics.MetricSet(list(specs), probabilities=probabilities)


def _plain(lr: Any) -> float:
    """An LR as a number: a tensor LR (capturable optimizers, a torch scheduler whose function
    returns a tensor) is filled in place later, so a record must not keep the tensor."""
    return lr if type(lr) is float else float(lr)


def _prefixed(figures: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in figures.items()}


def _concatenate(outputs: list[Any]) -> Any:
    if not outputs:
        return torch.empty(0)
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, dict):
        return {k: torch.cat([o[k] for o in outputs]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(torch.cat([o[i] for o in outputs]) for i in range(len(first)))
    raise TraincraftError(f"predict: cannot concatenate model outputs of type {type(first).__name__}")


def _made(cls: Any, what: str, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)``; a key it does not take is one line with the closest ones."""
    import inspect

    from traincraft.errors import did_you_mean

    accepted = [name for name, p in inspect.signature(cls).parameters.items()
                if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and name != "folder")]
    for key in kwargs:
        if key not in accepted:
            hint = did_you_mean(key, accepted) or f"; accepted: {', '.join(accepted)}"
            raise TraincraftError(f"{what}: unknown key {key!r}{hint}")
    return cls(*args, **kwargs)


def _check_whole(**values: Any) -> None:
    """Counts are whole numbers: ``max_epochs=1.5`` is refused, not trained as 1."""
    import numbers

    for name, value in values.items():
        if value is None:
            continue
        whole = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole:
            raise TraincraftError(f"{name} must be a whole number, got {value!r}")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise TraincraftError(f"{name} must be > 0, got {value}")
