"""Streaming, sample-weighted metrics: sums and counts over every sample of an epoch, reduced once.

A metric keeps a few accumulator tensors (sums and counts) on the device of the first batch. Each
batch adds to them with device operations only; ``compute()`` reads them once per epoch. Epoch
figures are therefore exact: ``accuracy`` is correct / count over all samples and ``rmse`` is the
square root of the epoch's mean squared error, never a mean of batch means. Several processes
all-reduce the accumulators with SUM before ``compute()`` (:meth:`MetricSet.sync`).

Example:
    >>> ms = MetricSet(["accuracy", "f1_macro"])
    >>> for x, y in batches:
    ...     ms.update(model(x), y)
    >>> ms.compute()
    {'accuracy': 0.93, 'f1_macro': 0.91}
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from traincraft.errors import DataError, ShapeError, TraincraftError
from traincraft.registry import Registry, import_object, split_spec

__all__ = [
    "REGISTRY",
    "Accuracy",
    "F1Macro",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "Metric",
    "MetricSet",
    "PrecisionMacro",
    "R2Score",
    "RecallMacro",
    "RootMeanSquaredError",
    "TopKAccuracy",
    "build",
    "is_metric_like",
    "metric_name",
    "names",
]

#: A batch's contribution to each accumulator: a tensor, or a host-side int (a count known from
#: shapes alone, so it costs no device read).
BatchSums = Sequence["Tensor | int"]


def _float_dtype(device: torch.device) -> torch.dtype:
    """float64 for the sums wherever the device has it; MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


