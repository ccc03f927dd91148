"""MetricSet: the metrics the trainer holds, updated per batch (grouped) and computed once per epoch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from traincraft.errors import TraincraftError
from traincraft.metrics.base import _shape
from traincraft.metrics.catalogue import build_named, is_metric_like


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


def _is_scalar(metric: Any) -> bool:
    """Whether a metric's value is one number (a history column), not a table."""
    return getattr(metric, "scalar", True) is not False


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
        built = [build_named(s, probabilities=probabilities) for s in _spec_list(specs)]
        self.metrics: list[Any] = [metric for _, metric in built]
        self.probabilities = probabilities
        self._held: list[tuple[Tensor, Tensor]] = []
        self._held_bytes = 0
        self._names = [name for name, _ in built]
        self._check_names()

    def _check_names(self) -> None:
        duplicates = sorted({n for n in self._names if self._names.count(n) > 1})
        if duplicates:
            raise TraincraftError(
                f"metrics: {', '.join(repr(d) for d in duplicates)} given more than once; "
                "list each metric once"
            )

    @property
    def names(self) -> list[str]:
        """Each metric's name, in the order given (tables too)."""
        return list(self._names)

    @property
    def table_names(self) -> list[str]:
        """The names of the metrics whose value is a table (``confusion_matrix``, ``per_class``):
        not in ``compute()`` nor the history's columns, but in ``tables()``."""
        return [n for n, m in zip(self._names, self.metrics) if not _is_scalar(m)]

    @contextmanager
    def extra(self, specs: Any) -> Iterator[MetricSet]:
        """Add metrics for a while (an evaluation that also wants tables); the ones already
        held by name are not added twice. Yields this set; the added metrics leave on exit.

        Example:
            >>> with trainer.metrics.extra(["confusion_matrix"]) as ms:
            ...     trainer.evaluate(test)
            ...     tables = ms.tables()
        """
        added = [(n, m) for n, m in (build_named(s, probabilities=self.probabilities) for s in _spec_list(specs))
                 if n not in self._names]
        self.flush()
        count = len(self.metrics)
        self.metrics += [m for _, m in added]
        self._names += [n for n, _ in added]
        try:
            yield self
        finally:
            self.flush()
            del self.metrics[count:], self._names[count:]

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
        """``{name: value}`` over every sample since the last ``reset()``. Reads the device.
        Metrics whose value is a table are left out: see :meth:`tables`."""
        self.flush()
        return {
            name: _as_float(m.compute(), name)
            for name, m in zip(self._names, self.metrics)
            if _is_scalar(m)
        }

    def tables(self) -> dict[str, Any]:
        """``{name: value}`` of the metrics whose value is a table (plain lists and dicts, ready
        for JSON), over the same samples as :meth:`compute`."""
        self.flush()
        return {name: m.compute() for name, m in zip(self._names, self.metrics) if not _is_scalar(m)}

    def reset(self) -> None:
        self._held, self._held_bytes = [], 0
        for metric in self.metrics:
            metric.reset()

    def sync(
        self,
        reduce_fn: Callable[[list[Tensor]], Any],
        gather_fn: Callable[[list[Tensor]], list[Tensor]] | None = None,
    ) -> None:
        """All-reduce every accumulator with SUM, in place, once, right before ``compute()``.

        ``reduce_fn`` receives all the tensors in one list (so it can reduce them in one call).
        ``gather_fn`` receives a list of tensors and returns each concatenated (along dim 0) over
        every process, in rank order: the ranking metrics (``auroc``, ``average_precision``),
        which keep every score, need it. Metrics without ``sums()`` (e.g. torchmetrics, which
        syncs in its own ``compute()``) and metrics not updated yet are left out. Every process
        must have updated every metric.
        """
        self.flush()
        gathering = [(n, m) for n, m in zip(self._names, self.metrics)
                     if callable(getattr(m, "gather", None)) and getattr(m, "_sums", None)]
        if gathering and gather_fn is None:
            raise TraincraftError(
                f"MetricSet.sync: metric {gathering[0][0]!r} keeps every score and needs "
                "gather_fn as well (traincraft.distributed.all_gather_cat)"
            )
        for _, metric in gathering:
            metric.gather(gather_fn)
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
