"""One trial: an ordinary run of the recipe with the trial's values, its figure reported to
Optuna after every epoch (so that a pruner can stop it), and how it ended told to the study.

A trial's value is the best figure of its epochs (the one early stopping restores). Trials cut
short by Ctrl-C or by a worker that went away are marked so that running again makes them up.

A trial writes no checkpoints, no report and no evaluation at its end (unless the search asks
for the report). It keeps the weights of its value's epoch (``best.safetensors`` and
``best.json`` in its folder) while it may be the study's best: the search then deletes those of
every finished trial but the best, so that ``traincraft evaluate STUDY/trial-N`` works for the
best trial.
"""

from __future__ import annotations

import json
import math
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traincraft.callbacks.base import Callback
from traincraft.callbacks.monitor import Monitor
from traincraft.errors import TraincraftError
from traincraft.tuning.lost import lost_for_good
from traincraft.tuning.recipes import TRIAL_ATTR, trial_recipe
from traincraft.tuning.space import _release, recipe_with
from traincraft.tuning.storages import Heartbeat, study_storage

if TYPE_CHECKING:
    import optuna

    from traincraft.trainer import Trainer
    from traincraft.tuning.study import _Plan, _Stop

__all__ = ["MetricNotReported"]

WEIGHTS = ("best.safetensors", "best.json")


class MetricNotReported(TraincraftError):
    """The tuned metric is not among the figures a trial reports: every trial would fail."""


class _Reporter(Callback):
    """Reports the tuned figure to the trial after every epoch and stops a pruned trial (and
    a trial whose worker was asked to stop before it began, or lost its parent process).

    On every improvement of the figure that beats ``to_beat`` (the study's best when the trial
    started; None: there was none), it writes the weights just validated to ``run_dir``."""

    def __init__(
        self,
        trial: optuna.Trial,
        metric: str,
        mode: str,
        stop: _Stop,
        run_dir: Path | None = None,
        to_beat: float | None = None,
    ):
        self.trial = trial
        self.monitor = Monitor(metric, mode)
        self.stop = stop
        self.run_dir, self.to_beat = run_dir, to_beat
        self.best_epoch: int | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.monitor.reset()
        self.best_epoch = None
        if self.stop.requested:
            trainer.state.request_stop("interrupted")

    def on_validation_end(self, trainer: Trainer) -> None:
        if self.stop.parent_gone():
            trainer.state.request_stop("interrupted")
        try:
            value = self.monitor.value_from(trainer.state.metrics)
        except TraincraftError as err:
            raise MetricNotReported(f"tune.metric: {err}") from None
        if not math.isfinite(value):
            return  # nan is no evidence for the pruner; the best finite value stays
        epoch = trainer.state.epoch
        if self.monitor.update(value):
            self.best_epoch = epoch
            self.keep_weights(trainer, value, epoch)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            trainer.state.request_stop("pruned")

    def keep_weights(self, trainer: Trainer, value: float, epoch: int, *, now: bool = False) -> None:
        """The model's weights as the trial's, when they may be the study's best: at most
        every few seconds during the fit (its end writes the last version), or ``now``."""
        if self.run_dir is None or not self.may_be_best(value):
            return
        from traincraft.callbacks.checkpoint import mirror_interval
        from traincraft.checkpoint import save_weights
        from traincraft.files import atomic_write_text

        every = None if now else mirror_interval(trainer)
        save_weights(trainer.model, self.run_dir / WEIGHTS[0], at_most_every=every)
        best = {"epoch": epoch, "step": trainer.state.step, "monitor": self.monitor.monitor,
                "value": value}
        atomic_write_text(self.run_dir / WEIGHTS[1], json.dumps(best, indent=2), at_most_every=every)

    def may_be_best(self, value: float) -> bool:
        if self.to_beat is None:
            return True
        return value < self.to_beat if self.monitor.mode == "min" else value > self.to_beat

    @property
    def best(self) -> float | None:
        return None if self.best_epoch is None else self.monitor.best


@dataclass
class _Fitted:
    reason: str | None
    epochs: int
    value: float | None
    best_epoch: int | None


@dataclass
class _Outcome:
    number: int
    state: str  # complete | pruned | failed | interrupted
    value: float | None = None
    epochs: int = 0
    error: str | None = None
    seconds: float = 0.0
    values: dict[str, Any] = field(default_factory=dict)


