"""Loggers: where the figures of a run go besides the history.

``csv`` is always on when a run folder is given: ``metrics.csv``, one row per epoch, rewritten
atomically at the end of each epoch (so it is complete and readable at any instant).

``tensorboard`` (:class:`TensorBoardLogger`) and ``mlflow`` (:class:`MLflowLogger`) add, every
``log_every_n_steps`` optimizer steps, the loss, the learning rate and the gradient norm, and at
every epoch end each figure of the history row. Device values are read only at those steps.
Their packages are optional: a logger whose package is missing fails when it is built, before
training, naming the extra to install.

Example:
    >>> callbacks = loggers.build(["csv", "tensorboard"], run_dir)
    >>> trainer = Trainer(model, loss="mse", run_dir=run_dir, callbacks=callbacks)
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traincraft.callbacks.base import Callback
from traincraft.callbacks.checkpoint import mirror_interval
from traincraft.errors import TraincraftError
from traincraft.registry import Registry, split_spec

if TYPE_CHECKING:
    import torch

    from traincraft.trainer import Trainer

__all__ = ["LOGGERS", "CSVLogger", "MLflowLogger", "TensorBoardLogger", "build", "run_params"]


class CSVLogger(Callback):
    """Writes ``metrics.csv`` in ``folder`` after every epoch: the newest version at most every
    :data:`traincraft.files.MIRROR_SECONDS`, and at the end of ``fit`` (see :func:`mirror_interval`)."""

    def __init__(self, folder: str | Path, filename: str = "metrics.csv"):
        self.path = Path(folder) / filename

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.is_main_process:
            trainer.history.to_csv(self.path, at_most_every=mirror_interval(trainer))  # the loop does not wait


def require(module: str, logger: str) -> None:
    """Fail now (not after an epoch of training) when an optional package is missing."""
    if importlib.util.find_spec(module) is None:
        raise TraincraftError(
            f"logger {logger!r} needs the {module} package, which is not installed: "
            f"pip install 'traincraft[{logger}]'"
        )


# --------------------------------------------------------------------------- shared logic


class _FigureLogger(Callback):
    """Collects what the tensorboard and mlflow loggers write; subclasses say where it goes.

    Per ``log_every_n_steps`` optimizer steps: ``step/loss`` (the mean training loss over the
    samples since the previous logged step of the epoch), ``step/lr`` (and ``step/lr/<group>``
    when groups differ) and ``step/grad_norm`` (before clipping). Per epoch: ``epoch/<figure>``
    for each figure of the history row. Every value is logged against the optimizer step.
    """

    def __init__(self, folder: str | Path, log_every_n_steps: int):
        if int(log_every_n_steps) < 1:
            raise TraincraftError(f"log_every_n_steps must be >= 1, got {log_every_n_steps}")
        self.folder = Path(folder)
        self.every = int(log_every_n_steps)
        self._active = False
        self._pending: tuple[int, list[float], torch.Tensor | None] | None = None
        self._mark: tuple[int, torch.Tensor, int] | None = None  # (epoch, loss sum, samples)

    # -- what subclasses implement
    def open(self, trainer: Trainer) -> None: ...

    def write(self, figures: dict[str, float], step: int) -> None: ...

    def close(self, trainer: Trainer) -> None: ...

    # -- events
    def on_fit_start(self, trainer: Trainer) -> None:
        self._active = trainer.is_main_process
        self._pending, self._mark = None, None
        if self._active:
            self.open(trainer)

    def on_before_step(self, trainer: Trainer) -> None:
        step = trainer.state.step + 1
        if not self._active or step % self.every:
            return
        self._pending = (step, list(trainer.state.lrs), self._grad_norm(trainer))  # the step's LRs, as recorded

    def on_step_end(self, trainer: Trainer) -> None:
        step = trainer.state.step
        if self._pending is None or self._pending[0] != step:
            return  # not a logging step, or the fp16 scaler skipped the step it was read for
        _, lrs, grad_norm = self._pending
        self._pending = None
        figures = {"step/lr": lrs[0]}
        if len(set(lrs)) > 1:
            groups = trainer.optimizer.param_groups
            figures.update({f"step/lr/{g.get('name', i)}": lr for i, (g, lr) in enumerate(zip(groups, lrs))})
        loss = self._interval_loss(trainer)
        if loss is not None:
            figures["step/loss"] = loss
        if grad_norm is not None:
            figures["step/grad_norm"] = float(grad_norm)  # a logging step: one read
        self.write(figures, step)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if not self._active or not trainer.history.epochs:
            return
        row = trainer.history.epochs[-1]
        figures = {f"epoch/{k}": float(v) for k, v in row.items() if k not in ("epoch", "step")}
        self.write({**figures, "epoch/epoch": float(row["epoch"])}, trainer.state.step)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self._active:
            self._active = False
            self.close(trainer)

    # -- helpers
    @staticmethod
    def _grad_norm(trainer: Trainer) -> torch.Tensor | None:
        """The step's gradient norm (before clipping), as a device tensor: the stepper's when it
        computes one, else computed here, on logging steps only."""
        import torch

        stepper = trainer.stepper
        if stepper.clip_grad_norm is not None or stepper.check_every_step:
            norm = stepper.grad_norm
            return None if norm is None else norm.detach()
        grads = [p.grad for p in stepper.params if p.grad is not None]
        if not grads:
            return None
        return torch.nn.utils.get_total_norm(grads, norm_type=stepper.clip_norm_type, foreach=None)

    def _interval_loss(self, trainer: Trainer) -> float | None:
        sums = trainer.epoch_sums
        total, count = sums.sums.get("loss"), sums.counts.get("loss", 0)
        if total is None or count == 0:
            return None
        epoch = trainer.state.epoch
        mark = self._mark
        self._mark = (epoch, total.detach().clone(), count)
        if mark is not None and mark[0] == epoch and count > mark[2]:
            return float(total - mark[1]) / (count - mark[2])
        return float(total) / count


def run_params(trainer: Trainer) -> dict[str, Any]:
    """The run's hyperparameters as flat ``key: value`` pairs, what the user chose: with a recipe,
    the keys it sets to something other than their default (dotted: ``optimizer.lr``,
    ``early_stopping.patience``; :func:`chosen_keys`); without one, the trainer's main settings
    (those that are set). Then a few facts of the run: ``parameters`` (the model's size),
    ``train_samples`` and ``val_samples``."""
    recipe = getattr(trainer, "recipe", None)
    if recipe is not None:
        params = chosen_keys(recipe)
    else:
        group = trainer.optimizer.param_groups[0]
        settings = {
            "model": type(trainer.model).__name__,
            "loss": type(trainer.loss_fn).__name__ if trainer.loss_fn is not None else None,
            "optimizer": type(trainer.optimizer).__name__,
            "lr": float(group.get("initial_lr", group["lr"])),
            "weight_decay": float(group.get("weight_decay", 0.0)),
            "batch_size": trainer.batch_size,
            "max_epochs": trainer.max_epochs,
            "max_steps": trainer.max_steps,
            "accumulate": trainer.stepper.accumulate,
            "precision": trainer.stepper.precision,
            "clip_grad_norm": trainer.stepper.clip_grad_norm,
            "schedule": None if trainer.schedule_spec is None else str(trainer.schedule_spec),
            "seed": trainer.seed,
        }
        params = {k: v for k, v in settings.items() if v is not None}
    return {**params, **run_facts(trainer)}


def run_facts(trainer: Trainer) -> dict[str, int]:
    """The model's size and the data's: ``parameters``, ``train_samples``, ``val_samples``."""
    facts = {"parameters": sum(p.numel() for p in trainer.model.parameters())}
    for name, batches in (("train", getattr(trainer, "_train_batches", None)),
                          ("val", getattr(trainer, "_val_batches", None))):
        if batches is not None:
            facts[f"{name}_samples"] = int(batches.num_samples)
    return facts


def chosen_keys(recipe: Any) -> dict[str, Any]:
    """The keys of ``recipe`` that were written and differ from their default, flat and dotted
    (``{"optimizer.lr": 0.003, "train.max_epochs": 40, ...}``), and each section's ``name``
    (``optimizer.name``, ``model.name``); a section written with only its defaults (``ema: {}``)
    is ``True``. The saved ``recipe.yaml`` of a run, which spells out every
    default, gives the same keys as the recipe the run started from."""
    out: dict[str, Any] = {}
    _chosen(recipe, "", out)
    return out


def _chosen(model: Any, prefix: str, out: dict[str, Any]) -> None:
    from pydantic import BaseModel

    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = f"{prefix}{name}"
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            before = len(out)
            _chosen(value, f"{key}.", out)
            if default is None and len(out) == before:
                out[key] = True  # switched on, with its defaults
            continue
        named = bool(prefix) and name == "name"  # a section's name (optimizer.name: adamw) says what it is
        if not named and (name not in model.model_fields_set or
                          (not field.is_required() and _plain(value) == _plain(default))):
            continue
        _flatten(_plain(value), f"{key}.", out)
    for name, value in (model.model_extra or {}).items():  # a builder's own keys (model.channels)
        _flatten(_plain(value), f"{prefix}{name}.", out)


def _plain(value: Any) -> Any:
    """A recipe value as JSON-like data (sections as dicts), to compare and to flatten."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}{key}.", out)
    elif isinstance(value, (bool, int, float, str)):
        out[prefix[:-1]] = value
    else:  # None, lists, empty mappings: their JSON text
        out[prefix[:-1]] = json.dumps(value)


