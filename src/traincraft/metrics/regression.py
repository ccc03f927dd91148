"""Regression metrics from per-batch sums: mae, mse, rmse, r2, mape, smape, explained_variance."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from traincraft.errors import ShapeError
from traincraft.metrics.base import BatchSums, Metric, _float_dtype, _shape


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
        ss_tot, constant = self._centred_squares(n, sum_c, sum_c2)
        safe_tot = torch.where(constant, torch.ones_like(ss_tot), ss_tot)
        scores = torch.where(constant, (ss_res == 0).double(), 1.0 - ss_res / safe_tot)
        return float(scores.mean())

    def _centred_squares(self, n: float, sum_c: Tensor, sum_c2: Tensor) -> tuple[Tensor, Tensor]:
        """Σ(v − mean)² of each shifted column, and whether it is 0 up to the rounding error of
        the streamed formula (the column is constant)."""
        squares = (sum_c2 - sum_c.square() / n).clamp_min(0.0)
        shift = self._shift.double().cpu() if self._shift is not None else torch.zeros_like(squares)
        eps = torch.finfo(torch.float64).eps
        return squares, squares <= 8 * eps * sum_c2 + n * (4 * eps * shift).square()

    def before_sync(self, reduce_fn: Callable[[list[Tensor]], Any]) -> None:
        """Several processes: move every process's sums to the same shift, so that they add up."""
        rows, sum_c, sum_c2 = self.sums()[:3]  # the shifted sums; a residual sum needs no shift
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


class MeanAbsolutePercentageError(Metric):
    """Σ |ŷ − y| / max(|y|, ε) / number of elements, ε the float64 machine epsilon: scikit-learn's
    ``mean_absolute_percentage_error``, a fraction (0.05 is 5 %), not a percentage. A target of 0
    makes the figure huge (|ŷ| / ε), as in scikit-learn: use ``smape`` or ``mae`` there.

    Example:
        >>> mape = MeanAbsolutePercentageError()
        >>> mape.update(torch.tensor([110.0, 45.0]), torch.tensor([100.0, 50.0]))
        >>> round(mape.compute(), 4)
        0.1
    """

    name = "mape"

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        pred, target = _wide(*_align_regression(pred, target, self.name))
        eps = torch.finfo(torch.float64).eps
        return ((pred - target).abs() / target.abs().clamp_min(eps)).sum(), pred.numel()

    def finalize(self, sums: list[Tensor]) -> float:
        total, count = sums
        return float(total.double()) / int(count) if int(count) else float("nan")


class SymmetricMeanAbsolutePercentageError(MeanAbsolutePercentageError):
    """Σ 2·|ŷ − y| / (|y| + |ŷ|) / number of elements, a fraction between 0 and 2; an element with
    ŷ = y = 0 counts 0. scikit-learn has no smape: this is the common definition (Makridakis),
    without the factor 100 of a percentage.

    Example:
        >>> smape = SymmetricMeanAbsolutePercentageError()
        >>> smape.update(torch.tensor([110.0, 0.0]), torch.tensor([100.0, 0.0]))
        >>> round(smape.compute(), 4)
        0.0476
    """

    name = "smape"

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        pred, target = _wide(*_align_regression(pred, target, self.name))
        scale = pred.abs() + target.abs()
        ratio = 2 * (pred - target).abs() / torch.where(scale > 0, scale, torch.ones_like(scale))
        return ratio.sum(), pred.numel()


def _wide(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Both in the accumulators' precision (float64; float32 on MPS)."""
    dtype = _float_dtype(pred.device)
    return pred.to(dtype), target.to(dtype)


class ExplainedVariance(R2Score):
    """1 − Var(y − ŷ) / Var(y) per output column, averaged uniformly over columns: scikit-learn's
    ``explained_variance_score``. Unlike ``r2`` it forgives a constant offset of the predictions.

    Streams, per column, n and the shifted Σ and Σ² of the target and of the residual y − ŷ (each
    shifted by its mean over the epoch's first batch, as :class:`R2Score` does, so that values
    far from zero keep their digits). Like scikit-learn (``force_finite=True``), a constant target
    column scores 1 when the residual's variance is 0 too and 0 otherwise; fewer than two samples
    give NaN.

    Example:
        >>> ev = ExplainedVariance()
        >>> ev.update(torch.tensor([2.0, 3.0, 4.0]), torch.tensor([1.0, 2.0, 3.0]))
        >>> ev.compute()
        1.0
    """

    name = "explained_variance"

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        pred, target = _align_regression(pred, target, self.name)
        rows = target.shape[0] if target.ndim else 1
        columns = math.prod(_shape(target)[1:])
        dtype = _float_dtype(target.device)
        y = target.reshape(rows, columns).to(dtype)
        both = torch.cat([y, y - pred.reshape(rows, columns).to(dtype)], 1)  # targets, residuals
        if self._shift is None or self._shift.device != both.device:
            self._shift = both.mean(0) if self._shift is None else self._shift.to(both.device, dtype)
        centred = both - self._shift
        return rows, centred.sum(0), centred.square().sum(0)

    def finalize(self, sums: list[Tensor]) -> float:
        rows, sum_c, sum_c2 = (s.double() for s in sums)
        n = float(rows)
        if n < 2:
            return float("nan")
        squares, zero = self._centred_squares(n, sum_c, sum_c2)
        columns = squares.numel() // 2
        target_var, residual_var = squares[:columns], squares[columns:]
        target_zero, residual_zero = zero[:columns], zero[columns:]
        safe = torch.where(target_zero, torch.ones_like(target_var), target_var)
        scores = torch.where(
            residual_zero,
            torch.ones_like(target_var),
            torch.where(target_zero, torch.zeros_like(target_var), 1.0 - residual_var / safe),
        )
        return float(scores.mean())
