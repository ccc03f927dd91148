"""How good a run's model is, from its predictions on a held-out split.

At the end of ``fit`` the run folder's callback predicts the test split (the validation split
when there is no test split) with the run's final weights and writes ``predictions.npz``: per
sample the target and the prediction (classification: the predicted class and its probability),
its position in the data source, and the pixels of the most confidently wrong images. That file
is all the report needs to judge the model, so ``traincraft report RUN_DIR`` rebuilds the page
from the run folder alone, without the data or the model.

The figures themselves (confusion matrix, per-class precision/recall/F1, residuals, the forecast
of the test series) are computed here with numpy, from those arrays.

Example:
    >>> saved = load_predictions("runs/quickstart/20261121-101500")
    >>> matrix = confusion_matrix(saved["target"], saved["predicted"], 10)
    >>> per_class(matrix)["recall"]
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from traincraft.errors import TraincraftError

if TYPE_CHECKING:
    import torch

    from traincraft.trainer import Trainer

PREDICTIONS = "predictions.npz"
#: Pixels of this many most confidently wrong images are kept for the report's grid.
MISTAKE_IMAGES = 16


# --------------------------------------------------------------------------- predicting a split


def save_predictions(trainer: Trainer, split: Any, *, name: str, task: str, index: Any, path: str | Path) -> Path | None:
    """Predict ``split`` with the trainer's current weights and write ``predictions.npz``.

    One process predicts the whole split (call it on the main process only). Returns the path,
    or None when the outputs are not per-sample classes or values that can be judged (a model
    returning a dict, a segmentation map).
    """
    from traincraft.files import atomic_write

    outputs, targets = split_outputs(trainer, split)
    arrays: dict[str, np.ndarray] = {"split": np.array(name), "task": np.array(task)}
    n = len(targets)
    index = np.arange(n) if index is None else np.asarray(index, dtype=np.int64).reshape(-1)
    if len(index) != n:
        index = np.arange(n)
    arrays["index"] = index.astype(np.int64)
    if task == "classification":
        decided = class_decisions(outputs, targets, probabilities=_takes_probabilities(trainer))
        if decided is None:
            return None
        target, predicted, confidence = decided
        arrays.update(target=target, predicted=predicted, confidence=confidence)
        rows = confident_mistakes(target, predicted, confidence, MISTAKE_IMAGES)
        images = _image_inputs(split, rows)
        if images is not None:
            from traincraft.image_grid import displayable

            arrays.update(images=displayable(images, stretch=images.dtype != _uint8()), image_rows=rows)
    else:
        if not hasattr(outputs, "reshape") or outputs.numel() != targets.numel():
            return None
        arrays.update(target=targets.reshape(n, -1).float().numpy(), predicted=outputs.reshape(n, -1).numpy())
    return atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))


def split_outputs(trainer: Trainer, split: Any) -> tuple[Any, torch.Tensor]:
    """The model's outputs and the targets of a split, in its order, on the CPU, predicted by this
    process alone (not sharded), without autograd, as ``evaluate`` runs the model."""
    import torch

    from traincraft.data import make_batches

    options = trainer.data_options  # a Dataset is loaded as the run loads it (its worker processes)
    batches = make_batches(split, batch_size=trainer.batch_size, shuffle=False, seed=0, what="the judged split",
                           target_key=options.target_key, num_workers=options.num_workers,
                           pin_memory=options.pin_memory)
    outputs: list[Any] = []
    targets: list[torch.Tensor] = []
    model, was_training = trainer.model, trainer.model.training
    model.eval()
    try:
        with torch.inference_mode(), trainer.stepper.autocast():
            for inputs, target in batches.epoch(0):
                pred = trainer.forward(trainer.on_device(inputs))
                outputs.append(pred.float().cpu() if isinstance(pred, torch.Tensor) else pred)
                targets.append(target.cpu())
    finally:
        model.train(was_training)
    if not all(isinstance(o, torch.Tensor) for o in outputs):
        return None, torch.cat(targets)
    return torch.cat(outputs), torch.cat(targets)


def class_decisions(outputs: Any, targets: torch.Tensor, *, probabilities: bool = False) -> tuple[np.ndarray, ...] | None:
    """``(target, predicted, confidence)`` for per-sample classes: logits (or log-probabilities)
    of shape (N, C) through a softmax, one binary column through a sigmoid (or taken as the
    probability when the loss takes probabilities). Targets are class indices or one-hot rows.
    None for outputs of another shape."""
    import torch

    if not isinstance(outputs, torch.Tensor) or len(outputs) != len(targets):
        return None
    n = len(outputs)
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        p = outputs.reshape(n)
        p = p.clamp(0, 1) if probabilities else p.sigmoid()
        probs = torch.stack([1 - p, p], dim=1)
    elif outputs.ndim == 2:
        probs = outputs.softmax(dim=1)
    else:
        return None
    if targets.ndim == 2 and targets.shape == probs.shape:
        targets = targets.argmax(dim=1)
    if targets.ndim != 1:
        return None
    confidence, predicted = probs.max(dim=1)
    return (targets.long().numpy().astype(np.int64), predicted.numpy().astype(np.int64),
            confidence.numpy().astype(np.float32))


def _takes_probabilities(trainer: Trainer) -> bool:
    from traincraft import losses

    return trainer.loss_fn is not None and losses.takes_probabilities(trainer.loss_fn)


def _uint8() -> Any:
    import torch

    return torch.uint8


def _image_inputs(split: Any, rows: np.ndarray) -> Any:
    """The inputs of ``rows`` of a split when they are images ``(C, H, W)`` with 1, 3 or 4
    channels (in-memory tensors only), else None."""
    import torch

    if not isinstance(split, tuple) or not isinstance(split[0], torch.Tensor) or len(rows) == 0:
        return None
    inputs = split[0]
    if inputs.ndim != 4 or inputs.shape[1] not in (1, 3, 4) or min(inputs.shape[2:]) < 4:
        return None
    return inputs[torch.from_numpy(rows)]


def load_predictions(folder: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of a run folder's ``predictions.npz`` (None when the run has none).

    Raises:
        TraincraftError: the file is damaged.
    """
    path = Path(folder) / PREDICTIONS
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {key: saved[key] for key in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise TraincraftError(f"{path} is damaged ({err}); fit the run again to write it") from None


# --------------------------------------------------------------------------- classification


def confusion_matrix(target: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): rows are the true classes, as scikit-learn's.
    Targets outside ``0..num_classes-1`` (an ``ignore_index``) are left out."""
    import torch

    from traincraft.metrics import confusion_matrix as counts

    target, predicted = np.asarray(target, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    keep = (target >= 0) & (target < num_classes) & (predicted >= 0) & (predicted < num_classes)
    return counts(torch.from_numpy(predicted[keep]), torch.from_numpy(target[keep]), num_classes).numpy()


def per_class(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of each class from a confusion matrix; NaN where a
    rate is undefined (no prediction of the class, no sample of it), as scikit-learn's
    ``precision_recall_fscore_support(..., zero_division=np.nan)``."""
    from traincraft.metrics import per_class_table

    rows = per_class_table(np.asarray(matrix), zero_division=float("nan"))
    table = {key: np.array([row[key] for row in rows], dtype=np.float64) for key in ("precision", "recall", "f1")}
    return {**table, "support": np.array([row["support"] for row in rows], dtype=np.int64)}


def averages(table: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Macro (the mean over classes with a defined value) and support-weighted averages."""
    support = table["support"].astype(np.float64)
    result: dict[str, dict[str, float]] = {"macro avg": {}, "weighted avg": {}}
    for key in ("precision", "recall", "f1"):
        values = table[key]
        defined = ~np.isnan(values)
        result["macro avg"][key] = float(values[defined].mean()) if defined.any() else float("nan")
        weights = support[defined]
        result["weighted avg"][key] = (float((values[defined] * weights).sum() / weights.sum())
                                       if weights.sum() > 0 else float("nan"))
    return result


def confident_mistakes(target: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, count: int) -> np.ndarray:
    """Rows of the ``count`` wrong predictions made with the highest confidence, most confident
    first (ties: the earlier row first)."""
    wrong = np.flatnonzero(np.asarray(target) != np.asarray(predicted))
    order = np.lexsort((wrong, -np.asarray(confidence, dtype=np.float64)[wrong]))
    return wrong[order][:count].astype(np.int64)


# --------------------------------------------------------------------------- regression, forecasts


def regression_errors(target: np.ndarray, predicted: np.ndarray) -> list[dict[str, float]]:
    """Per output column: ``mae``, ``rmse``, ``r2`` (NaN for a constant target), ``bias`` (the
    mean residual, actual - predicted), ``median_abs`` and ``max_abs`` error."""
    target = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    predicted = np.asarray(predicted, dtype=np.float64).reshape(len(predicted), -1)
    rows = []
    for t, p in zip(target.T, predicted.T):
        residual = t - p
        total = float(((t - t.mean()) ** 2).sum())
        rows.append({
            "mae": float(np.abs(residual).mean()),
            "rmse": float(np.sqrt((residual ** 2).mean())),
            "r2": 1.0 - float((residual ** 2).sum()) / total if total > 0 else float("nan"),
            "bias": float(residual.mean()),
            "median_abs": float(np.median(np.abs(residual))),
            "max_abs": float(np.abs(residual).max()),
        })
    return rows


def forecast_series(target: np.ndarray, predicted: np.ndarray, index: np.ndarray, series: int = 1) -> dict[str, Any]:
    """The test series and its forecasts on one time axis, for the first predicted series.

    Windows are ``(N, horizon × series)``: column ``h·series + j`` is series ``j`` at ``t + h``,
    where ``t`` (``index``) is the time step of the window's first target. Returns ``time`` and
    ``actual`` (every step the windows cover), ``forecast_time`` and ``forecasts`` (one array per
    step ahead: ``forecasts[h][i]`` forecasts ``forecast_time[i] + h``), and ``horizon``.
    """
    target = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    predicted = np.asarray(predicted, dtype=np.float64).reshape(len(predicted), -1)
    series = max(1, series)
    horizon = max(1, target.shape[1] // series)
    index = np.asarray(index, dtype=np.int64)
    actual: dict[int, float] = {}
    for h in range(horizon):
        for t, value in zip(index + h, target[:, h * series]):
            actual.setdefault(int(t), float(value))
    time = np.array(sorted(actual), dtype=np.int64)
    return {
        "time": time,
        "actual": np.array([actual[int(t)] for t in time]),
        "forecast_time": index,
        "forecasts": [predicted[:, h * series] for h in range(horizon)],
        "horizon": horizon,
    }