def final_metrics(trainer: Trainer, folder: Path) -> dict[str, float]:
    """The run's outcome: the best monitored value, the last epoch's figures, the test figures."""
    figures: dict[str, float] = {}
    best = trainer.best
    if best is not None:
        figures[f"best_{best['monitor']}"] = float(best["value"])
        figures["best_epoch"] = float(best["epoch"])
    if trainer.history.epochs:
        row = trainer.history.epochs[-1]
        figures.update({f"final_{k}": float(v) for k, v in row.items() if k.startswith(("train_", "val_"))})
    results = folder / "results.json"
    if results.is_file():  # written by the run folder just before, when there is a test split
        test = json.loads(results.read_text()).get("test") or {}
        figures.update({f"test_{k}": float(v) for k, v in test.items()})
    return {k: v for k, v in figures.items() if math.isfinite(v)}


# --------------------------------------------------------------------------- TensorBoard


class TensorBoardLogger(_FigureLogger):
    """Writes TensorBoard event files with torch's ``SummaryWriter`` into ``folder/tensorboard``.

    Per ``log_every_n_steps`` optimizer steps ``step/loss``, ``step/lr``, ``step/grad_norm``; per
    epoch ``epoch/<figure>``; at the end the hyperparameters with the final figures (the HPARAMS
    tab: ``hparam/best_val_loss``, ``hparam/final_val_accuracy``, ``hparam/test_loss``, ...).
    A resumed run drops the events it logged after its checkpoint (``purge_step``).

    Args:
        folder: the run folder.
        log_every_n_steps: how often to log the per-step figures, in optimizer steps.
        hparams: the hyperparameters to show; default :func:`run_params`.
        subdir: the folder under ``folder`` for the event files.

    Example:
        >>> Trainer(model, loss="mse", run_dir="runs/a", callbacks=[TensorBoardLogger("runs/a")])
        >>> # tensorboard --logdir runs
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        log_every_n_steps: int = 50,
        hparams: Mapping[str, Any] | None = None,
        subdir: str = "tensorboard",
    ):
        require("tensorboard", "tensorboard")
        super().__init__(folder, log_every_n_steps)
        self.log_dir = self.folder / subdir
        self.hparams = dict(hparams) if hparams is not None else None
        self.writer: Any = None

    def open(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run logs again what came after its checkpoint: drop the old copies.
        purge = trainer.state.step + 1 if trainer.state.step > 0 else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge)

    def write(self, figures: dict[str, float], step: int) -> None:
        wall = time.time()
        for tag, value in figures.items():
            self.writer.add_scalar(tag, value, global_step=step, walltime=wall)

    def on_epoch_end(self, trainer: Trainer) -> None:
        super().on_epoch_end(trainer)
        if self.writer is not None and self._active:
            self.writer.flush()

    def close(self, trainer: Trainer) -> None:
        try:
            params = self.hparams if self.hparams is not None else run_params(trainer)
            metrics = {f"hparam/{k}": v for k, v in final_metrics(trainer, self.folder).items()}
            if trainer.state.stop_reason is not None and metrics:
                hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
                # run_name=".": the hparams go next to the scalars, not into a timestamped subfolder.
                self.writer.add_hparams(hparams, metrics, run_name=".", global_step=trainer.state.step)
        finally:
            self.writer.close()


# --------------------------------------------------------------------------- MLflow

#: The standard-library loggers of MLflow and of the database layers under it, whose INFO lines
#: ("Creating initial MLflow database tables...") would land between the epoch lines.
QUIET_LOGGERS = ("mlflow", "alembic", "sqlalchemy")


@contextlib.contextmanager
def quiet_loggers(names: Sequence[str] = QUIET_LOGGERS) -> Iterator[None]:
    """Only warnings and errors from these libraries' loggers while the block runs; their levels
    are put back after it (the user's own MLflow use keeps its settings)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            if logger.getEffectiveLevel() < logging.WARNING:
                logger.setLevel(logging.WARNING)
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)