class Metric:
    """Base of traincraft's streaming metrics: accumulators that batches add to.

    A subclass implements two methods: ``batch_sums(pred, target)`` returns this batch's
    contribution to each accumulator (device tensors, or ints known from shapes), and
    ``finalize(sums)`` turns the epoch's accumulators (CPU tensors) into one float. ``update``,
    ``compute``, ``reset``, ``sums`` and ``state_dict`` come from this class.

    Example:
        >>> class MeanPrediction(Metric):
        ...     name = "mean_prediction"
        ...     def batch_sums(self, pred, target):
        ...         return pred.double().sum(), pred.numel()
        ...     def finalize(self, sums):
        ...         return float(sums[0] / sums[1])
    """

    name: str = "metric"

    def __init__(self) -> None:
        # Created from the first batch, on its device; empty means "no data yet".
        self._sums: list[Tensor] = []
        # Counts known from shapes (Python ints) add up on the host and join the accumulator
        # when it is read: no kernel per batch for them.
        self._pending: list[int] = []

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        """This batch's contribution to each accumulator. Device operations only."""
        raise NotImplementedError

    def finalize(self, sums: list[Tensor]) -> float:
        """The metric's value from the epoch's accumulators (CPU tensors)."""
        raise NotImplementedError

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch. Reads no value back to the host."""
        with torch.no_grad():
            # Detached, so the sums never hold on to the batch's autograd graph.
            self._accumulate(self.batch_sums(pred.detach(), target.detach()), pred.device)

    def compute(self) -> float:
        """The value over every sample seen since the last ``reset()``; NaN before any update."""
        if not self._sums:
            return float("nan")
        return float(self.finalize([s.detach().cpu() for s in self.sums()]))

    def reset(self) -> None:
        """Forget every sample seen (start of an epoch)."""
        self._sums, self._pending = [], []

    def sums(self) -> list[Tensor]:
        """The live accumulator tensors (not copies), for an in-place SUM all-reduce."""
        for i, count in enumerate(self._pending):
            if count:  # out of place: the accumulator may be an inference-mode tensor
                self._sums[i] = self._sums[i] + count
                self._pending[i] = 0
        return self._sums

    def state_dict(self) -> dict[str, Any]:
        """The running sums as CPU tensors, for exact resume mid-epoch."""
        return {"sums": [s.detach().cpu().clone() for s in self.sums()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # They stay on the CPU until the next update moves them to that batch's device.
        self._sums = [torch.as_tensor(s).clone() for s in state.get("sums", [])]
        self._pending = [0] * len(self._sums)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def _accumulate(self, batch: BatchSums, device: torch.device) -> None:
        if not self._sums:
            self._sums = [_as_accumulator(part, device) for part in batch]
            self._pending = [0] * len(self._sums)
            return
        if len(batch) != len(self._sums):
            raise TraincraftError(
                f"metric {self.name!r}: batch_sums returned {len(batch)} values, "
                f"earlier batches {len(self._sums)}"
            )
        if self._sums[0].device != device:
            # Sums restored from a state_dict live on the CPU: move them once.
            self._sums = [_to_device(s, device) for s in self._sums]
        for i, (total, part) in enumerate(zip(self._sums, batch)):
            if not isinstance(part, Tensor):
                self._pending[i] += part
                continue
            if part.shape != total.shape:
                raise ShapeError(
                    f"metric {self.name!r}: this batch gives sums of shape {_shape(part)} but "
                    f"earlier batches gave {_shape(total)} (a different number of classes or "
                    "output columns); keep pred's shape the same across batches"
                )
            total.add_(part)


def _as_accumulator(part: Tensor | int, device: torch.device) -> Tensor:
    if isinstance(part, Tensor):
        return part.detach().clone()
    # torch.full launches a fill kernel with the value as an argument: no host-to-device copy.
    return torch.full((), part, dtype=torch.int64, device=device)


def _to_device(s: Tensor, device: torch.device) -> Tensor:
    dtype = _float_dtype(device) if s.is_floating_point() else s.dtype
    return s.to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


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


class _ClassificationMetric(Metric):
    """Shared input handling: binary threshold, class indices, ignored and invalid targets."""

    def __init__(
        self,
        *,
        probabilities: bool = False,
        threshold: float | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.probabilities = probabilities
        # Logits are positive above 0, probabilities above 0.5.
        self.threshold = (
            float(threshold) if threshold is not None else (0.5 if probabilities else 0.0)
        )
        self.ignore_index = ignore_index
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


# --------------------------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------------------------


def _align_regression(pred: Tensor, target: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Same shapes, or shapes that differ by one trailing 1 ((N,) vs (N, 1)); nothing else.

    No broadcasting: (N, 1) against (N,) broadcast to (N, N) is the classic silent bug.
    """
    if pred.shape == target.shape:
        return pred, target
    if _shape(pred) == _shape(target) + (1,):
        return pred.reshape(target.shape), target
    if _shape(target) == _shape(pred) + (1,):
        return pred, target.reshape(pred.shape)
    raise ShapeError(
        f"metric {name!r}: pred of shape {_shape(pred)} and target of shape {_shape(target)} "
        "do not match; give both the same shape ((N,) and (N, 1) are aligned)"
    )


class _ErrorMetric(Metric):
    """Σ f(ŷ − y) over every element, and the element count."""

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        pred, target = _align_regression(pred, target, self.name)
        if pred.dtype != target.dtype or not pred.is_floating_point() or pred.dtype.itemsize < 4:
            # Mixed, integer or half-precision inputs: converted before they are subtracted.
            dtype = _float_dtype(pred.device)
            pred, target = pred.to(dtype), target.to(dtype)
        diff = pred - target
        # Each element in the inputs' precision; the sum over the batch in float64.
        return self._error(diff).sum(dtype=_float_dtype(pred.device)), diff.numel()

    def _error(self, diff: Tensor) -> Tensor:
        raise NotImplementedError

    def finalize(self, sums: list[Tensor]) -> float:
        total, count = sums
        return float(total.double()) / int(count) if int(count) else float("nan")


class MeanAbsoluteError(_ErrorMetric):
    """Σ|ŷ − y| / number of elements.

    Example:
        >>> mae = MeanAbsoluteError()
        >>> mae.update(torch.tensor([1.0, 2.0]), torch.tensor([[0.0], [4.0]]))
        >>> mae.compute()
        1.5
    """

    name = "mae"

    def _error(self, diff: Tensor) -> Tensor:
        return diff.abs()