def _fit_trial(
    plan: _Plan,
    values: dict[str, Any],
    run_dir: Path,
    reporter: _Reporter,
    built: list[weakref.ref[Any]],
) -> _Fitted:
    from traincraft.trainer import Trainer

    recipe = recipe_with(plan.trial_raw, values)
    # A trial cut short is run again as a new trial, never resumed: no resume checkpoints.
    trainer = Trainer.from_recipe(
        recipe,
        run_dir=run_dir,
        progress=False,
        callbacks=[reporter],
        checkpoint=False,
        report=plan.report,
    )
    built.extend([weakref.ref(trainer), weakref.ref(trainer.model), weakref.ref(trainer.optimizer)])
    trainer.fit()
    value, best_epoch = reporter.best, reporter.best_epoch
    stop = recipe.early_stopping
    best = trainer.history.best
    if stop is not None and stop.restore_best and best and best["monitor"] == plan.section.metric:
        # The weights the run keeps are early stopping's best: the trial's value is theirs.
        value, best_epoch = float(best["value"]), int(best["epoch"])
        if best_epoch != reporter.best_epoch:  # min_delta: not the epoch the reporter kept
            reporter.keep_weights(trainer, value, best_epoch, now=True)
    fitted = _Fitted(trainer.state.stop_reason, trainer.state.epoch, value, best_epoch)
    del trainer, recipe
    return fitted


def _run_trial(plan: _Plan, study: optuna.Study, trial: optuna.Trial, stop: _Stop) -> _Outcome:
    """Fit one trial and tell the study how it ended. The model, optimizer and data are
    released before this returns, whatever happened."""
    from optuna.trial import TrialState

    started = time.perf_counter()
    values = plan.values(trial.params)
    run_dir = plan.study_dir / f"trial-{trial.number}"
    trial.set_user_attr("values", values)
    trial.set_user_attr("run_dir", str(run_dir))
    outcome = _Outcome(trial.number, "failed", values=values)
    reporter = _Reporter(
        trial, plan.section.metric, plan.mode, stop, run_dir=run_dir, to_beat=_study_best(study)
    )
    built: list[weakref.ref[Any]] = []
    try:
        # The recipe it trains, kept in the study: best.yaml is written from it.
        trial.set_user_attr(TRIAL_ATTR, trial_recipe(plan.raw, values))
        with Heartbeat(study_storage(study), trial._trial_id):
            fitted = _fit_trial(plan, values, run_dir, reporter, built)
    except KeyboardInterrupt:
        fitted = _Fitted("interrupted", 0, None, None)
    except MetricNotReported as err:
        trial.set_user_attr("error", str(err))
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as err:  # noqa: BLE001 - a failing trial is recorded and the study goes on
        outcome.error = _one_line(err)
        fitted = None
    _release(built)  # after the except clause: its traceback held the trial's frames
    outcome.seconds = time.perf_counter() - started
    if fitted is None:
        trial.set_user_attr("error", outcome.error)
        study.tell(trial, state=TrialState.FAIL)
        return outcome
    outcome.epochs = fitted.epochs
    trial.set_user_attr("epochs", fitted.epochs)
    if fitted.reason in ("interrupted", "terminated"):
        # Not counted among the done trials: running again makes it up.
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)
        outcome.state = "interrupted"
    elif fitted.reason == "pruned":
        # Optuna gives a pruned trial its last reported figure as its value.
        outcome.state, outcome.value = "pruned", study.tell(trial, state=TrialState.PRUNED).value
    elif fitted.value is None:
        outcome.error = f"{plan.section.metric} was never finite (the run diverged)"
        trial.set_user_attr("error", outcome.error)
        study.tell(trial, state=TrialState.FAIL)
    else:
        trial.set_user_attr("best_epoch", fitted.best_epoch)
        study.tell(trial, fitted.value)
        outcome.state, outcome.value = "complete", fitted.value
    return outcome


def _study_best(study: optuna.Study) -> float | None:
    try:
        return float(study.best_value)
    except ValueError:
        return None


def _one_line(err: BaseException) -> str:
    text = str(err) if isinstance(err, TraincraftError) else f"{type(err).__name__}: {err}"
    return " ".join(text.split())


def _counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Done by itself: complete, pruned, or failed with an error of its own (or lost again
    after it was queued again as often as allowed). Trials cut short by Ctrl-C or by a worker
    that went away are not counted: running again, or another worker, makes them up."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and ("error" in trial.user_attrs or lost_for_good(trial))


def _trial_label(trial: optuna.trial.FrozenTrial) -> str:
    """complete, pruned, failed, interrupted, abandoned, skipped, running or waiting."""
    from optuna.trial import TrialState

    if trial.state == TrialState.FAIL:
        if "error" in trial.user_attrs or lost_for_good(trial):
            return "failed"
        if trial.user_attrs.get("surplus"):
            return "skipped"
        return "interrupted" if trial.user_attrs.get("interrupted") else "abandoned"
    return trial.state.name.lower()