class MLflowLogger(_FigureLogger):
    """Logs a run to MLflow: parameters, figures by step, and the run's files as artifacts.

    The store is ``MLFLOW_TRACKING_URI`` when set, else a local one in the run folder:
    ``mlruns/mlflow.db`` (SQLite, MLflow's maintained local backend). A SQLite store's artifacts go
    into ``artifacts/`` beside its file. Figures are buffered in memory and sent once per epoch. At the end:
    ``best_<monitor>``, ``final_<figure>``, ``test_<figure>``; the artifacts ``best.safetensors``,
    ``report.html``, ``plots/``, ``recipe.yaml``, ``metrics.csv``, ``summary.json`` (those that
    exist); the status FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED (an exception). A resumed run
    continues the same MLflow run.

    Args:
        folder: the run folder.
        log_every_n_steps: how often to log the per-step figures, in optimizer steps.
        tracking_uri: overrides ``MLFLOW_TRACKING_URI`` and the local default.
        experiment: the experiment's name; default the recipe's name, else ``"traincraft"``.
        run_name: default the run folder's name.
        params: the parameters to log; default :func:`run_params`.
        log_weights: upload ``best.safetensors``.

    Example:
        >>> Trainer(model, loss="mse", run_dir="runs/a", callbacks=[MLflowLogger("runs/a")])
        >>> # mlflow ui --backend-store-uri sqlite:///runs/a/mlruns/mlflow.db
    """

    ARTIFACTS = ("best.safetensors", "report.html", "recipe.yaml", "metrics.csv", "summary.json", "results.json")

    def __init__(
        self,
        folder: str | Path,
        *,
        log_every_n_steps: int = 50,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
        log_weights: bool = True,
    ):
        require("mlflow", "mlflow")
        super().__init__(folder, log_every_n_steps)
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.params = dict(params) if params is not None else None
        self.log_weights = log_weights
        self.client: Any = None
        self.run_id: str | None = None
        self._resumed = False
        self._buffer: list[Any] = []

    def uri(self) -> str:
        """Where the run is logged (see the class docs)."""
        if self.tracking_uri:
            return self.tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return "sqlite:///" + str((self.folder / "mlruns" / "mlflow.db").resolve())

    def open(self, trainer: Trainer) -> None:
        import mlflow.tracking  # noqa: F401  (first: importing mlflow sets its loggers' levels)

        with quiet_loggers():
            self._open(trainer)

    def _open(self, trainer: Trainer) -> None:
        from mlflow.tracking import MlflowClient

        uri = self.uri()
        # A SQLite store keeps its artifacts beside its file (MLflow's default is ./mlruns).
        database = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        if self._resumed and self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            self._resumed = False
            return
        recipe = getattr(trainer, "recipe", None)
        name = self.experiment or (recipe.name if recipe is not None else "traincraft")
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            artifacts = (database.parent / "artifacts").resolve().as_uri() if database is not None else None
            experiment_id = self.client.create_experiment(name, artifact_location=artifacts)
        run = self.client.create_run(
            experiment_id, run_name=self.run_name or self.folder.name,
            tags={"traincraft.run_dir": str(self.folder.resolve())},
        )
        self.run_id = run.info.run_id
        self._log_params(self.params if self.params is not None else run_params(trainer))

    def _log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k)[:250], str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def write(self, figures: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, v, now, step) for k, v in figures.items() if math.isfinite(v))

    def flush(self) -> None:
        """Send the buffered figures (at every epoch end and at the end)."""
        with quiet_loggers():
            while self._buffer:
                chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
                self.client.log_batch(self.run_id, metrics=chunk)

    def on_epoch_end(self, trainer: Trainer) -> None:
        super().on_epoch_end(trainer)
        if self._active:
            self.flush()

    def close(self, trainer: Trainer) -> None:
        with quiet_loggers():
            self._close(trainer)

    def _close(self, trainer: Trainer) -> None:
        reason = trainer.state.stop_reason
        status = "FAILED" if reason is None else "KILLED" if reason in ("interrupted", "terminated") else "FINISHED"
        try:
            self.write(final_metrics(trainer, self.folder), trainer.state.step)
            self.flush()
            for name in self.ARTIFACTS:
                path = self.folder / name
                if path.is_file() and (self.log_weights or name != "best.safetensors"):
                    self.client.log_artifact(self.run_id, str(path))
            if (self.folder / "plots").is_dir():
                self.client.log_artifacts(self.run_id, str(self.folder / "plots"), "plots")
        finally:
            self.client.set_terminated(self.run_id, status=status)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")
        self._resumed = self.run_id is not None


