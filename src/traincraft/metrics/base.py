"""The base of traincraft's streaming metrics: accumulators (sums and counts) that batches add to.

A metric keeps a few accumulator tensors on the device of the first batch. Each batch adds to them
with device operations only; ``compute()`` reads them once per epoch. Several processes all-reduce
the accumulators with SUM before ``compute()`` (:meth:`traincraft.metrics.MetricSet.sync`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from traincraft.errors import ShapeError, TraincraftError

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


class DecidingMetric(Metric):
    """A metric that decides scores: ``threshold`` (default 0 for logits, 0.5 for
    ``probabilities``), and targets equal to ``ignore_index`` left out."""

    def __init__(self, *, probabilities: bool = False, threshold: float | None = None,
                 ignore_index: int | None = None) -> None:
        super().__init__()
        self.probabilities = probabilities
        # Logits are positive above 0, probabilities above 0.5.
        self.threshold = float(threshold) if threshold is not None else (0.5 if probabilities else 0.0)
        self.ignore_index = ignore_index
