"""Classification metrics from per-batch counts: accuracy, top-k accuracy, macro precision/recall/F1."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from traincraft.errors import DataError, ShapeError, TraincraftError
from traincraft.metrics.base import BatchSums, DecidingMetric, _shape


def _classification_layout(pred: Tensor, target: Tensor, name: str) -> tuple[bool, Tensor, Tensor]:
    """Return ``(binary, scores, target)``.

    Binary: pred ``(N,)``, ``(N, 1)`` or ``(N, 1, *)``; scores and target come back flat.
    Multi-class: pred ``(N, C, *)``; target comes back as class indices ``(N, *)``.
    """
    if pred.ndim == 0:
        raise ShapeError(
            f"metric {name!r}: pred is a scalar; expected scores of shape (N, C) or (N,) for "
            "binary classification"
        )
    if pred.ndim == 1 or pred.shape[1] == 1:
        fits = {_shape(pred)}
        fits.add(_shape(pred) + (1,) if pred.ndim == 1 else _shape(pred)[:1] + _shape(pred)[2:])
        if _shape(target) not in fits:
            raise ShapeError(
                f"metric {name!r}: binary pred of shape {_shape(pred)} and target of shape "
                f"{_shape(target)} do not fit; give a 0/1 target of shape "
                f"{' or '.join(str(s) for s in sorted(fits, key=len))}"
            )
        if target.dtype == torch.bool:
            target = target.to(torch.uint8)
        return True, pred.reshape(-1), target.reshape(-1)
    index_shape = _shape(pred)[:1] + _shape(pred)[2:]
    if target.shape == pred.shape:
        # One-hot or probabilities over the same class dimension.
        target = target.argmax(1)
    elif _shape(target) == index_shape:
        pass
    elif pred.ndim == 2 and _shape(target) == (pred.shape[0], 1):
        target = target.reshape(-1)
    else:
        raise ShapeError(
            f"metric {name!r}: pred of shape {_shape(pred)} and target of shape "
            f"{_shape(target)} do not fit; expected class indices of shape {index_shape} or "
            f"one-hot/probabilities of shape {_shape(pred)}"
        )
    return False, pred, target.long()


class _ClassificationMetric(DecidingMetric):
    """Shared input handling: binary threshold, class indices, ignored and invalid targets."""

    def __init__(self, *, probabilities: bool = False, threshold: float | None = None,
                 ignore_index: int | None = None) -> None:
        super().__init__(probabilities=probabilities, threshold=threshold, ignore_index=ignore_index)
        self.num_classes: int | None = None

    def _prepare(self, pred: Tensor, target: Tensor) -> tuple[bool, Tensor, Tensor, Tensor, Tensor]:
        """``(binary, scores, labels, valid, invalid_count)``.

        ``labels`` are class indices with every non-valid entry set to 0, so that they are safe to
        index with; ``valid`` masks them out of every count.
        """
        binary, scores, target = _classification_layout(pred, target, self.name)
        self.num_classes = 2 if binary else int(scores.shape[1])
        if binary:
            in_range = (target >= 0) & (target <= 1)
            labels = (target > 0.5).long()
        else:
            in_range = (target >= 0) & (target < self.num_classes)
            labels = target
        if self.ignore_index is not None:
            kept = target != self.ignore_index
            valid, invalid = in_range & kept, ~in_range & kept
        else:
            valid, invalid = in_range, ~in_range
        labels = torch.where(valid, labels, torch.zeros_like(labels))
        return binary, scores, labels, valid, invalid.sum()

    def _predicted(self, binary: bool, scores: Tensor) -> Tensor:
        return (scores > self.threshold).long() if binary else scores.argmax(1)

    def _check_invalid(self, invalid: Tensor) -> None:
        count = int(invalid)
        if count:
            classes = "0 or 1" if self.num_classes == 2 else f"0..{(self.num_classes or 1) - 1}"
            raise DataError(
                f"metric {self.name!r}: {count} targets are not valid classes (expected "
                f"{classes} from pred's class dimension); fix the labels, or set ignore_index "
                "for a label that marks samples to skip"
            )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "num_classes": self.num_classes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.num_classes = state.get("num_classes")


class Accuracy(_ClassificationMetric):
    """Correct predictions / samples, over every sample (every pixel for dense prediction).

    Args:
        probabilities: binary pred holds probabilities (positive above 0.5), not logits (above 0).
        threshold: the binary decision threshold, overriding the one ``probabilities`` implies.
        ignore_index: a target value whose samples are left out (as in ``CrossEntropyLoss``).

    Example:
        >>> acc = Accuracy()
        >>> acc.update(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
        >>> acc.compute()
        0.5
    """

    name = "accuracy"

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        binary, scores, labels, valid, invalid = self._prepare(pred, target)
        correct = (self._predicted(binary, scores) == labels) & valid
        return correct.sum(), valid.sum(), invalid

    def finalize(self, sums: list[Tensor]) -> float:
        correct, count, invalid = sums
        self._check_invalid(invalid)
        return float(correct) / int(count) if int(count) else float("nan")


class TopKAccuracy(_ClassificationMetric):
    """Share of samples whose target is among the ``k`` highest scores.

    ``k`` at least the number of classes counts every sample as correct (as scikit-learn does).
    Binary pred has two classes: ``k=1`` is plain accuracy, ``k>=2`` is 1.

    Args:
        k: how many of the highest scores count.
        probabilities, threshold, ignore_index: as for :class:`Accuracy`.

    Example:
        >>> top5 = TopKAccuracy(5)
        >>> top5.name
        'top5_accuracy'
    """

    def __init__(
        self,
        k: int,
        *,
        probabilities: bool = False,
        threshold: float | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__(
            probabilities=probabilities, threshold=threshold, ignore_index=ignore_index
        )
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise TraincraftError(
                f"metric 'top_k_accuracy': k must be a whole number >= 1, got {k!r}"
            )
        self.k = k
        self.name = f"top{k}_accuracy"

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        binary, scores, labels, valid, invalid = self._prepare(pred, target)
        if binary:
            hit = self._predicted(True, scores) == labels if self.k == 1 else torch.ones_like(valid)
        else:
            top = scores.topk(min(self.k, scores.shape[1]), dim=1).indices
            hit = (top == labels.unsqueeze(1)).any(1)
        return (hit & valid).sum(), valid.sum(), invalid

    def finalize(self, sums: list[Tensor]) -> float:
        correct, count, invalid = sums
        self._check_invalid(invalid)
        return float(correct) / int(count) if int(count) else float("nan")


class _MacroMetric(_ClassificationMetric):
    """Per-class TP / predicted / actual counts; a per-class score averaged over present classes.

    A class is present when it occurs in the target or in the prediction (scikit-learn's
    ``labels=None``); a 0/0 score is 0 (scikit-learn's default ``zero_division``).
    """

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        binary, scores, labels, valid, invalid = self._prepare(pred, target)
        predicted = self._predicted(binary, scores).reshape(-1)
        labels = labels.reshape(-1)
        weight = valid.reshape(-1).long()
        # index_add_ rather than bincount: bincount reads its maximum back to the host on CUDA.
        zeros = torch.zeros(self.num_classes or 2, dtype=torch.int64, device=labels.device)
        true_pos = zeros.clone().index_add_(0, labels, (predicted == labels).long() * weight)
        predicted_count = zeros.clone().index_add_(0, predicted, weight)
        actual_count = zeros.index_add_(0, labels, weight)
        return true_pos, predicted_count, actual_count, invalid

    def finalize(self, sums: list[Tensor]) -> float:
        true_pos, predicted, actual, invalid = sums
        self._check_invalid(invalid)
        present = (predicted + actual) > 0
        if not bool(present.any()):
            return float("nan")
        num, den = self._ratio(true_pos.double(), predicted.double(), actual.double())
        per_class = torch.where(den > 0, num / den.clamp_min(1.0), torch.zeros_like(num))
        return float(per_class[present].mean())

    def _ratio(self, tp: Tensor, predicted: Tensor, actual: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class F1Macro(_MacroMetric):
    """Unweighted mean over classes of F1 = 2·TP / (predicted + actual).

    Args:
        probabilities, threshold, ignore_index: as for :class:`Accuracy`.
    """

    name = "f1_macro"

    def _ratio(self, tp: Tensor, predicted: Tensor, actual: Tensor) -> tuple[Tensor, Tensor]:
        return 2 * tp, predicted + actual


class PrecisionMacro(_MacroMetric):
    """Unweighted mean over classes of precision = TP / predicted.

    Args:
        probabilities, threshold, ignore_index: as for :class:`Accuracy`.
    """

    name = "precision_macro"

    def _ratio(self, tp: Tensor, predicted: Tensor, actual: Tensor) -> tuple[Tensor, Tensor]:
        return tp, predicted


class RecallMacro(_MacroMetric):
    """Unweighted mean over classes of recall = TP / actual.

    Args:
        probabilities, threshold, ignore_index: as for :class:`Accuracy`.
    """

    name = "recall_macro"

    def _ratio(self, tp: Tensor, predicted: Tensor, actual: Tensor) -> tuple[Tensor, Tensor]:
        return tp, actual


class BalancedAccuracy(_MacroMetric):
    """Mean over the classes that occur in the targets of recall = TP / actual.

    As scikit-learn's ``balanced_accuracy_score``: a class that is only ever predicted (never a
    target) is left out; plain accuracy when every class is equally frequent.

    Args:
        probabilities, threshold, ignore_index: as for :class:`Accuracy`.

    Example:
        >>> ba = BalancedAccuracy()
        >>> ba.update(torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1, 1]))
        >>> ba.compute()
        0.75
    """

    name = "balanced_accuracy"

    def finalize(self, sums: list[Tensor]) -> float:
        true_pos, _, actual, invalid = sums
        self._check_invalid(invalid)
        present = actual > 0
        if not bool(present.any()):
            return float("nan")
        return float((true_pos[present].double() / actual[present].double()).mean())


class MatthewsCorrelation(_MacroMetric):
    """Matthews correlation coefficient, the multi-class form (Gorodkin's R_K) that
    scikit-learn's ``matthews_corrcoef`` computes; two classes give the binary MCC.

    From per-class TP, predicted and actual counts (computed with Python integers, so exact at
    any sample count): (c·s − t·p) / √((s² − p·p)(s² − t·t)), with c correct, s samples, t and p
    the actual and predicted counts per class. 0 when a factor under the root is 0 (every target
    or every prediction one class), as scikit-learn.

    Args:
        probabilities, threshold, ignore_index: as for :class:`Accuracy`.

    Example:
        >>> mcc = MatthewsCorrelation()
        >>> mcc.update(torch.tensor([1.0, -1.0, 1.0, -1.0]), torch.tensor([1, 0, 0, 0]))
        >>> round(mcc.compute(), 4)
        0.5774
    """

    name = "mcc"

    def finalize(self, sums: list[Tensor]) -> float:
        true_pos, predicted, actual, invalid = sums
        self._check_invalid(invalid)
        t, p = actual.tolist(), predicted.tolist()
        s, c = sum(t), int(true_pos.sum())
        if s == 0:
            return float("nan")
        cov_tp = c * s - sum(a * b for a, b in zip(t, p))
        cov_pp = s * s - sum(b * b for b in p)
        cov_tt = s * s - sum(a * a for a in t)
        if cov_pp == 0 or cov_tt == 0:
            return 0.0
        return cov_tp / math.sqrt(cov_pp * cov_tt)