# --------------------------------------------------------------------------- by name

LOGGERS = Registry("logger")
LOGGERS.add("tensorboard", TensorBoardLogger, aliases=("tb",), doc="TensorBoard event files (extra: tensorboard)")
LOGGERS.add("mlflow", MLflowLogger, doc="an MLflow run (extra: mlflow)")


def build(specs: Sequence[Any], folder: str | Path | None) -> list[Callback]:
    """The logger callbacks for ``specs``: names (``"tensorboard"``), dicts (``{"name":
    "tensorboard", "log_every_n_steps": 10}``) or Callback objects (kept as they are).

    ``"csv"`` adds nothing: the trainer writes ``metrics.csv`` whenever it has a run folder.
    Missing packages fail here, before training.

    Raises:
        UnknownNameError: an unknown logger name (with the closest names).
        TraincraftError: a logger needs a run folder and there is none, or its package is missing.

    Example:
        >>> build(["csv", {"name": "tensorboard", "log_every_n_steps": 10}], "runs/a")
        [<traincraft.loggers.TensorBoardLogger object at ...>]
    """
    if isinstance(specs, (str, Mapping)):
        specs = [specs]
    callbacks: list[Callback] = []
    for spec in specs:
        if isinstance(spec, Callback):
            callbacks.append(spec)
            continue
        name, kwargs = split_spec(spec, "logger")
        if name.strip().lower() == "csv":
            continue
        canonical = LOGGERS.canonical(name)
        if folder is None:
            raise TraincraftError(f"logger {canonical!r} writes into the run folder: give run_dir")
        callbacks.append(LOGGERS.create({"name": canonical, **kwargs}, folder))
    return callbacks
