"""Multi-label metrics: each sample has L independent 0/1 labels, each decided by a threshold.

pred ``(N, L)`` holds one score per label (logits, positive above ``threshold`` = 0, or
probabilities, positive above 0.5); target ``(N, L)`` holds 0/1 (int, float or bool). Each
metric streams per-label counts, so its epoch value is exact over batches and processes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from traincraft.errors import DataError, ShapeError, TraincraftError
from traincraft.metrics.base import BatchSums, DecidingMetric, _shape


class _MultilabelMetric(DecidingMetric):
    """Shared input handling: shapes, the threshold, 0/1 targets, ignored entries."""

    def _prepare(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(predicted, actual, valid, invalid_count)``, each ``(N, L)`` but the count."""
        if pred.ndim != 2 or pred.shape != target.shape:
            raise ShapeError(
                f"metric {self.name!r}: pred of shape {_shape(pred)} and target of shape "
                f"{_shape(target)}; expected both (N, L): one score and one 0/1 label per label"
            )
        if target.dtype == torch.bool:
            target = target.to(torch.uint8)
        binary = (target == 0) | (target == 1)
        kept = target != self.ignore_index if self.ignore_index is not None else torch.ones_like(binary)
        valid, invalid = binary & kept, ~binary & kept
        return pred > self.threshold, target == 1, valid, invalid.sum()

    def _check_invalid(self, invalid: Tensor) -> None:
        count = int(invalid)
        if count:
            raise DataError(
                f"metric {self.name!r}: {count} target entries are not 0 or 1; fix the labels, or "
                "set ignore_index for a value that marks entries to skip"
            )


class MultilabelAccuracy(_MultilabelMetric):
    """Share of the (sample, label) decisions that are right: 1 − scikit-learn's
    ``hamming_loss`` (torchmetrics' ``MultilabelAccuracy``, Keras' ``binary_accuracy``).

    Args:
        probabilities: pred holds probabilities (positive above 0.5), not logits (above 0).
        threshold: the decision threshold, overriding the one ``probabilities`` implies.
        ignore_index: a target value whose entries are left out.

    Example:
        >>> acc = MultilabelAccuracy(threshold=0.5)
        >>> acc.update(torch.tensor([[0.9, 0.2], [0.6, 0.7]]), torch.tensor([[1, 0], [0, 1]]))
        >>> acc.compute()
        0.75
    """

    name = "multilabel_accuracy"

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        predicted, actual, valid, invalid = self._prepare(pred, target)
        return ((predicted == actual) & valid).sum(), valid.sum(), invalid

    def finalize(self, sums: list[Tensor]) -> float:
        right, count, invalid = sums
        self._check_invalid(invalid)
        return float(right) / int(count) if int(count) else float("nan")


class SubsetAccuracy(_MultilabelMetric):
    """Share of samples whose every label is right (exact match): scikit-learn's
    ``accuracy_score`` on multi-label targets. Ignored entries do not count against a sample;
    a sample with every entry ignored is left out.

    Args:
        probabilities, threshold, ignore_index: as for :class:`MultilabelAccuracy`.
    """

    name = "subset_accuracy"

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        predicted, actual, valid, invalid = self._prepare(pred, target)
        wrong = ((predicted != actual) & valid).any(1)
        counted = valid.any(1)
        return (counted & ~wrong).sum(), counted.sum(), invalid

    def finalize(self, sums: list[Tensor]) -> float:
        right, count, invalid = sums
        self._check_invalid(invalid)
        return float(right) / int(count) if int(count) else float("nan")


_AVERAGES = ("macro", "micro", "weighted")


class MultilabelF1(_MultilabelMetric):
    """F1 = 2·TP / (predicted + actual) of each label, averaged as scikit-learn's ``f1_score``
    on multi-label targets: ``macro`` (unweighted mean over all L labels), ``micro`` (from the
    counts summed over labels) or ``weighted`` (mean weighted by each label's positives). A 0/0
    label scores 0 (scikit-learn's default ``zero_division``).

    Args:
        average: ``"macro"`` (default), ``"micro"`` or ``"weighted"``.
        probabilities, threshold, ignore_index: as for :class:`MultilabelAccuracy`.

    Example:
        >>> f1 = MultilabelF1(threshold=0.5)
        >>> f1.update(torch.tensor([[0.9, 0.2], [0.6, 0.7]]), torch.tensor([[1, 0], [0, 1]]))
        >>> round(f1.compute(), 4)
        0.8333
    """

    name = "multilabel_f1"

    def __init__(
        self,
        *,
        average: str = "macro",
        probabilities: bool = False,
        threshold: float | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(probabilities=probabilities, threshold=threshold, ignore_index=ignore_index)
        if average not in _AVERAGES:
            raise TraincraftError(
                f"metric 'multilabel_f1': average must be one of {', '.join(_AVERAGES)}, got {average!r}"
            )
        self.average = average

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        predicted, actual, valid, invalid = self._prepare(pred, target)
        predicted, actual = predicted & valid, actual & valid
        return (predicted & actual).sum(0), predicted.sum(0), actual.sum(0), invalid

    def finalize(self, sums: list[Tensor]) -> float:
        true_pos, predicted, actual, invalid = (s.double() for s in sums)
        self._check_invalid(invalid)
        if self.average == "micro":
            den = float(predicted.sum() + actual.sum())
            return 2 * float(true_pos.sum()) / den if den else 0.0
        den = predicted + actual
        per_label = torch.where(den > 0, 2 * true_pos / den.clamp_min(1.0), torch.zeros_like(den))
        if self.average == "weighted":
            total = float(actual.sum())
            return float((per_label * actual).sum()) / total if total else 0.0
        return float(per_label.mean())