class MeanSquaredError(_ErrorMetric):
    """Σ(ŷ − y)² / number of elements.

    Example:
        >>> mse = MeanSquaredError()
        >>> mse.update(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
        >>> mse.compute()
        2.5
    """

    name = "mse"

    def _error(self, diff: Tensor) -> Tensor:
        return diff.square()


class RootMeanSquaredError(MeanSquaredError):
    """√(Σ(ŷ − y)² / number of elements) over the epoch; not a mean of batch RMSEs.

    Example:
        >>> rmse = RootMeanSquaredError()
        >>> rmse.update(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
        >>> round(rmse.compute(), 4)
        1.5811
    """

    name = "rmse"

    def finalize(self, sums: list[Tensor]) -> float:
        return math.sqrt(super().finalize(sums))


class R2Score(Metric):
    """1 − SS_res / SS_tot per output column, averaged uniformly over columns.

    Streams, per column, n, Σ(y − K), Σ(y − K)² and Σ(ŷ − y)², where the shift K is the column's
    mean over the epoch's first batch: SS_tot = Σ(y − K)² − (Σ(y − K))²/n does not cancel
    catastrophically when the targets sit far from zero relative to their spread (timestamps,
    prices in cents), as the unshifted Σy² − (Σy)²/n does. Under several processes the sums are
    moved to one shift (the weighted mean of the processes' shifts) before they are added.
    Columns are every dimension after the first, flattened. Like scikit-learn
    (``force_finite=True``), a constant column scores 1 when predicted exactly and 0 otherwise,
    and fewer than two samples give NaN.

    Example:
        >>> r2 = R2Score()
        >>> r2.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0]))
        >>> round(r2.compute(), 4)
        0.7857
    """

    name = "r2"

    def __init__(self) -> None:
        super().__init__()
        self._shift: Tensor | None = None

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        pred, target = _align_regression(pred, target, self.name)
        rows = target.shape[0] if target.ndim else 1
        columns = math.prod(_shape(target)[1:])
        dtype = _float_dtype(target.device)
        y = target.reshape(rows, columns).to(dtype)
        residual = pred.reshape(rows, columns).to(dtype) - y
        if self._shift is None or self._shift.device != y.device:
            self._shift = y.mean(0) if self._shift is None else self._shift.to(y.device, dtype)
        centred = y - self._shift
        return rows, centred.sum(0), centred.square().sum(0), residual.square().sum(0)

    def finalize(self, sums: list[Tensor]) -> float:
        rows, sum_c, sum_c2, ss_res = (s.double() for s in sums)
        n = float(rows)
        if n < 2:
            return float("nan")
        ss_tot = (sum_c2 - sum_c.square() / n).clamp_min(0.0)
        # Below this, SS_tot is rounding error of the streamed formula: the column is constant.
        shift = self._shift.double().cpu() if self._shift is not None else torch.zeros_like(ss_tot)
        eps = torch.finfo(torch.float64).eps
        constant = ss_tot <= 8 * eps * sum_c2 + n * (4 * eps * shift).square()
        safe_tot = torch.where(constant, torch.ones_like(ss_tot), ss_tot)
        scores = torch.where(constant, (ss_res == 0).double(), 1.0 - ss_res / safe_tot)
        return float(scores.mean())

    def before_sync(self, reduce_fn: Callable[[list[Tensor]], Any]) -> None:
        """Several processes: move every process's sums to the same shift, so that they add up."""
        rows, sum_c, sum_c2, ss_res = self.sums()
        n = rows.to(sum_c.dtype)
        weighted = [n * self._shift, n.reshape(1).clone()]
        reduce_fn(weighted)
        common = weighted[0] / weighted[1]
        d = self._shift - common
        sum_c2.add_(2 * d * sum_c + n * d.square())
        sum_c.add_(n * d)
        self._shift = common

    def reset(self) -> None:
        super().reset()
        self._shift = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "shift": None if self._shift is None else self._shift.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        shift = state.get("shift")
        self._shift = None if shift is None else torch.as_tensor(shift).clone()


# --------------------------------------------------------------------------------------------
# Registry, build, MetricSet
# --------------------------------------------------------------------------------------------

