"""The Trainer: fit, evaluate, predict. The loop reads top to bottom."""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from traincraft import (
    augment,
    distributed,
    files,
    losses,
    metrics,
    optim,
    options,
    resuming,
    schedules,
)
from traincraft.callbacks.assembly import trainer_callbacks
from traincraft.callbacks.base import Callback, Events
from traincraft.callbacks.early_stopping import EarlyStopping
from traincraft.callbacks.progress import ProgressBar
from traincraft.data import (
    Batches,
    TensorBatches,
    batch_samples,
    concatenate,
    describe,
    make_batches,
    make_predict_batches,
    map_tensors,
    num_samples,
    split_off,
    to_device,
)
from traincraft.device import resolve_device
from traincraft.durations import steps_per_epoch
from traincraft.errors import ModelError, TraincraftError
from traincraft.finetune.live import unfreeze_due
from traincraft.finetune.plan import Finetuning
from traincraft.history import History
from traincraft.loss_sums import RATIO, EpochLossSums, SummedLoss
from traincraft.metrics import RunningMeans
from traincraft.model_outputs import own_loss, prediction
from traincraft.penalties import Penalty
from traincraft.seeding import (
    new_seed,
    rng_state,
    seed_everything,
    set_deterministic,
    set_rng_state,
)
from traincraft.state import TrainState
from traincraft.step import NonFinitePolicy, Stepper
from traincraft.stopping import SIGNALLED, collecting_garbage_ourselves, stop_on_signals

#: Which weights the model holds when a run ends, the first that a callback offers: the SWA
#: average, else early stopping's best, else the EMA, else the live weights.
FINAL_WEIGHTS = ("swa", "best", "ema")


