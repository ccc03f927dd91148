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
    """``den`` with 0 replaced by 1: a batch (or window) in which nothing counts has the value 0
    and a zero gradient, not 0/0 (its numerator is 0 too)."""
    return den.masked_fill(den == 0, 1)


class RatioSource:
    """How sums ``(numerator, denominator)`` become the loss: their quotient."""

    ratio = True

    def value_of_sums(self, sums: Tensor) -> Tensor:
        return sums[0] / safe_denominator(sums[1])

    def term_values_of_sums(self, sums: Tensor) -> dict[str, Tensor]:
        return {}


RATIO = RatioSource()


class SummedLoss:
    """A batch's loss as sums that add up over batches and processes, and their ``source`` (which
    turns sums into the loss: ``source.value_of_sums``, and for a weighted list of terms
    ``source.term_values_of_sums``).

    Attributes:
        sums: 1-D tensor, differentiable; for a ratio ``(numerator, denominator)`` with a
            denominator that does not depend on the model.
        source: :data:`RATIO` or a loss module with ``value_of_sums`` (dice, a list of terms).
        ratio: whether the sums are a ratio (its gradient can be divided once per window).
    """

    __slots__ = ("sums", "source")

    def __init__(self, sums: Tensor, source: Any = RATIO):
        self.sums = sums
        self.source = source

    @property
    def ratio(self) -> bool:
        return bool(getattr(self.source, "ratio", False))

    @property
    def value(self) -> Tensor:
        """The loss of this batch alone."""
        return self.source.value_of_sums(self.sums)

    def scaled(self, factor: float) -> SummedLoss:
        """The sums times ``factor`` (0: a stand-in batch that counts nothing)."""
        return SummedLoss(self.sums * factor, self.source)


def Ratio(numerator: Tensor, denominator: Tensor | float) -> SummedLoss:  # noqa: N802 - reads as a value
    """A batch loss ``numerator / denominator`` whose denominator depends on the targets only
    (``Σ wᵢ lᵢ`` and ``Σ wᵢ``; a loss's own ``(sum, count)``). Return it from
    ``Trainer.compute_loss`` or a loss module's ``summed(pred, target)``.

    Example:
        >>> Ratio(F.nll_loss(logp, y, reduction="sum"), (y != -100).sum())
    """
    numerator = numerator.float() if numerator.dtype in (torch.float16, torch.bfloat16) else numerator
    den = torch.as_tensor(denominator, device=numerator.device).to(numerator.dtype).detach()
    return SummedLoss(torch.stack([numerator.reshape(()), den.reshape(())]), RATIO)


def plain_sums(mean: Tensor, samples: int) -> Tensor:
    """A per-sample mean as sums ``(mean × samples, samples)``: a term of a weighted list."""
    count = torch.full((), samples, dtype=mean.dtype, device=mean.device)
    return torch.stack([mean.reshape(()) * count, count])


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

    Example:
        >>> sums = EpochLossSums(torch.device("cpu"), source=loss_fn)
        >>> sums.add(summed)                 # each batch
        >>> sums.figures(prefix="val_")      # {'val_loss': ..., 'val_loss/dice': ...}
    """

    def __init__(self, device: torch.device, source: Any = None):
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.device = device
        self.source = source  # what turns sums into the loss; else that of the batches added
        self.total: Tensor | None = None

    def reset(self) -> None:
        self.total = None

    def add(self, summed: SummedLoss) -> None:
        """One batch's sums (detached). Reads nothing back to the host."""
        part = summed.sums.detach().to(self.dtype)
        self.source = summed.source  # a weighted list's says how its sums are laid out
        if self.total is None or self.total.shape != part.shape:
            self.total = part.clone()
        else:
            self.total = self.total + part  # out of place: evaluation's sums are inference tensors

    def sync(self, reduce_sum: Callable[[list[Tensor]], Any]) -> None:
        """Sum every process's sums in place (every process must hold sums)."""
        if self.total is not None:
            reduce_sum([self.total])

    def figures(self, prefix: str) -> dict[str, float]:
        """``{prefix}loss`` and, for a weighted list, ``{prefix}loss/<term>``; empty before any
        batch (the caller then keeps its sample-weighted figures)."""
        if self.total is None or self.source is None:
            return {}
        source = self.source
        total = self.total.detach().cpu()
        figures = {f"{prefix}loss": _float(source.value_of_sums(total))}
        terms: Mapping[str, Tensor] = getattr(source, "term_values_of_sums", lambda s: {})(total)
        figures.update({f"{prefix}loss/{name}": _float(value) for name, value in terms.items()})
        return figures

    def state_dict(self) -> dict[str, Any]:
        return {"total": None if self.total is None else self.total.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        total = (state or {}).get("total")
        self.total = None if total is None else torch.as_tensor(total).to(self.device, self.dtype)


def _float(value: Tensor) -> float:
    return float(value)