#: Metric names -> classes. ``REGISTRY.add("name", factory)`` registers a metric of your own.
REGISTRY = Registry("metric")
REGISTRY.add(
    "accuracy",
    Accuracy,
    aliases=["acc", "binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy"],
    doc="correct / samples",
)
REGISTRY.add(
    "top5_accuracy",
    TopKAccuracy,
    aliases=["top_5_accuracy", "top5"],
    doc="target among the 5 highest scores",
    k=5,
)
REGISTRY.add(
    "top_k_accuracy",
    TopKAccuracy,
    aliases=["topk_accuracy", "top_k"],
    doc="target among the k highest scores (k required)",
)
REGISTRY.add("f1_macro", F1Macro, aliases=["macro_f1", "f1_score_macro"], doc="macro-averaged F1")
REGISTRY.add(
    "precision_macro",
    PrecisionMacro,
    aliases=["macro_precision"],
    doc="macro-averaged precision",
)
REGISTRY.add("recall_macro", RecallMacro, aliases=["macro_recall"], doc="macro-averaged recall")
REGISTRY.add(
    "mae", MeanAbsoluteError, aliases=["mean_absolute_error", "l1"], doc="mean absolute error"
)
REGISTRY.add(
    "mse", MeanSquaredError, aliases=["mean_squared_error", "l2"], doc="mean squared error"
)
REGISTRY.add(
    "rmse", RootMeanSquaredError, aliases=["root_mean_squared_error"], doc="√ of the epoch's mse"
)
REGISTRY.add(
    "r2", R2Score, aliases=["r2_score", "r_squared", "rsquared"], doc="R², uniform average"
)


def names() -> list[str]:
    """The registered metric names (aliases left out), sorted.

    Example:
        >>> "accuracy" in names()
        True
    """
    return REGISTRY.names()


def is_metric_like(obj: object) -> bool:
    """Whether ``obj`` has callable ``update``, ``compute`` and ``reset`` (e.g. torchmetrics)."""
    return all(callable(getattr(obj, attr, None)) for attr in ("update", "compute", "reset"))


def metric_name(metric: object) -> str:
    """``metric.name`` when it is a string, else the lowercase class name."""
    name = getattr(metric, "name", None)
    return name if isinstance(name, str) and name else type(metric).__name__.lower()


def _accepts(factory: Callable[..., Any], keyword: str) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    # Only an explicit parameter: a **kwargs factory may pass it on to something that rejects it.
    return any(p.name == keyword for p in params)


def _call(factory: Callable[..., Any], name: str, kwargs: Mapping[str, Any]) -> Any:
    try:
        return factory(**kwargs)
    except TypeError as err:
        raise TraincraftError(f"metric {name!r}: {err}") from err


def build(spec: str | Mapping[str, Any] | Any, *, probabilities: bool = False) -> Any:
    """Build one metric from a name, a ``{"name": ..., **kwargs}`` dict, or a metric object.

    A name with a colon (``"package.module:Class"``) is imported and called with the dict's other
    keys. An object with ``update``/``compute``/``reset`` is returned as it is.

    Args:
        spec: ``"accuracy"``, ``{"name": "top_k_accuracy", "k": 3}``,
            ``{"name": "torchmetrics.classification:MulticlassAUROC", "num_classes": 10}``,
            or an object.
        probabilities: binary predictions are probabilities (threshold 0.5), not logits (0).
            Given to the metrics that take it; a ``probabilities`` key in the spec wins.

    Example:
        >>> build({"name": "top_k_accuracy", "k": 3}).name
        'top3_accuracy'
    """
    if isinstance(spec, type) and is_metric_like(spec):
        # A metric class rather than an instance: build it with the trainer's flag.
        kwargs = {"probabilities": probabilities} if _accepts(spec, "probabilities") else {}
        return _call(spec, spec.__name__, kwargs)
    if not isinstance(spec, (str, Mapping)):
        if is_metric_like(spec):
            return spec
        raise TraincraftError(
            "metric spec must be a name, a dict with 'name', or an object with update/compute/"
            f"reset; got {type(spec).__name__}"
        )
    name, kwargs = split_spec(spec, "metric")
    if ":" in name:
        obj = import_object(name, "metric")
        if isinstance(obj, type) or not is_metric_like(obj):
            metric = _call(obj, name, kwargs) if callable(obj) else obj
        elif kwargs:
            raise TraincraftError(f"metric {name!r} is an object already built; it takes no keys")
        else:
            metric = obj
    else:
        name = REGISTRY.canonical(name)
        entry = REGISTRY.entry(name)
        merged = {**entry.defaults, **kwargs}
        if name == "top_k_accuracy" and "k" not in merged:
            raise TraincraftError(
                "metric 'top_k_accuracy' needs k: write {name: top_k_accuracy, k: 3}"
            )
        if _accepts(entry.factory, "probabilities"):
            merged = {"probabilities": probabilities, **merged}
        metric = _call(entry.factory, name, merged)
    if not is_metric_like(metric):
        raise TraincraftError(
            f"metric {name!r} gave a {type(metric).__name__}, which has no update/compute/reset"
        )
    return metric


