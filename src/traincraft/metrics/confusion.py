"""The confusion matrix and the per-class table: tables for results.json and the report, not columns.

Both stream like every metric (a C×C matrix of counts that batches add to and processes sum), but
their value is not one number: :class:`traincraft.metrics.MetricSet` leaves them out of
``compute()`` (the history's columns) and returns them from ``tables()``. The functions
:func:`confusion_matrix` and :func:`per_class_table` compute the same from whole tensors.

Example:
    >>> cm = confusion_matrix(torch.tensor([[2.0, 0.1], [0.3, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    >>> cm.tolist()
    [[1, 0], [1, 1]]
    >>> per_class_table(cm, ["cat", "dog"])[1]
    {'class': 'dog', 'precision': 1.0, 'recall': 0.5, 'f1': 0.6666666666666666, 'support': 2}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from traincraft.errors import ShapeError, TraincraftError
from traincraft.metrics.base import BatchSums
from traincraft.metrics.classification import _ClassificationMetric


class ConfusionMatrix(_ClassificationMetric):
    """Counts of (target class, predicted class) pairs: rows are targets, columns predictions
    (scikit-learn's ``confusion_matrix`` layout). ``compute()`` gives a list of C lists of ints.

    Not a history column: a :class:`MetricSet` returns it from ``tables()``; a run writes it to
    ``results.json`` under ``"confusion_matrix"``.

    Args:
        probabilities, threshold, ignore_index: as for :class:`traincraft.metrics.Accuracy`.
    """

    name = "confusion_matrix"
    scalar = False  # a table, not a number: MetricSet.tables(), not compute()

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        binary, scores, labels, valid, invalid = self._prepare(pred, target)
        classes = self.num_classes or 2
        predicted = self._predicted(binary, scores).reshape(-1)
        cell = labels.reshape(-1) * classes + predicted
        # index_add_ rather than bincount: bincount reads its maximum back to the host on CUDA.
        counts = torch.zeros(classes * classes, dtype=torch.int64, device=cell.device)
        counts.index_add_(0, cell, valid.reshape(-1).long())
        return counts.reshape(classes, classes), invalid

    def finalize(self, sums: list[Tensor]) -> Any:
        counts, invalid = sums
        self._check_invalid(invalid)
        return counts.tolist()

    def compute(self) -> Any:
        """The matrix as a list of lists of ints (rows: targets); None before any update."""
        if not self._sums:
            return None
        return self.finalize([s.detach().cpu() for s in self.sums()])


class PerClass(ConfusionMatrix):
    """Precision, recall, F1 and support of each class: a list of rows (see
    :func:`per_class_table`), written to ``results.json`` under ``"per_class"``.

    Args:
        probabilities, threshold, ignore_index: as for :class:`traincraft.metrics.Accuracy`.
        class_names: a name for each class index (the rows' ``"class"``); indices when None.
    """

    name = "per_class"

    def __init__(
        self,
        *,
        class_names: Sequence[str] | None = None,
        probabilities: bool = False,
        threshold: float | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(probabilities=probabilities, threshold=threshold, ignore_index=ignore_index)
        self.class_names = None if class_names is None else [str(c) for c in class_names]

    def finalize(self, sums: list[Tensor]) -> Any:
        return per_class_table(super().finalize(sums), self.class_names)


def confusion_matrix(
    pred: Any,
    target: Any,
    num_classes: int | None = None,
    *,
    probabilities: bool = False,
    threshold: float | None = None,
) -> Tensor:
    """The C×C confusion matrix of whole tensors (rows: targets, columns: predictions), int64.

    ``pred`` is what the metrics take (scores ``(N, C)``, binary scores ``(N,)`` or ``(N, 1)``),
    or predicted class indices: an integer tensor of the target's shape. Arrays and lists are
    converted with ``torch.as_tensor``; the result is a CPU tensor (``.numpy()`` for an array).

    Args:
        pred: scores or predicted class indices.
        target: class indices (0/1 for binary scores).
        num_classes: the matrix's size; from the scores' class dimension when None (and from the
            largest index for predicted indices).
        probabilities, threshold: how binary scores are decided, as for the metrics.

    Example:
        >>> confusion_matrix(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 1, 1, 2]), 3).tolist()
        [[1, 0, 0], [0, 1, 1], [0, 1, 0]]
    """
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if not pred.is_floating_point() and pred.shape == target.shape and pred.ndim >= 1:
        if pred.numel() and int(torch.minimum(pred.min(), target.min())) < 0:
            raise TraincraftError("confusion_matrix: class indices must be >= 0")
        largest = int(torch.maximum(pred.max(), target.max())) + 1 if pred.numel() else 0
        classes = largest if num_classes is None else int(num_classes)
        if largest > classes:
            raise TraincraftError(
                f"confusion_matrix: class index {largest - 1} given with num_classes={classes}"
            )
        cell = target.reshape(-1).long() * classes + pred.reshape(-1).long()
        counts = torch.zeros(classes * classes, dtype=torch.int64).index_add_(
            0, cell.cpu(), torch.ones_like(cell, device="cpu")
        )
        return counts.reshape(classes, classes)
    metric = ConfusionMatrix(probabilities=probabilities, threshold=threshold)
    metric.update(pred, target)
    matrix = torch.tensor(metric.compute(), dtype=torch.int64)
    if num_classes is not None and matrix.shape[0] != num_classes:
        raise ShapeError(
            f"confusion_matrix: pred of shape {tuple(pred.shape)} has {matrix.shape[0]} classes, "
            f"not num_classes={num_classes}"
        )
    return matrix


def per_class_table(confusion: Any, class_names: Sequence[str] | None = None, *,
                    zero_division: float = 0.0) -> list[dict[str, Any]]:
    """One row per class from a confusion matrix (rows: targets): ``{"class", "precision",
    "recall", "f1", "support"}``, as scikit-learn's ``precision_recall_fscore_support`` with
    ``average=None``; a 0/0 score is ``zero_division`` (0, scikit-learn's default; NaN for
    "undefined").

    Args:
        confusion: a C×C matrix (tensor, array or nested lists), e.g. from
            :func:`confusion_matrix` or ``results.json``'s ``"confusion_matrix"``.
        class_names: a name for each class; the class index when None.

    Example:
        >>> per_class_table([[3, 1], [0, 2]])[0]
        {'class': 0, 'precision': 1.0, 'recall': 0.75, 'f1': 0.8571428571428571, 'support': 4}
    """
    counts = torch.as_tensor(confusion, dtype=torch.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ShapeError(f"per_class_table: expected a square C×C matrix, got shape {tuple(counts.shape)}")
    if class_names is not None and len(class_names) != counts.shape[0]:
        raise TraincraftError(
            f"per_class_table: {len(class_names)} class names for {counts.shape[0]} classes"
        )
    tp, predicted, actual = counts.diagonal(), counts.sum(0), counts.sum(1)

    def ratio(num: Tensor, den: Tensor) -> list[float]:
        return torch.where(den > 0, num / den.clamp_min(1.0), torch.full_like(num, zero_division)).tolist()

    precision, recall, f1 = ratio(tp, predicted), ratio(tp, actual), ratio(2 * tp, predicted + actual)
    names: Sequence[Any] = class_names if class_names is not None else range(counts.shape[0])
    return [
        {"class": name, "precision": p, "recall": r, "f1": f, "support": int(s)}
        for name, p, r, f, s in zip(names, precision, recall, f1, actual.tolist())
    ]