class Trainer:
    """Trains a ``torch.nn.Module`` with the right strategies.

    Common knobs are arguments; the rest are dicts of their owner's keyword arguments, whose
    signature holds the defaults (:mod:`traincraft.options` has the table; ``docs/python-api.md``
    every key).

    Args:
        model: any ``nn.Module``; it is moved to ``device``.
        loss: a name (``"cross_entropy"``), ``{"name": "huber", "delta": 0.5}``, a list of weighted
            terms, an ``nn.Module`` or a callable ``(pred, target) -> Tensor`` (:mod:`~traincraft.losses`);
            None: the loss the model returns (``output["loss"]``). :meth:`compute_loss` is the
            one place to change how a batch becomes a loss.
        optimizer: a name, a callable taking parameter groups, or ``{"name": "adamw", "weight_decay":
            0.01, "decay_exclude": "auto", "param_groups": [...], **the class's keys}`` (:func:`~traincraft.optim.build`).
        lr: base learning rate (each parameter group's ``lr_mult`` multiplies it).
        schedule: a name, ``{"name": "cosine", "warmup": "5%", ...}``, or a function building a torch
            scheduler (``{"name": fn, "interval": "epoch"}``); counted in optimizer steps (:mod:`~traincraft.schedules`).
        metrics: names (``"accuracy"``, ``"rmse"``, ...) or objects with update/compute/reset.
        max_epochs, max_steps: the run's limits (in epochs; in optimizer steps).
        batch_size: samples per micro-batch (a DataLoader batches itself).
        callbacks: :class:`traincraft.Callback` objects, called in the order given.
        seed: seeds python, numpy, torch and the data order; None draws one (``trainer.seed``).
        device: ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda:1"``, ...
        run_dir: a folder for ``metrics.csv``, checkpoints and the best weights; None writes no files.
        progress: True: a live bar on a terminal or in a notebook, then a line per epoch (a line
            per epoch alone when output is neither); ``"lines"``: the epoch lines, never a bar;
            False: nothing per epoch (:class:`~traincraft.callbacks.progress.ProgressBar`).
        data: ``{"val_split", "shuffle"}`` (:class:`~traincraft.options.DataOptions`).
        step: ``{"accumulate", "precision", "clip_grad_norm", "clip_norm_type", "clip_grad_value"}``
            (:class:`~traincraft.step.Stepper`) and ``{"compile", "deterministic", "gc_every"}``
            (:class:`~traincraft.options.Runtime`).
        nonfinite: ``"raise"``, ``"skip"``, ``"rollback"`` or ``{"policy", "every", "lr_factor",
            "max_rollbacks"}`` (:class:`~traincraft.step.NonFinitePolicy`).
        penalty: ``{"l1", "l2", "exclude"}``: ``l1·Σ|w| + l2·Σw²`` on weights (:class:`~traincraft.penalties.Penalty`).
        processes: ``{"sync_batchnorm", "timeout"}`` under torchrun (:class:`~traincraft.options.Processes`).
        finetune: ``{"init_from", "freeze", "unfreeze", "gradual", "lr_mult", "layer_decay", ...}``
            (:class:`~traincraft.finetune.plan.Finetuning`, ``docs/finetuning.md``).
        ema: True, a decay, a dict of :class:`~traincraft.callbacks.ema.EMA` arguments, or an ``EMA``.
        swa: a dict of :class:`~traincraft.callbacks.swa.SWA` arguments or an ``SWA``.
        checkpoint: with a ``run_dir``: True, a dict of :class:`~traincraft.callbacks.checkpoint.Checkpoint`
            arguments, or False.
        loggers: with a ``run_dir``: ``"tensorboard"``, ``"mlflow"``, ``"report"`` (plots and
            ``report.html``; 0.3-1 s), ``{"name": ..., **kwargs}`` or logger callbacks.

    The flat names of earlier releases (``accumulate=``, ``weight_decay=``, ...) work for this
    release, each with a ``DeprecationWarning`` naming its new place.

    Example:
        >>> trainer = Trainer(model, loss="cross_entropy", metrics=["accuracy"], max_epochs=30,
        ...                   step={"clip_grad_norm": 1.0}, callbacks=[EarlyStopping(patience=5)], seed=0)
        >>> history = trainer.fit((X_train, y_train), val=(X_val, y_val))
        >>> trainer.evaluate((X_test, y_test))
        {'loss': 0.05, 'accuracy': 0.98}
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        loss: Any = None,
        optimizer: Any = "adamw",
        lr: float = 1e-3,
        schedule: Any = None,
        metrics: Sequence[Any] = (),
        max_epochs: int = 10,
        max_steps: int | None = None,
        batch_size: int = 32,
        callbacks: Sequence[Callback] = (),
        seed: int | None = None,
        device: str | torch.device = "auto",
        run_dir: str | Path | None = None,
        progress: bool | str = True,
        data: dict[str, Any] | None = None,
        step: dict[str, Any] | None = None,
        nonfinite: str | dict[str, Any] = "raise",
        penalty: dict[str, Any] | None = None,
        processes: dict[str, Any] | None = None,
        finetune: dict[str, Any] | None = None,
        ema: Any = None,
        swa: Any = None,
        checkpoint: dict[str, Any] | bool = True,
        loggers: Sequence[Any] = (),
        **deprecated: Any,
    ):
        if not isinstance(model, nn.Module):
            raise TraincraftError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        given = options.settings(optimizer=optimizer, schedule=schedule, data=data, step=step, nonfinite=nonfinite,
                                 penalty=penalty, processes=processes, finetune=finetune, loggers=loggers,
                                 deprecated=deprecated)
        options.check_limits(max_epochs=max_epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed,
                             accumulate=given.stepper_args.get("accumulate"))
        self.nonfinite = NonFinitePolicy(**given.nonfinite)
        self.runtime, self.data_options, self.processes = given.runtime, given.data, given.processes
        # Image batches: uint8 to floats, augmentation (training), normalisation, on the device.
        self.batch_transform = augment.build(self.data_options.augment, self.data_options.normalize)
        self.device = resolve_device(device)
        # Under torchrun: join the other processes; each one takes its own GPU (distributed.py).
        self.world = distributed.join(self.device, timeout=self.processes.timeout)
        self.device, self.rank, self.world_size = self.world.device, self.world.rank, self.world.world_size
        self.stop_vote: distributed.StopVote | None = None  # several processes: made by fit()
        model, given_ddp = distributed.split_wrapper(model)  # a DDP built by the user keeps its options
        if self.processes.sync_batchnorm:
            model = distributed.convert_sync_batchnorm(model, self.world)
        self.model = model.to(self.device)
        # None: the loss the model returns (a Hugging Face model given its labels)
        self.loss_fn = losses.build(loss).to(self.device) if loss is not None else None  # class weights are buffers
        self.metrics = metrics_module_set(metrics, probabilities=loss is not None and losses.takes_probabilities(loss))
        self.finetuning = Finetuning(self.model, **given.finetune)
        # Every rule serves the groups unfreezing adds; the optimizer starts with those that
        # match a trainable parameter.
        rules = list(given.optimizer_args.pop("param_groups", None) or [])
        self.group_rules = [*rules, *self.finetuning.rules]
        self.decay_exclude = given.optimizer_args.get("decay_exclude", "auto")
        self.optimizer = optim.build(
            given.optimizer, self.model, lr=lr, **given.optimizer_args,
            param_groups=[*rules, *self.finetuning.group_rules(self.model, before=rules)] or None,
        )
        self._penalty_args = given.penalty
        self.penalty = Penalty(self.model, **self._penalty_args)
        self._penalize = bool(self.penalty)  # read at every step: the flag, not the check
        self.stepper = Stepper(self.optimizer, self.model.parameters(), device=self.device,
                               on_nonfinite=self.nonfinite.policy, **given.stepper_args)
        # The compiled module is only the forward pass: state dicts stay the plain module's.
        self.forward_model = torch.compile(self.model) if self.runtime.compile else self.model
        # Evaluation never goes through DDP: no collective, so shards of any size are fine.
        self.eval_model, self.ddp = self.forward_model, None
        if self.world.distributed:
            self._wrap_for_processes(given_ddp)
        self.schedule_spec, self.schedule_interval = given.schedule, given.schedule_interval
        self.schedule: Any = None  # built at the start of fit, when the run's length is known
        self.max_epochs, self.max_steps, self.batch_size = int(max_epochs), max_steps, int(batch_size)
        self.seed = new_seed() if seed is None else int(seed)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress_callback(progress)
        self.callbacks = trainer_callbacks(self, callbacks, checkpoint=checkpoint, ema=ema, swa=swa,
                                           loggers=given.loggers, report=given.report)
        self.state, self.history = TrainState(), History()
        self.epoch_sums = RunningMeans(self.device)  # the epoch's running sums (loss, penalty, ...)
        # A loss that is not a per-sample mean (class weights, ignore_index, dice): its sums,
        # whose epoch total gives the exact epoch loss (loss_sums.py).
        self.loss_sums = EpochLossSums(self.device, source=self._sums_source())
        self._sums_of: Any = None
        self._sums_of_loss: Any = None  # the loss_fn _sums_of was made for
        self._batch_sums: SummedLoss | None = None  # the last training micro-batch's
        self._adapt_target: Callable[[Any, Any], Any] | None = None
        self._forward_params: dict[str, Any] | None = None  # the model's forward's, read once
        self.events = Events(self.callbacks)
        self.data: Any = None  # the recipe's prepared data (from_recipe), used when fit() gets none
        self.recipe: Any = None
        # How an interrupted run is continued, said when it stops (the command line sets its own).
        self.resume_hint: str | None = None
        self.run_complete = False
        self.claimed_run_dir: Path | None = None
        # True while fit() ends by an exception (a second Ctrl-C, an error): the state may be in
        # the middle of a step, and on_fit_end must not save it for a resume.
        self.aborted = False
        self.epoch_rng: dict[str, Any] | None = None
        self.pending_rng: tuple[Any, Any] | None = None
        self.next_unfreeze: float = 0
        self._closure_window: list[Any] | None = None  # L-BFGS: the window's losses, re-evaluated in its step
        for line in self.finetuning.messages:
            self.log(line)
        if self.stepper.precision == "fp16" and self.device.type == "cpu":
            self.log("warning: precision fp16 on a CPU runs 12-50x slower than float32 (CPUs have no fast "
                     "float16 kernels, and the loss scaler adds work): use precision bf16 or 32 here")

    @classmethod
    def from_recipe(
        cls, recipe: Any, *, run_dir: str | Path | None = None, progress: bool | str = True,
        callbacks: Sequence[Callback] = (), checkpoint: bool = True, resuming: bool = False,
        report: bool = True,
    ) -> Trainer:
        """Build data, model and trainer from a recipe (a path, a template name, a dict or a
        :class:`~traincraft.recipe.Recipe`); ``fit()`` then trains on the recipe's data.
        ``resuming=True`` when ``fit(resume=...)`` follows: the run folder's checkpoint gives the
        weights, and what the run started from (``init_from``, ``weights:``) is not read again.
        ``report=False``: no report.html, and no evaluation of the best weights at the end.

        Example:
            >>> trainer = Trainer.from_recipe("sunspots", run_dir="runs/try")
            >>> history = trainer.fit()
        """
        from traincraft.run import trainer_from_recipe

        return trainer_from_recipe(
            cls, recipe, run_dir=run_dir, progress=progress, callbacks=list(callbacks), checkpoint=checkpoint,
            resuming=resuming, report=report,
        )

    # ------------------------------------------------------------------ the loop

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
                    forward, loss (+ L1/L2 penalty), backward × samples      # train_micro_batch
                    every `accumulate` micro-batches, and at the epoch's last one:
                        unscale, average over the window, clip
                        [a non-finite window: skip it or roll back (nonfinite)]
                        on_before_step                # state.lrs: the LRs this step uses
                        optimizer.step(), zero_grad      # the fp16 scaler may skip it
                        state.step += 1; the schedule moves the LR; due unfreezing
                        on_step_end
                        [several processes: vote on a stop asked on one of them]
                [several processes: agree on stopping; sum the epoch's sums over all of them]
                validate (eval mode, inference mode)    # exact sums over samples
                history row; on_validation_end         # state.metrics holds the epoch's figures
                [several processes: agree on stopping]
                on_epoch_end
                [several processes: agree on stopping]
            on_fit_end of the callbacks that save the training state (checkpoints)
            the final weights: the first one offered of FINAL_WEIGHTS (SWA, best, EMA), else live
            on_fit_end of the others                   # they see the final weights

        Under torchrun (several processes) every process calls ``fit``; see ``docs/distributed.md``.

        Returns:
            The :class:`History` of the run.
        """
        train_batches, val_batches = self._fit_data(train, val)
        resume = resuming.resume_source(self, resume)
        if resume is None:
            resuming.claim_run_dir(self, overwrite)
        self._start_run(train_batches, val_batches)
        if resume is not None:
            resuming.resume(self, resume, allow_changes=allow_changes)
        if self.progress is not None and not self.state.should_stop:
            self.log(self.progress.summary(self, train_batches, val_batches))
        with (
            stop_on_signals(self),
            distributed.failures_explained(self.world, self.processes.timeout, self.stop_vote),
            collecting_garbage_ourselves(self.runtime.gc_every is not None),
        ):
            self.aborted = True  # until the loop ends between two steps (not a second Ctrl-C, an error)
            try:
                self.next_unfreeze = unfreeze_due(self)
                self._emit("on_fit_start")
                while not self.state.should_stop:
                    self._run_epoch(train_batches, val_batches)
                self.aborted = False
            finally:
                self._end_run()
        distributed.finish_together(self.world, self.processes.timeout)  # a hung process is named, not waited for
        return self.history

    def _run_epoch(self, train_batches: Batches, val_batches: Batches | None) -> None:
        started = time.perf_counter()
        epoch_batches = self._start_epoch(train_batches)
        figures = self._train_epoch(train_batches, epoch_batches)
        if self.state.stop_reason in SIGNALLED:
            return  # a partial epoch: no validation, no history row
        # The epoch's files (checkpoint, best weights, metrics.csv) reach the disk while the
        # next epoch trains; their writer thread starts once they are all serialized.
        with files.deferred():
            self._end_epoch(val_batches, figures, started)
        if self.runtime.gc_every is not None:
            gc.collect(1)

    def _train_epoch(self, batches: Batches, epoch_batches: Iterator[Any]) -> dict[str, float]:
        state, stepper, sums = self.state, self.stepper, self.epoch_sums
        self.model.train()
        if state.batch_in_epoch == 0:  # not a mid-epoch resume: a fresh epoch
            sums.reset()
            self.loss_sums.reset()
            self.metrics.reset()
        on_device, last = isinstance(batches, TensorBatches), len(batches) - 1  # moved once, at the start of fit
        shards = batches.shard_sizes() if self.world_size > 1 else None  # samples per batch, here and over all
        for inputs, target in epoch_batches:
            if not on_device:
                inputs, target = to_device(inputs, self.device), to_device(target, self.device)
            if self.batch_transform is not None:
                inputs = self.batch_transform(inputs, training=True)
            index = state.batch_in_epoch
            if shards is None:  # one process: the batch's own samples
                samples = counted = num_samples(target) if target is not None else num_samples(inputs)
            else:
                samples, counted = self._shard_samples(shards, index)
            pred, target, loss, penalty = self.train_micro_batch(inputs, target, samples, last_of_epoch=index == last,
                                                                 batch_samples=counted)
            self._record(sums, pred, target, loss, penalty, samples, self._batch_sums)
            state.batch_in_epoch += 1
            state.samples_seen += counted
            if stepper.window_full():
                self._optimizer_step()
                if state.should_stop:
                    break
        if stepper.pending:  # the epoch's last, partial accumulation window
            self._optimizer_step()
        if self.nonfinite.policy == "raise":
            self.nonfinite.check(self)
        self._agree_on_stop()
        return self._train_figures()

    def _optimizer_step(self) -> None:
        stepper, state = self.stepper, self.state
        stepper.prepare()
        if self.nonfinite.every_step and not stepper.window_is_finite():
            self._closure_window = [] if self._closure_window is not None else None
            self.nonfinite.recover(self)
            return
        state.lrs = [_plain(group["lr"]) for group in self.optimizer.param_groups]
        self._emit("on_before_step")
        grad_norm = stepper.grad_norm
        if not self._step_optimizer():
            state.skipped_steps += 1  # the fp16 scaler found an overflow
            return
        if grad_norm is not None:  # of steps taken: a skipped fp16 step's gradients are inf by design
            self.epoch_sums.add("grad_norm", grad_norm, 1)
        self._count_step()  # the schedule moves the LR on; due unfreezing
        self._emit("on_step_end")
        self._after_step()

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

    def _evaluate(self, batches: Batches, prefix: str, reduce: bool = True) -> dict[str, float]:
        sums, exact = RunningMeans(self.device), EpochLossSums(self.device)
        self.metrics.reset()
        with self._eval_mode(), self.stepper.autocast():
            for inputs, target in batches.epoch(0):
                inputs, target = self.on_device(inputs), to_device(target, self.device)
                loss, pred, target = self.compute_loss(inputs, target)
                summed = loss if isinstance(loss, SummedLoss) else None
                if summed is not None:
                    exact.add(summed)
                    loss = summed.value
                self._record(sums, pred, target, loss, None, batch_samples(inputs, target))
        if reduce and self.world_size > 1:  # each process evaluated its own samples: sum them up
            distributed.reduce_figures(sums, self.metrics)
            exact.sync(distributed.all_reduce_sum)
        # A loss carried as sums: the loss of the whole data as one batch.
        figures = {**sums.means(prefix=prefix), **exact.figures(prefix)}
        return {**figures, **_prefixed(self.metrics.compute(), prefix)}

    # ------------------------------------------------------------------ one micro-batch, one step

    def train_micro_batch(
        self, inputs: Any, target: Any, samples: int, *, last_of_epoch: bool = False,
        batch_samples: int | None = None,
    ) -> tuple[Any, Any, torch.Tensor, torch.Tensor | None]:
        """One training micro-batch on the device: forward and loss (+ penalty) under autocast,
        backward weighted by its ``samples`` for an exact window mean (the window's last one
        all-reduces under several processes). Returns the prediction, the target as the loss
        saw it, the batch's loss and the penalty (None without one); the optimizer step is the
        caller's (``stepper.window_full()``). A loss carried as sums (``SummedLoss``) is
        back-propagated by ``stepper.backward_sums`` and kept in ``_batch_sums`` for the epoch's
        figures; ``batch_samples``: the micro-batch's samples over all processes."""
        given = target
        with self.stepper.micro_batch(last_of_epoch=last_of_epoch):
            with self.stepper.autocast():
                loss, pred, target = self.compute_loss(inputs, target)
                penalty = self.penalty() if self._penalize else None
            if isinstance(loss, SummedLoss):
                if self.world_size > 1 and not samples:
                    loss = loss.scaled(0.0)  # a stand-in sample of a shorter shard counts nothing
                self._batch_sums = loss
                loss = self.stepper.backward_sums(loss, penalty, samples, batch_samples)
            else:
                self._batch_sums = None
                self.stepper.backward(loss if penalty is None else loss + penalty, samples)
        if self._closure_window is not None:  # L-BFGS re-evaluates the window in its step
            self._closure_window.append((self._loss_of(inputs, given), samples))
        return pred, target, loss, penalty

    def compute_loss(self, inputs: Any, target: Any) -> tuple[torch.Tensor, Any, Any]:
        """How a batch becomes a loss: ``(loss, pred, target)``, the loss the mean over the batch's
        samples (or, for a loss that is not a per-sample mean, its sums: ``losses.Ratio(Σ wᵢlᵢ,
        Σ wᵢ)`` or a :class:`~traincraft.loss_sums.SummedLoss`), ``pred`` and ``target`` what the
        metrics compare (None: no metrics for it).

        The one place to change it: subclass and override (contrastive learning, several
        outputs with several targets, a loss that needs the inputs), as the Hugging Face
        Trainer's ``compute_loss``. Training, validation and ``evaluate`` all call it, under
        autocast; the trainer weights it by the batch's samples, so epoch figures stay exact.

        By default: the model on ``inputs`` (a dict batch's target goes in too, under
        ``data.target_key``, when ``forward`` takes it), its prediction (the output, or its
        ``logits``), and the trainer's loss on it, or with ``loss=None`` the loss the model
        returned (``output["loss"]`` or ``output.loss``).

        Example:
            >>> class TwoHeads(Trainer):
            ...     def compute_loss(self, inputs, target):
            ...         class_logits, box = self.forward(inputs)
            ...         loss = F.cross_entropy(class_logits, target["label"]) + F.l1_loss(box, target["box"])
            ...         return loss, class_logits, target["label"]
        """
        output = self.forward(inputs, target)
        pred = prediction(output)
        if self.loss_fn is None:
            return own_loss(output), pred, target
        target = self._adapt(pred, target)
        return self._loss(pred, target), pred, target

    def _record(self, sums: RunningMeans, pred: Any, target: Any, loss: torch.Tensor,
                penalty: torch.Tensor | None, samples: int, summed: SummedLoss | None = None) -> None:
        """A micro-batch into the epoch's sums (loss, penalty, a composite loss's terms; a loss
        carried as sums into ``loss_sums`` too) and metrics (held detached, on the device)."""
        if summed is not None:
            self.loss_sums.add(summed)
        sums.add("loss", loss, samples)
        if penalty is not None:
            sums.add("penalty", penalty, samples)
        for name, term in getattr(self.loss_fn, "last_terms", {}).items():
            sums.add(f"loss/{name}", term, samples)
        if (samples or self.world_size == 1) and pred is not None and target is not None:
            self.metrics.update(pred, target)  # a stand-in batch of a shorter shard counts nothing

    def _train_figures(self) -> dict[str, float]:
        """The epoch's training figures; under several processes, once per epoch, every
        process's sums: the same figures everywhere. Not for an epoch that a signal cut short:
        its checkpoint keeps each process's own partial sums."""
        sums = self.epoch_sums
        if self.world_size > 1 and self.state.stop_reason not in SIGNALLED:
            distributed.reduce_figures(sums, self.metrics)
            self.loss_sums.sync(distributed.all_reduce_sum)
        figures = {**sums.means(prefix="train_"), **self.loss_sums.figures("train_")}
        if "train_grad_norm" in figures:
            figures["grad_norm"] = figures.pop("train_grad_norm")  # mean over the epoch's steps
        return {**figures, **_prefixed(self.metrics.compute(), "train_")}

    def _count_step(self) -> None:
        """A step taken: counted, a garbage collection when due, the schedule's next LR, the
        unfreezing due after it."""
        step = self.state.step = self.state.step + 1
        if self.runtime.gc_every is not None and step % self.runtime.gc_every == 0:
            gc.collect(1)
        self.schedule.step_end(step)
        if step >= self.next_unfreeze:
            self.next_unfreeze = unfreeze_due(self)

    def _shard_samples(self, shards: Any, index: int) -> tuple[int, int]:
        """Several processes: a micro-batch's samples on this process and over all (a stand-in
        batch of a shorter shard has 0); the first of a window also sets the window's total."""
        if not self.stepper.pending:
            self.stepper.window_total = shards.window_total(index, self.stepper.accumulate)
        return shards.local[index], shards.total[index]

    def _step_optimizer(self) -> bool:
        """The optimizer's step; False when the fp16 scaler skipped it."""
        if self._closure_window is not None:
            window, self._closure_window = self._closure_window, []
            return self.stepper.closure_step(window)
        return self.stepper.step()

    def _after_step(self) -> None:
        """What follows a step: the processes' stop vote, ``max_steps``, the non-finite policy's
        snapshot or check."""
        step = self.state.step
        if self.stop_vote is not None:
            self.stop_vote.after_step(self.state)
        if self.max_steps is not None and step >= self.max_steps:
            self.state.request_stop("max_steps")
        self.nonfinite.after_step(self)

    def _start_epoch(self, train_batches: Batches) -> Iterator[Any]:
        """``on_epoch_start`` and the epoch's batches, with the random state as the epoch started
        (a resumed run's, from its checkpoint) around them."""
        epoch_rng, resumed_rng = self.pending_rng or (None, None)
        self.pending_rng = None
        if epoch_rng is not None:  # a resumed run: the random state as this epoch started
            set_rng_state(epoch_rng)
        self.epoch_rng = rng_state()
        self._emit("on_epoch_start")
        # The iterator is set up now (a DataLoader draws its seeds, a mid-epoch resume replays
        # what its workers did), then a mid-epoch resume takes the random state it saved.
        batches = train_batches.epoch(self.state.epoch, start=self.state.batch_in_epoch)
        if resumed_rng is not None:
            set_rng_state(resumed_rng)
        return batches

    # ------------------------------------------------------------------ the run's start and end

    def _fit_data(self, train: Any, val: Any) -> tuple[Batches, Batches | None]:
        if train is None:
            if self.data is None:
                raise TraincraftError("fit() needs training data: fit((X, y)) or Trainer.from_recipe(...)")
            train, val = self.data.train, self.data.val if val is None else val
        if self.data_options.val_split and val is None:
            train, val = split_off(train, self.data_options.val_split, seed=self.seed)
        train_batches = self.batches(train, shuffle=self.data_options.shuffle, what="train", training=True)
        val_batches = self.batches(val, shuffle=False, what="val") if val is not None else None
        if self.world_size > 1:  # the same data everywhere, or (sharded) each its own, counted
            distributed.agree_on_data(self.world, train_batches, {"val": val_batches},
                                      sharded=self.data_options.sharded)
        return train_batches, val_batches

    def _start_run(self, train_batches: Batches, val_batches: Batches | None) -> None:
        seed_everything(self.seed + self.rank)  # each process its own dropout and augmentation
        self.stop_vote = distributed.StopVote() if self.world_size > 1 else None
        if self.runtime.deterministic:
            set_deterministic(True)
        self.state, self.history = TrainState(), History()
        self._adapt_target = None
        per_epoch = steps_per_epoch(len(train_batches), self.stepper.accumulate)
        total = self.max_epochs * per_epoch
        self.state.steps_per_epoch = per_epoch
        self.state.max_steps = min(total, self.max_steps) if self.max_steps else total
        self.schedule = schedules.build(
            self.schedule_spec, self.optimizer, steps_per_epoch=per_epoch,
            total_steps=self.state.max_steps, schedule_interval=self.schedule_interval,
        )
        self.schedule.start()
        self.finetuning.plan.resolve(steps_per_epoch=per_epoch, total_steps=self.state.max_steps)
        self.next_unfreeze = self.finetuning.plan.next_step
        self._train_batches, self._val_batches = train_batches, val_batches
        self.events = Events(self.callbacks)  # the handlers, in each event's order, looked up once
        self.state.lrs = [_plain(group["lr"]) for group in self.optimizer.param_groups]
        if self.stepper.closure_optimizer and self.world_size > 1:
            raise TraincraftError(
                f"optimizer {type(self.optimizer).__name__} re-evaluates the loss inside its step (a "
                "closure): not supported under several processes; train it in one process"
            )
        self._closure_window = [] if self.stepper.closure_optimizer else None
        self.epoch_rng = self.pending_rng = None
        self.run_complete = False  # a resumed run whose end already went through
        self.nonfinite.start(self)
        if self.schedule.restore_best_on_reduce and not self.keeps_best:
            raise TraincraftError(
                "schedule restore_best_on_reduce needs EarlyStopping(restore_best=True): "
                "it keeps the best weights to go back to"
            )

    def _end_run(self) -> None:
        """The end of ``fit``, whatever ended it: checkpoints save the live state, the model
        takes its final weights, the other callbacks end (they see the final weights), the
        run is marked complete when it ended by itself, and its files are in place."""
        ended = False
        try:
            saving = self.events.saving
            for callback in saving:
                callback.on_fit_end(self)
            self._settle_final_weights()
            for callback in self.callbacks:
                if callback not in saving:
                    callback.on_fit_end(self)
            ended = not self.aborted
        finally:
            self.history.stop_reason = self.state.stop_reason
            self.history.best = self.best
            if ended:
                resuming.mark_complete(self)  # written with the run's last files, before fit waits for them
            try:
                files.wait()  # the run's files are in place when fit() returns
            except OSError:
                if self.state.stop_reason is not None:  # else an error of the run is on its way up
                    raise

    def _settle_final_weights(self) -> None:
        """The one rule for the weights a run ends with: the first of :data:`FINAL_WEIGHTS`
        that a callback offers (``final_weights(trainer) -> (kind, apply) | None``), else the
        live weights. Offers are made only for what applies (an interrupted run keeps its live
        weights but for early stopping's best)."""
        offers: dict[str, Callable[[], None]] = {}
        for callback in self.callbacks:
            offer = getattr(callback, "final_weights", None)
            made = offer(self) if offer is not None else None
            if made is not None and made[0] not in offers:
                offers[made[0]] = made[1]
        for kind in FINAL_WEIGHTS:
            if kind in offers:
                offers[kind]()
                return

    # ------------------------------------------------------------------ public API

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def evaluate(self, data: Any, *, local: bool = False) -> dict[str, float]:
        """Loss and metrics over ``data``, exact over its samples: ``{"loss": ..., "accuracy": ...}``.

        Under several processes it is collective: every process calls it with the same data
        (or, with ``data={"sharded": True}``, its own share), evaluates its share, and all get
        the figures over all of it. ``local=True``: this process alone evaluates all of ``data``
        (e.g. on rank 0 only, after ``fit``); no other process takes part.

        Example:
            >>> if trainer.is_main_process:
            ...     print(trainer.evaluate((X_test, y_test), local=True))
        """
        if local or self.world_size == 1:
            return self._evaluate(self.batches(data, shuffle=False, what="evaluate data", local=True), prefix="",
                                  reduce=False)
        batches = self.batches(data, shuffle=False, what="evaluate data")
        with distributed.collective_call(self.world, self.processes.timeout, "evaluate()",
                                        alone="evaluate(data, local=True)"):
            distributed.agree_on_data(self.world, None, {"evaluate data": batches},
                                      sharded=self.data_options.sharded)
            return self._evaluate(batches, prefix="")

    def predict(self, data: Any) -> Any:
        """The model's outputs for ``data`` (inputs alone, a Dataset or a DataLoader), on the CPU."""
        outputs: list[Any] = []
        batches = make_predict_batches(data, batch_size=self.batch_size)
        with self._eval_mode():
            for inputs, _ in batches.epoch(0):
                pred = self.forward(self.on_device(inputs))
                outputs.append(map_tensors(lambda t: t.float().cpu() if t.is_floating_point() else t.cpu(), pred))
        return concatenate(outputs)

    def validate(self) -> dict[str, float]:
        """Loss and metrics of the current weights on this run's validation data (``val_*``)."""
        if not self.has_validation_data:
            raise TraincraftError("validate() needs a fit() with validation data")
        return self._evaluate(self._val_batches, prefix="val_")

    @property
    def has_validation_data(self) -> bool:
        return getattr(self, "_val_batches", None) is not None

    @property
    def train_batches(self) -> Batches:
        """The running fit's training batches."""
        return self._train_batches

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: weights, optimizer, schedule, scaler,
        callbacks, counters, history, the epoch's running sums and every random generator."""
        return resuming.state_dict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (called by ``fit(resume=...)`` after the run is set up)."""
        resuming.load_state_dict(self, state)

    @property
    def early_stopping(self) -> EarlyStopping | None:
        """The first EarlyStopping callback, if any."""
        return next((c for c in self.callbacks if isinstance(c, EarlyStopping)), None)

    @property
    def keeps_best(self) -> bool:
        """Whether early stopping keeps the best weights to restore (``restore_best``)."""
        stopper = self.early_stopping
        return stopper is not None and stopper.restore_best

    @property
    def monitor(self) -> tuple[str, str | None]:
        """The figure that says which epoch is best, and its mode: early stopping's when there is
        one, else ``val_loss`` (min; ``train_loss`` when there is no validation data)."""
        stopper = self.early_stopping
        if stopper is not None:
            return stopper.monitor, stopper.mode
        return "val_loss", "min"

    @property
    def best(self) -> dict[str, Any] | None:
        """The run's best epoch so far: ``{"epoch", "monitor", "value"}`` by :attr:`monitor`
        (``train_loss`` when no epoch has ``val_loss``), or None before any finite value."""
        stopper = self.early_stopping
        if stopper is not None:
            if stopper.best_epoch is None:
                return None
            return {"epoch": stopper.best_epoch, "monitor": stopper.monitor, "value": stopper.best_value}
        monitor = "val_loss" if any("val_loss" in r for r in self.history.epochs) else "train_loss"
        return self.history.best_by(monitor, "min")

    def log(self, message: str) -> None:
        """Print one line (main process only) where the progress goes (stderr; stdout in a notebook),
        without breaking a live bar, after the epoch's line when one is due."""
        if not self.is_main_process:
            return
        if self.progress is not None:
            self.progress.write(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def running_figures(self) -> dict[str, float]:
        """The current epoch's figures so far (reads the device: call it rarely)."""
        return {"loss": self.epoch_sums.mean("loss"), "lr": self.lr}

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

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

    def parameters_changed(self) -> None:
        """The trainable parameters changed (unfreezing): DDP, the penalty and the non-finite
        policy's snapshot follow."""
        self.nonfinite.parameters_changed(self)
        if self.ddp is not None:
            self._wrap_for_processes()
        self.penalty = Penalty(self.model, **self._penalty_args)
        self._penalize = bool(self.penalty)  # read at every step: the flag, not the check

    # ------------------------------------------------------------------ pieces of the loop

    def forward(self, inputs: Any, target: Any = None) -> Any:
        """The model on ``inputs`` (a tuple: ``model(*inputs)``, a dict: ``model(**inputs)``, with
        a dict batch's ``target`` under ``data.target_key`` when ``forward`` takes that name);
        its errors name the inputs' shapes."""
        model = self.forward_model if self.model.training else self.eval_model
        try:
            if isinstance(inputs, dict):
                if len(inputs) == 1 and not self._takes_keywords(inputs):  # {"image": x} for forward(x)
                    return model(*inputs.values())
                if target is not None and self._takes_keywords({self.data_options.target_key: None}):
                    return model(**inputs, **{self.data_options.target_key: target})
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

    def on_device(self, inputs: Any, training: bool = False) -> Any:
        """A batch's inputs on the device as the model takes them (images converted, augmented
        when ``training``, normalised)."""
        inputs = to_device(inputs, self.device)
        return inputs if self.batch_transform is None else self.batch_transform(inputs, training=training)

    def _takes_keywords(self, names: Any) -> bool:
        """Whether the model's ``forward`` takes these keyword arguments (or ``**kwargs``); its
        signature is read once."""
        if self._forward_params is None:
            import inspect

            try:
                self._forward_params = dict(inspect.signature(self.model.forward).parameters)
            except (TypeError, ValueError):
                self._forward_params = {}
        params = self._forward_params
        return any(p.kind is p.VAR_KEYWORD for p in params.values()) or all(name in params for name in names)

    def _loss_of(self, inputs: Any, target: Any) -> Callable[[], torch.Tensor]:
        """The micro-batch's mean loss (and penalty) at the current weights, computed anew each
        call: what a closure optimizer re-evaluates."""

        def loss() -> torch.Tensor:
            value = self.compute_loss(inputs, target)[0]
            if isinstance(value, SummedLoss):  # each micro-batch's value, weighted by its samples
                value = value.value
            return value + self.penalty() if self._penalize else value

        return loss

    def _adapt(self, pred: Any, target: Any) -> Any:
        # Shapes are checked once, on the first batch; later batches get the same cheap alignment.
        if self._adapt_target is None:
            self._adapt_target = losses.target_adapter(self.loss_fn, pred, target)
        return self._adapt_target(pred, target)

    def _sums_source(self) -> Any:
        """What turns the epoch's summed sums into the loss when no batch has said it yet (a
        run resumed at an epoch's end): the loss module, or a ratio's quotient."""
        loss_fn = self.loss_fn
        if loss_fn is None or isinstance(loss_fn, losses.WeightedLoss):
            return None
        return loss_fn if hasattr(loss_fn, "value_of_sums") else RATIO

    def _loss(self, pred: Any, target: Any) -> torch.Tensor | SummedLoss:
        if self._sums_of_loss is not self.loss_fn:  # looked up once per loss module
            self._sums_of_loss, self._sums_of = self.loss_fn, losses.summing(self.loss_fn)
        try:
            if self._sums_of is not None:  # not a per-sample mean: the batch's sums
                return self._sums_of(pred, target)
            return self.loss_fn(pred, target)
        except TraincraftError:
            raise
        except Exception as err:
            raise TraincraftError(
                f"the loss failed on prediction {describe(pred)} and target {describe(target)}: "
                f"{type(err).__name__}: {err}"
            ) from err

    def batches(self, data: Any, *, shuffle: bool, what: str, training: bool = False, local: bool = False) -> Batches:
        """``data`` as this trainer's batches (in-memory tensors moved to the device once).
        Under several processes each takes its shard, unless ``local`` or ``data.sharded``
        (the data is this process's own)."""
        own = local or self.data_options.sharded
        batches = make_batches(
            data, batch_size=self.batch_size, shuffle=shuffle, seed=self.seed,
            rank=0 if own else self.rank, world_size=1 if own else self.world_size, equal_steps=training, what=what,
            target_key=self.data_options.target_key, num_workers=self.data_options.num_workers,
            pin_memory=self.data_options.pin_memory, persistent_workers=self.data_options.persistent_workers,
        )
        if isinstance(batches, TensorBatches):
            batches.to(self.device)  # once: every batch is then a slice on the device
        return batches

    def _lr_figures(self) -> dict[str, float]:
        """``lr`` (first group) and ``lr/<group>`` for each group when their base LRs differ, as used
        by the epoch's last optimizer step; ``momentum`` when the schedule cycles it."""
        groups, lrs = self.optimizer.param_groups, self.state.lrs
        figures = {"lr": float(lrs[0])}
        # The decay/no-decay split alone makes groups with equal LRs: a column each only when they differ.
        if len({group.get("initial_lr", group["lr"]) for group in groups}) > 1:
            for i, (group, lr) in enumerate(zip(groups, lrs)):
                figures[f"lr/{group.get('name', i)}"] = float(lr)
        momenta = self.schedule.momenta()
        if momenta:
            figures["momentum"] = float(momenta[0])
        return figures

    def _restore_best(self, why: str) -> None:
        stopper = self.early_stopping
        if self.keeps_best and stopper is not None and stopper.restore_best_weights(self):
            self.log(f"{why}: restored the best weights (epoch {stopper.best_epoch})")

    # ------------------------------------------------------------------ several processes, events

    def _wrap_for_processes(self, ddp: Any = None) -> None:
        """DDP around the plain model for the training forward passes. Rebuilt when parameters
        become trainable: DDP only all-reduces those that were trainable when it was built."""
        compile_ = self.runtime.compile
        self.ddp = ddp if ddp is not None else distributed.wrap_model(self.model, self.world)
        self.forward_model = torch.compile(self.ddp) if compile_ else self.ddp
        self.eval_model = torch.compile(self.model) if compile_ else self.model
        self.stepper.distribute(self.ddp, self.world_size, distributed.all_true, distributed.all_reduce_sum,
                                distributed.start_sum)

    def _agree_on_stop(self) -> None:
        """Several processes: a stop asked on any of them is acted on by all, now (blocking)."""
        if self.stop_vote is not None:
            self.stop_vote.settle(self.state)

    def _emit(self, event: str) -> None:
        for handler in self.events.handlers(event):
            handler(self)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)


def progress_callback(progress: bool | str) -> ProgressBar | None:
    """The ``progress`` argument as a callback: True, ``"auto"``, ``"lines"`` or False."""
    if progress is False or progress is None:
        return None
    return ProgressBar(mode="auto" if progress is True else str(progress))


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
