"""Losses that are not a per-sample mean, carried as sums that add up over batches and processes.

Most losses are the mean over the batch's samples: the trainer weights each batch by its samples
and the figures and gradients are exact. Some are not:

* **ratios**: cross-entropy with class weights or an ``ignore_index`` is ``Σ wᵢ lᵢ / Σ wᵢ`` over the
  counted targets, focal with an ``ignore_index`` divides by the counted targets. The batch value
  is ``numerator / denominator``, and the denominator depends on the targets only.
* **set losses**: a global dice is ``1 − mean_c (2·TP_c + s) / (P_c + G_c + s)``, a function of
  per-class sums over the whole batch.

Such a loss gives its batch as a :class:`SummedLoss`: a 1-D tensor of sums (differentiable, additive
over samples) and a ``source`` that turns sums into the loss (``value_of_sums``). The sums of many
batches and processes added up give the value of all of them as one batch:

* a ratio's window gradient is ``∇ Σ numerators / Σ denominators`` over the window and every
  process (the stepper back-propagates numerators and divides once, by the all-reduced
  denominator: :meth:`traincraft.step.Stepper.backward_sums`);
* a set loss under several processes all-reduces the micro-batch's sums before its backward and
  back-propagates ``g · sums`` with ``g = ∂value/∂sums`` at the global sums (:func:`surrogate`):
  the processes' gradients add up to the gradient of the global batch's value;
* epoch figures are the value of the epoch's summed sums (:class:`EpochLossSums`): the loss of the
  whole split as one batch, whatever the batch size and the number of processes.

Example:
    >>> num = F.cross_entropy(logits, y, weight=w, reduction="sum")
    >>> Ratio(num, w[y].sum()).value          # == F.cross_entropy(logits, y, weight=w)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor


def safe_denominator(den: Tensor) -> Tensor:
    """``den`` with 0 replaced by 1: a window in which nothing counts steps with a zero gradient,
    not 0/0 (its numerators are 0 too)."""
    return den.masked_fill(den == 0, 1)


class RatioSource:
    """How sums ``(numerator, denominator)`` become the loss: their quotient (0 when nothing
    counts)."""

    ratio = True

    def value_of_sums(self, sums: Tensor) -> Tensor:
        return sums[0] / safe_denominator(sums[1])

    def term_values_of_sums(self, sums: Tensor) -> dict[str, Tensor]:
        return {}


RATIO = RatioSource()


#: The smallest normal float32: a denominator of 0 becomes this (never reached otherwise:
#: denominators are counts or sums of class weights).
_TINY = torch.finfo(torch.float32).tiny


class SummedLoss:
    """A batch's loss as sums that add up over batches and processes, and their ``source`` (which
    turns sums into the loss: ``source.value_of_sums``, and for a weighted list of terms
    ``source.term_values_of_sums``).

    Attributes:
        sums: 1-D tensor, differentiable.
        source: a loss module with ``value_of_sums`` (dice), or how a weighted list's sums are
            laid out.
        ratio: False; :class:`RatioLoss` (a ratio's gradient is divided once per window) is True.
    """

    ratio = False

    def __init__(self, sums: Tensor, source: Any):
        self.sums = sums
        self.source = source

    @property
    def value(self) -> Tensor:
        """The loss of this batch alone."""
        return self.source.value_of_sums(self.sums)

    def scaled(self, factor: float) -> SummedLoss:
        """The sums times ``factor`` (0: a stand-in batch that counts nothing)."""
        return SummedLoss(self.sums * factor, self.source)

    def parts(self) -> tuple[Tensor, ...]:
        """Detached pieces whose sums over batches make the epoch's sums (see EpochLossSums)."""
        return (self.sums.detach().reshape(-1),)


class RatioLoss(SummedLoss):
    """``numerator / denominator``, the denominator independent of the model (made by
    :func:`Ratio`). Kept as two scalars: no stacking per batch."""

    ratio = True

    def __init__(self, numerator: Tensor, denominator: Tensor):
        self.numerator, self.denominator = numerator, denominator
        self.source = RATIO

    @property
    def sums(self) -> Tensor:  # type: ignore[override]
        return torch.stack((self.numerator, self.denominator))

    @property
    def value(self) -> Tensor:
        # 0/tiny = 0 where nothing counts (the numerator is 0 then): one kernel, not a mask.
        return self.numerator / self.denominator.clamp_min(_TINY)

    def scaled(self, factor: float) -> RatioLoss:
        return RatioLoss(self.numerator * factor, self.denominator * factor)

    def parts(self) -> tuple[Tensor, ...]:
        return (self.numerator.detach(), self.denominator)


def Ratio(numerator: Tensor, denominator: Tensor | float) -> RatioLoss:  # noqa: N802 - reads as a value
    """A batch loss ``numerator / denominator`` whose denominator depends on the targets only
    (``Σ wᵢ lᵢ`` and ``Σ wᵢ``; a loss's own ``(sum, count)``). Return it from
    ``Trainer.compute_loss`` or a loss module's ``summed(pred, target)``.

    Example:
        >>> Ratio(F.nll_loss(logp, y, reduction="sum"), (y != -100).sum())
    """
    if numerator.dtype in (torch.float16, torch.bfloat16):
        numerator = numerator.float()
    numerator = numerator.reshape(())
    if not isinstance(denominator, Tensor):
        denominator = torch.full((), float(denominator), dtype=numerator.dtype, device=numerator.device)
    elif denominator.dtype != numerator.dtype:
        denominator = denominator.to(numerator.dtype)
    return RatioLoss(numerator, denominator.detach().reshape(()))


def plain_ratio(mean: Tensor, samples: int) -> RatioLoss:
    """A per-sample mean as the ratio ``(mean × samples, samples)``: a term of a weighted list."""
    count = torch.full((), samples, dtype=mean.dtype, device=mean.device)
    return RatioLoss(mean.reshape(()) * count, count)


def surrogate(summed: SummedLoss, reduce_sum: Callable[[list[Tensor]], Any]) -> tuple[Tensor, Tensor]:
    """Several processes, a set loss: ``(g · sums, value)`` with ``sums`` this process's part,
    ``value`` the loss of every process's batch together and ``g = ∂value/∂sums`` there, so that
    the processes' gradients of ``g · sums`` add up to the global batch's gradient. One
    all-reduce of the (small) sums."""
    total = summed.sums.detach().clone()
    reduce_sum([total])
    with torch.enable_grad():
        point = total.requires_grad_(True)
        value = summed.source.value_of_sums(point)
        (coefficients,) = torch.autograd.grad(value, point)
    return (coefficients * summed.sums).sum(), value.detach()


class EpochLossSums:
    """An epoch's (or an evaluation's) summed loss sums, kept on the device: the loss and its
    terms over every sample as one batch. Reduced over processes once, before it is read.

    Batches are added in groups of ``GROUP`` (one stacked sum instead of a kernel per batch);
    the grouping depends only on how many were added, and a state dict keeps a group under way as
    it is, so a resumed run rounds its sums exactly as an uninterrupted one.

    Example:
        >>> sums = EpochLossSums(torch.device("cpu"), source=loss_fn)
        >>> sums.add(summed)                 # each batch
        >>> sums.figures(prefix="val_")      # {'val_loss': ..., 'val_loss/dice': ...}
    """

    GROUP = 64

    def __init__(self, device: torch.device, source: Any = None):
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.device = device
        self.source = source  # what turns sums into the loss; else that of the batches added
        self._total: Tensor | None = None
        self._held: list[tuple[Tensor, ...]] = []

    @property
    def total(self) -> Tensor | None:
        """The sums so far (held batches flushed in)."""
        self._flush()
        return self._total

    def reset(self) -> None:
        self._total, self._held = None, []

    def add(self, summed: SummedLoss) -> None:
        """One batch's sums (detached, held until a group is full). Reads nothing to the host."""
        self.source = summed.source  # a weighted list's says how its sums are laid out
        self._held.append(summed.parts())
        if len(self._held) >= self.GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        columns = [torch.stack(column).to(self.dtype).sum(0).reshape(-1) for column in zip(*held)]
        part = columns[0] if len(columns) == 1 else torch.cat(columns)
        if self._total is None or self._total.shape != part.shape:
            self._total = part
        else:
            self._total = self._total + part  # out of place: evaluation's sums are inference tensors

    def sync(self, reduce_sum: Callable[[list[Tensor]], Any]) -> None:
        """Sum every process's sums in place (every process must hold sums)."""
        total = self.total
        if total is not None:
            reduce_sum([total])

    def figures(self, prefix: str) -> dict[str, float]:
        """``{prefix}loss`` and, for a weighted list, ``{prefix}loss/<term>``; empty before any
        batch (the caller then keeps its sample-weighted figures)."""
        total = self.total
        if total is None or self.source is None:
            return {}
        source = self.source
        total = total.detach().cpu()
        figures = {f"{prefix}loss": _float(source.value_of_sums(total))}
        terms: Mapping[str, Tensor] = getattr(source, "term_values_of_sums", lambda s: {})(total)
        figures.update({f"{prefix}loss/{name}": _float(value) for name, value in terms.items()})
        return figures

    def state_dict(self) -> dict[str, Any]:
        return {
            "total": None if self._total is None else self._total.detach().cpu().clone(),
            # The group under way, as it is.
            "held": [[piece.detach().cpu().clone() for piece in parts] for parts in self._held],
        }

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        state = state or {}
        total = state.get("total")
        self._total = None if total is None else torch.as_tensor(total).to(self.device, self.dtype)
        self._held = [tuple(piece.to(self.device) for piece in parts) for parts in state.get("held", [])]


def _float(value: Tensor) -> float:
    return float(value)