def _spec_list(specs: Any) -> list[Any]:
    if specs is None:
        return []
    if isinstance(specs, (str, Mapping)) or is_metric_like(specs):
        return [specs]
    if isinstance(specs, Iterable):
        return list(specs)
    return [specs]


def _as_float(value: Any, name: str) -> float:
    """One host read per metric and epoch: a number or a one-element tensor."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TraincraftError(
                f"metric {name!r}: compute() returned a tensor of shape {_shape(value)}; "
                "a metric must compute one number"
            )
        return float(value.detach().cpu())
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise TraincraftError(
            f"metric {name!r}: compute() returned a {type(value).__name__}, not a number; "
            "add each of its metrics on its own"
        ) from err


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class MetricSet:
    """The metrics the trainer holds: updated per batch, computed once per epoch.

    Args:
        specs: metric specs (see :func:`build`): a list, one spec, or ``None`` for none.
        probabilities: binary predictions are probabilities (the trainer sets this when the loss
            takes probabilities, e.g. ``bce``).

    Example:
        >>> ms = MetricSet(["accuracy", {"name": "top_k_accuracy", "k": 3}])
        >>> ms.names
        ['accuracy', 'top3_accuracy']
        >>> ms.update(logits, labels)   # every batch
        >>> ms.sync(all_reduce_sum)     # several processes only
        >>> ms.compute()                # once per epoch
        >>> ms.reset()
    """

    # Batches are held and added to the metrics together, every this many batches (or bytes):
    # a metric's few kernels and its Python cost then come once per group, not once per step.
    GROUP_BATCHES = 64
    GROUP_BYTES = 4 << 20

    def __init__(self, specs: Any = None, *, probabilities: bool = False) -> None:
        self.metrics: list[Any] = [build(s, probabilities=probabilities) for s in _spec_list(specs)]
        self._held: list[tuple[Tensor, Tensor]] = []
        self._held_bytes = 0
        self._names = [metric_name(m) for m in self.metrics]
        duplicates = sorted({n for n in self._names if self._names.count(n) > 1})
        if duplicates:
            raise TraincraftError(
                f"metrics: {', '.join(repr(d) for d in duplicates)} given more than once; "
                "list each metric once"
            )

    @property
    def names(self) -> list[str]:
        """Each metric's name, in the order given."""
        return list(self._names)

    def __len__(self) -> int:
        return len(self.metrics)

    def __getitem__(self, name: str) -> Any:
        self.flush()
        try:
            return self.metrics[self._names.index(name)]
        except ValueError:
            raise KeyError(name) from None

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch to every metric. Device operations only: no host sync.

        The batch is held and added with the next ones (every ``GROUP_BATCHES`` batches or
        ``GROUP_BYTES`` bytes, and before anything reads the metrics): the same sums, fewer kernels.
        """
        if not self.metrics:
            return
        if pred.requires_grad:  # held without its autograd graph
            pred = pred.detach()
        if target.requires_grad:
            target = target.detach()
        self._held.append((pred, target))
        self._held_bytes += pred.nbytes + target.nbytes
        if len(self._held) >= self.GROUP_BATCHES or self._held_bytes >= self.GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        """Add the held batches to the metrics (as one batch when their shapes allow)."""
        held, self._held, self._held_bytes = self._held, [], 0
        if not held:
            return
        # Batches of an evaluation are inference tensors, and so are the sums they made: add
        # to them in the mode they were made in, wherever the flush happens.
        with torch.inference_mode(held[0][0].is_inference()):
            for pred, target in _grouped(held):
                for metric in self.metrics:
                    metric.update(pred, target)

    def compute(self) -> dict[str, float]:
        """``{name: value}`` over every sample since the last ``reset()``. Reads the device."""
        self.flush()
        return {name: _as_float(m.compute(), name) for name, m in zip(self._names, self.metrics)}

    def reset(self) -> None:
        self._held, self._held_bytes = [], 0
        for metric in self.metrics:
            metric.reset()

    def sync(self, reduce_fn: Callable[[list[Tensor]], Any]) -> None:
        """All-reduce every accumulator with SUM, in place, once, right before ``compute()``.

        ``reduce_fn`` receives all the tensors in one list (so it can reduce them in one call).
        Metrics without ``sums()`` (e.g. torchmetrics, which syncs in its own ``compute()``) and
        metrics not updated yet are left out. Every process must have updated every metric.
        """
        self.flush()
        for metric in self.metrics:  # a metric whose sums need aligning first (R2's shift)
            if callable(getattr(metric, "before_sync", None)) and getattr(metric, "_sums", None):
                metric.before_sync(reduce_fn)
        tensors = [t for m in self.metrics if callable(getattr(m, "sums", None)) for t in m.sums()]
        if tensors:
            reduce_fn(tensors)

    def state_dict(self) -> dict[str, Any]:
        """``{name: metric state}`` with CPU tensors and plain types, for exact resume. Batches
        held for the next group are saved as they are, so that a resumed epoch groups (and so
        rounds) its sums exactly as an uninterrupted one."""
        state: dict[str, Any] = {
            name: _to_cpu(m.state_dict())
            for name, m in zip(self._names, self.metrics)
            if callable(getattr(m, "state_dict", None))
        }
        if self._held:
            state[_HELD] = [[p.cpu(), t.cpu()] for p, t in self._held]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._held, self._held_bytes = [], 0
        for name, metric in zip(self._names, self.metrics):
            if name in state and callable(getattr(metric, "load_state_dict", None)):
                metric.load_state_dict(state[name])
        for pred, target in state.get(_HELD, []):
            device = next((s.device for m in self.metrics for s in getattr(m, "_sums", [])), pred.device)
            self._held.append((pred.to(device), target.to(device)))
            self._held_bytes += pred.nbytes + target.nbytes


_HELD = "_held_batches"  # a state_dict key no metric name can take (names are identifiers)


def _grouped(held: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """Runs of consecutive batches whose predictions and targets agree in trailing shape, dtype
    and device, each concatenated into one batch (a different batch starts a new run)."""
    preds, targets = [p for p, _ in held], [t for _, t in held]
    if len(held) > 1 and _one_kind(preds) and _one_kind(targets):
        # The usual case, all alike, in one go: cat itself refuses other trailing shapes or
        # devices (it would only promote dtypes silently, which _one_kind rules out).
        try:
            return [(torch.cat(preds), torch.cat(targets))]
        except RuntimeError:
            pass

    def joins(t: Tensor, first: Tensor) -> bool:
        return t.ndim > 0 and t.shape[1:] == first.shape[1:] and t.dtype == first.dtype \
            and t.device == first.device

    runs: list[list[tuple[Tensor, Tensor]]] = []
    for pair in held:
        if runs and joins(pair[0], runs[-1][0][0]) and joins(pair[1], runs[-1][0][1]):
            runs[-1].append(pair)
        else:
            runs.append([pair])
    return [
        run[0] if len(run) == 1 else (torch.cat([p for p, _ in run]), torch.cat([t for _, t in run]))
        for run in runs
    ]


def _one_kind(tensors: list[Tensor]) -> bool:
    """One dtype and one number of dimensions (at least 1) among ``tensors``."""
    return len({t.dtype for t in tensors}) == 1 and len({t.ndim for t in tensors}) == 1 \
        and tensors[0].ndim > 0


class RunningMeans:
    """Sample-weighted sums of named scalars (losses, penalties, gradient norms), kept on the
    device: exact epoch means, no host sync per step.

    Values are added in groups of ``GROUP`` (one stacked sum instead of a kernel per step); the
    grouping depends only on how many values were added, and a state dict keeps a group under
    way as it is, so a resumed run rounds its sums exactly as an uninterrupted one.

    Example:
        >>> means = RunningMeans(torch.device("cpu"))
        >>> means.add("loss", batch_loss, samples=len(batch))
        >>> means.means(prefix="train_")
        {'train_loss': 0.4}
    """

    GROUP = 64

    def __init__(self, device: torch.device):
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.device = device
        self._sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._held: dict[str, list[tuple[torch.Tensor, int]]] = {}

    @property
    def sums(self) -> dict[str, torch.Tensor]:
        """The sums so far, held values included (new tensors: reading changes no grouping, so
        a progress refresh at any moment leaves the figures bit for bit the same)."""
        return {name: self._total(name) for name in self._sums}

    def _total(self, name: str) -> torch.Tensor:
        part = self._held_sum(name)
        return self._sums[name] if part is None else self._sums[name] + part

    def reset(self) -> None:
        self._sums.clear()
        self.counts.clear()
        self._held.clear()

    def add(self, name: str, value: torch.Tensor, samples: int) -> None:
        held = self._held.get(name)
        if held is None:
            self._sums[name] = torch.zeros((), dtype=self.dtype, device=value.device)
            self.counts[name] = 0
            held = self._held[name] = []
        held.append((value.detach(), samples))
        self.counts[name] += samples
        if len(held) >= self.GROUP:
            self._flush(name)

    def _flush(self, name: str) -> None:
        part = self._held_sum(name)
        if part is not None:  # out of place: evaluation's sums are inference-mode tensors
            self._sums[name] = self._sums[name] + part
            self._held[name].clear()

    def _held_sum(self, name: str) -> torch.Tensor | None:
        held = self._held.get(name)
        if not held:
            return None
        values = torch.stack([v.reshape(()) for v, _ in held])
        counts = [n for _, n in held]
        if all(n == counts[0] for n in counts):  # equal batches: one kernel
            return torch.sum(values, dtype=self.dtype) * counts[0]
        weights = torch.tensor(counts, dtype=self.dtype, device=values.device)
        return (values.to(self.dtype) * weights).sum()

    def sync(self, reduce_fn: Callable[[list[torch.Tensor]], Any]) -> None:
        """Sum every process's sums and counts in place, once, right before ``means()``.

        ``reduce_fn`` gets the sums and a tensor of the counts in one list (see
        :meth:`MetricSet.sync`). Every process must hold the same names.
        """
        for name in self._held:
            self._flush(name)  # at the epoch's end, where every run flushes
        sums = self._sums
        if not sums:
            return
        names = sorted(sums)  # the same order on every process
        first = sums[names[0]]
        counts = torch.tensor([self.counts[name] for name in names], dtype=torch.int64, device=first.device)
        reduce_fn([*(sums[name] for name in names), counts])
        self.counts.update(zip(names, counts.tolist()))

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": {k: v.detach().cpu() for k, v in self._sums.items()},
            "counts": dict(self.counts),
            # The group under way, as it is: one stacked read per name.
            "held": {
                k: [torch.stack([v.reshape(()) for v, _ in held]).cpu(), [n for _, n in held]]
                for k, held in self._held.items() if held
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = {k: v.to(self.device, self.dtype) for k, v in state["sums"].items()}
        self.counts = dict(state["counts"])
        held = state.get("held", {})
        self._held = {k: [] for k in self._sums}
        for name, (values, counts) in held.items():
            self._held[name] = [(v.to(self.device), int(n)) for v, n in zip(values, counts)]

    def mean(self, name: str) -> float:
        count = self.counts.get(name, 0)
        return float(self._total(name)) / count if count else math.nan

    def means(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}{name}": self.mean(name) for name in self._sums}
