"""Losses by name: every ``torch.nn`` loss, plus dice, focal and tversky; weighted sums of terms.

A loss spec is a name (``"mse"``, ``"cross_entropy"``), a dict of the loss's keyword arguments
(``{"name": "huber", "delta": 0.5}``), a list of weighted terms, an ``nn.Module`` or any callable
``(pred, target) -> Tensor``. :func:`build` turns each into a module that the trainer calls as
``loss_fn(pred, target)`` and that returns the MEAN over the batch's samples (the trainer weights
batches by their size to report exact epoch figures). Losses that are not a per-sample mean
(class weights, ``ignore_index``, a dice over the batch) are carried as sums instead:
:func:`summing` gives their batch as a :class:`~traincraft.loss_sums.SummedLoss`.

:func:`target_adapter` checks the first batch's prediction and target once and returns a cheap
function that aligns every later target with its prediction (``(N, 1)`` vs ``(N,)``, integer labels
for a float loss), so that a shape mistake raises instead of silently broadcasting.

Example:
    >>> from traincraft import losses
    >>> loss_fn = losses.build([{"name": "cross_entropy"}, {"name": "dice", "weight": 0.5}])
    >>> pred, target = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4, 8, 8))
    >>> adapt = losses.target_adapter(loss_fn, pred, target)
    >>> loss = loss_fn(pred, adapt(pred, target))
    >>> sorted(loss_fn.last_terms)
    ['cross_entropy', 'dice']
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from traincraft.errors import ShapeError, TraincraftError, did_you_mean
from traincraft.loss_sums import Ratio, RatioLoss, SummedLoss, plain_ratio
from traincraft.registry import Registry, check_numbers, import_object, split_spec

LossSpec = str | Mapping[str, Any] | Sequence[Any] | nn.Module | Callable[..., Tensor]
"""What :func:`build` accepts."""

Adapt = Callable[[Any, Any], Any]
"""``adapt(pred, target) -> target``, as returned by :func:`target_adapter`."""

# How target_adapter treats a loss: compare elementwise, expect class indices, or leave alone.
ELEMENTWISE = "elementwise"
CLASS_INDEX = "class_index"
CLASS_OR_PROBS = "class_or_probs"  # class indices, or probabilities shaped like the prediction
AUTO = "auto"  # dice/focal/tversky: elementwise when binary, class indices when multi-class
OTHER = "other"

# Reductions that give the mean over the batch's samples; anything else breaks exact epoch figures.
_MEAN_REDUCTIONS = ("mean",)
_KL_REDUCTIONS = ("mean", "batchmean")

# Constructor arguments that arrive from YAML as lists but must be tensors.
_TENSOR_ARGS = ("weight", "pos_weight")
# Constructor arguments that arrive from YAML as "package.module:function" strings.
_CALLABLE_ARGS = ("distance_function",)
# Pre-1.0 arguments that override ``reduction``.
_LEGACY_ARGS = ("size_average", "reduce")


# --------------------------------------------------------------------------------------------
# dice, focal, tversky
# --------------------------------------------------------------------------------------------


def _at_least_float32(pred: Tensor) -> Tensor:
    # Under autocast the model may return float16/bfloat16; ratios and logs want float32.
    return pred.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred


def _is_binary(name: str, pred: Tensor, target: Tensor) -> bool:
    """True for the sigmoid form (same shapes), False for the softmax form (class indices)."""
    if pred.shape == target.shape:
        return True
    if pred.dim() == target.dim() + 1:
        if target.is_floating_point():
            raise ShapeError(
                f"loss {name!r}: class indices must be an integer tensor, got {target.dtype} of "
                f"shape {_fmt(target.shape)} for prediction shape {_fmt(pred.shape)}"
            )
        return False
    raise ShapeError(
        f"loss {name!r}: prediction shape {_fmt(pred.shape)} and target shape "
        f"{_fmt(target.shape)} do not match; expected logits (N, C, *) with class indices (N, *), "
        "or logits and a 0/1 target of the same shape"
    )


def _one_hot_like(probs: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """One-hot target shaped like ``probs`` (N, C, *) and the mask of positions that count."""
    valid = target != ignore_index
    index = target.masked_fill(~valid, 0).long().unsqueeze(1)
    # scatter_ instead of F.one_hot: no permute, and no min/max check that reads the device.
    one_hot = torch.zeros_like(probs).scatter_(1, index, 1.0)
    return one_hot, valid.unsqueeze(1).to(probs.dtype)


class _OverlapLoss(nn.Module):
    """Shared by dice and tversky: per-class soft true positives and the two cardinalities."""

    name = "overlap"

    def __init__(self, smooth: float = 1.0, per_sample: bool = False, ignore_index: int = -100):
        super().__init__()
        self.smooth = float(smooth)
        self.per_sample = bool(per_sample)
        self.ignore_index = int(ignore_index)

    def _sums(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(TP, sum of probabilities, sum of targets)`` per class (and per sample if asked)."""
        pred = _at_least_float32(pred)
        if _is_binary(self.name, pred, target):
            probs, truth = pred.sigmoid(), target.to(pred.dtype)
            if probs.dim() == 1:  # (N,): one class
                probs, truth = probs.unsqueeze(1), truth.unsqueeze(1)
        else:
            probs = pred.softmax(dim=1)
            truth, valid = _one_hot_like(probs, target, self.ignore_index)
            probs, truth = probs * valid, truth * valid
        # Dim 1 holds the classes; sum over positions, and over the batch unless per_sample.
        dims = tuple(range(2, probs.dim())) if self.per_sample else (0, *range(2, probs.dim()))
        if not dims:  # per_sample with (N, C): nothing to sum (sum(dim=()) would sum everything)
            return probs * truth, probs, truth
        return (probs * truth).sum(dims), probs.sum(dims), truth.sum(dims)

    def summed(self, pred: Tensor, target: Tensor) -> SummedLoss | Tensor:
        """The batch as sums ``(TP_c, Σp_c, Σg_c)`` (one value per class each): the loss of
        several batches or processes together is that of their summed sums. ``per_sample``:
        a per-sample mean, returned as it is."""
        if self.per_sample:
            return self(pred, target)
        return SummedLoss(torch.cat(self._sums(pred, target)), self)

    def value_of_sums(self, sums: Tensor) -> Tensor:
        """The loss from ``summed``'s sums (of one batch, or of many added up)."""
        tp, pred_sum, true_sum = sums.reshape(3, -1)
        return self._value(tp, pred_sum, true_sum)

    def _value(self, tp: Tensor, pred_sum: Tensor, true_sum: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return self._value(*self._sums(pred, target))

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, per_sample={self.per_sample}"


class DiceLoss(_OverlapLoss):
    """1 - soft Dice coefficient, averaged over classes.

    ``dice_c = (2·TP_c + smooth) / (Σp_c + Σg_c + smooth)`` with ``p`` the softmax (multi-class:
    logits ``(N, C, *)``, integer target ``(N, *)``) or the sigmoid (binary/multi-label: logits and
    a 0/1 target of the same shape; dim 1 holds the classes) and ``g`` the one-hot/0-1 target.
    Sums run over the batch and all positions, or per sample with ``per_sample=True``.

    Args:
        smooth: added to numerator and denominator; keeps an empty class at a score of 1.
        per_sample: one coefficient per sample and class, then the mean (default: one per class
            over the whole batch).
        ignore_index: target value excluded in the multi-class form (as in ``cross_entropy``).

    Example:
        >>> DiceLoss()(torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4)))
    """

    name = "dice"

    def _value(self, tp: Tensor, pred_sum: Tensor, true_sum: Tensor) -> Tensor:
        score = (2 * tp + self.smooth) / (pred_sum + true_sum + self.smooth)
        return 1 - score.mean()


class TverskyLoss(_OverlapLoss):
    """1 - soft Tversky index, averaged over classes; dice when ``alpha = beta = 0.5``.

    ``T_c = (2·TP + smooth) / (2·TP + 2α·FP + 2β·FN + smooth)`` with ``FP = Σp - TP`` and
    ``FN = Σg - TP``: the usual ``TP / (TP + α·FP + β·FN)`` when ``smooth = 0``, written so that
    ``α = β = 0.5`` gives exactly :class:`DiceLoss` with the same ``smooth``. A larger ``beta``
    penalises missed positives more (recall), a larger ``alpha`` false alarms (precision).

    Args:
        alpha: weight of false positives.
        beta: weight of false negatives.
        smooth: see :class:`DiceLoss`.
        per_sample: see :class:`DiceLoss`.
        ignore_index: see :class:`DiceLoss`.

    Example:
        >>> TverskyLoss(alpha=0.3, beta=0.7)(torch.randn(8, 1), torch.randint(0, 2, (8, 1)).float())
    """

    name = "tversky"

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.5,
        smooth: float = 1.0,
        per_sample: bool = False,
        ignore_index: int = -100,
    ):
        super().__init__(smooth=smooth, per_sample=per_sample, ignore_index=ignore_index)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def _value(self, tp: Tensor, pred_sum: Tensor, true_sum: Tensor) -> Tensor:
        false_pos, false_neg = pred_sum - tp, true_sum - tp
        denominator = 2 * (tp + self.alpha * false_pos + self.beta * false_neg) + self.smooth
        return 1 - ((2 * tp + self.smooth) / denominator).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, {super().extra_repr()}"


def _modulation(one_minus_pt: Tensor, gamma: float) -> Tensor:
    # (1 - p_t)^gamma; the clamp keeps the gradient finite at p_t == 1 when gamma < 1.
    return one_minus_pt.clamp_min(torch.finfo(one_minus_pt.dtype).tiny).pow(gamma)


class FocalLoss(nn.Module):
    """Focal loss: cross-entropy scaled by ``(1 - p_t)^gamma`` to focus on hard examples.

    Multi-class (logits ``(N, C, *)``, integer target ``(N, *)``):
    ``-α_t (1 - p_t)^γ log p_t`` with ``p_t`` the softmax probability of the true class; equals
    ``cross_entropy`` when ``gamma=0`` and ``alpha=None``. Binary/multi-label (logits and 0/1
    target of the same shape): ``α_t (1 - p_t)^γ · BCE(logit, t)`` with ``p_t = p·t + (1-p)(1-t)``
    and ``α_t = α·t + (1-α)(1-t)``; equals ``bce_with_logits`` when ``gamma=0``.

    Args:
        gamma: focusing exponent (0 gives plain cross-entropy).
        alpha: ``None`` (no weighting); a float (binary: weight of positives, ``1 - alpha`` for
            negatives; multi-class: a constant factor); or one value per class (multi-class:
            ``α_t = alpha[target]``; multi-label: per-channel positive weight along dim 1).
        reduction: ``"mean"`` (over counted elements), ``"sum"`` or ``"none"``.
        ignore_index: target value excluded in the multi-class form (as in ``cross_entropy``).

    Example:
        >>> FocalLoss(gamma=2.0, alpha=[0.25, 0.75])(torch.randn(8, 2), torch.randint(0, 2, (8,)))
    """

    name = "focal"

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | Tensor | None = None,
        reduction: str = "mean",
        ignore_index: int = -100,
    ):
        super().__init__()
        if gamma < 0:
            raise TraincraftError(f"loss 'focal': gamma must be >= 0, got {gamma}")
        if reduction not in ("mean", "sum", "none"):
            raise TraincraftError(f"loss 'focal': reduction must be mean, sum or none, got {reduction!r}")
        self.gamma = float(gamma)
        self.reduction = reduction
        self.ignore_index = int(ignore_index)
        # A scalar alpha stays a Python float; a per-class alpha is a buffer that follows .to().
        self.alpha: float | None = None
        class_alpha = None
        if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            self.alpha = float(alpha)
        elif alpha is not None:
            class_alpha = torch.as_tensor(alpha, dtype=torch.float32).reshape(-1)
        self.register_buffer("class_alpha", class_alpha)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred = _at_least_float32(pred)
        if _is_binary(self.name, pred, target):
            loss, count = self._binary(pred, target.to(pred.dtype)), None
        else:
            loss, count = self._multiclass(pred, target)
        if self.reduction == "none":
            return loss
        total = loss.sum()
        if self.reduction == "sum":
            return total
        return total / count if count is not None else total / loss.numel()

    def summed(self, pred: Tensor, target: Tensor) -> SummedLoss | Tensor:
        """Multi-class: ``Ratio(Σ loss, counted targets)``, exact when positions are ignored
        unevenly across batches; binary: the per-element mean, as it is."""
        pred = _at_least_float32(pred)
        if self.reduction != "mean" or _is_binary(self.name, pred, target):
            return self(pred, target)
        loss, count = self._multiclass(pred, target)
        return Ratio(loss.sum(), count)

    def _binary(self, pred: Tensor, target: Tensor) -> Tensor:
        loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
        if self.gamma:
            prob = pred.sigmoid()
            loss = loss * _modulation(prob + target - 2 * prob * target, self.gamma)
        alpha = self._binary_alpha(pred)
        if alpha is not None:
            loss = loss * (alpha * target + (1 - alpha) * (1 - target))
        return loss

    def _binary_alpha(self, pred: Tensor) -> Tensor | float | None:
        if self.class_alpha is None:
            return self.alpha
        if pred.dim() < 2 or pred.shape[1] != self.class_alpha.numel():
            raise ShapeError(
                f"loss 'focal': {self.class_alpha.numel()} alpha values need a prediction with "
                f"that many channels in dim 1, got shape {_fmt(pred.shape)}"
            )
        return self.class_alpha.to(pred.dtype).view(-1, *([1] * (pred.dim() - 2)))

    def _multiclass(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        valid = target != self.ignore_index
        index = target.masked_fill(~valid, 0).long()
        log_pt = F.log_softmax(pred, dim=1).gather(1, index.unsqueeze(1)).squeeze(1)
        loss = -log_pt
        if self.gamma:
            loss = loss * _modulation(-torch.expm1(log_pt), self.gamma)  # expm1: 1 - p_t, exactly
        if self.class_alpha is not None:
            if self.class_alpha.numel() != pred.shape[1]:
                raise ShapeError(
                    f"loss 'focal': {self.class_alpha.numel()} alpha values for "
                    f"{pred.shape[1]} classes (prediction shape {_fmt(pred.shape)})"
                )
            loss = loss * self.class_alpha.to(loss.dtype)[index]
        elif self.alpha is not None:
            loss = loss * self.alpha
        return loss.masked_fill(~valid, 0.0), valid.sum()

    def extra_repr(self) -> str:
        alpha = self.alpha if self.class_alpha is None else self.class_alpha.tolist()
        return f"gamma={self.gamma}, alpha={alpha}, reduction={self.reduction!r}"


# --------------------------------------------------------------------------------------------
# torch losses whose forward takes more than (input, target)
# --------------------------------------------------------------------------------------------


def _pair_and_target(pred: Sequence[Tensor], target: Any) -> tuple[Any, ...]:
    return pred[0], pred[1], target


def _mean_target_var(pred: Sequence[Tensor], target: Any) -> tuple[Any, ...]:
    return pred[0], target, pred[1]


def _triplet(pred: Sequence[Tensor], target: Any) -> tuple[Any, ...]:
    return pred[0], pred[1], pred[2]


def _ctc(pred: Sequence[Tensor], target: Any) -> tuple[Any, ...]:
    if not isinstance(target, (tuple, list)) or len(target) != 2:
        raise ShapeError(
            "loss 'ctc': the target must be (targets, target_lengths), "
            f"got {type(target).__name__}"
        )
    return pred[0], target[0], pred[1], target[1]


@dataclass(frozen=True)
class _Convention:
    """How ``loss_fn(pred, target)`` maps onto a torch loss's own forward arguments."""

    torch_class: type[nn.Module]
    arrange: Callable[[Sequence[Tensor], Any], tuple[Any, ...]]
    pred: tuple[str, ...]  # names of the prediction's parts, in order
    doc: str


_CONVENTIONS: dict[str, _Convention] = {
    "margin_ranking": _Convention(
        nn.MarginRankingLoss, _pair_and_target, ("x1", "x2"),
        "pred=(x1, x2), target=y in {1, -1}",
    ),
    "cosine_embedding": _Convention(
        nn.CosineEmbeddingLoss, _pair_and_target, ("x1", "x2"),
        "pred=(x1, x2), target=y in {1, -1}",
    ),
    "gaussian_nll": _Convention(
        nn.GaussianNLLLoss, _mean_target_var, ("mean", "var"),
        "pred=(mean, var), target=observations; calls GaussianNLLLoss(mean, target, var)",
    ),
    "triplet_margin": _Convention(
        nn.TripletMarginLoss, _triplet, ("anchor", "positive", "negative"),
        "pred=(anchor, positive, negative); target ignored",
    ),
    "triplet_margin_with_distance": _Convention(
        nn.TripletMarginWithDistanceLoss, _triplet, ("anchor", "positive", "negative"),
        "pred=(anchor, positive, negative); target ignored",
    ),
    "ctc": _Convention(
        nn.CTCLoss, _ctc, ("log_probs", "input_lengths"),
        "pred=(log_probs (T, N, C), input_lengths), target=(targets, target_lengths)",
    ),
}


class MultiInputLoss(nn.Module):
    """A torch loss with more than (input, target), called as ``loss_fn(pred, target)``.

    ``pred`` is the tuple the model returns; see the table of conventions in the docs.

    Example:
        >>> loss_fn = MultiInputLoss("margin_ranking", margin=0.1)
        >>> loss_fn((torch.randn(4), torch.randn(4)), torch.tensor([1.0, -1.0, 1.0, 1.0]))
    """

    def __init__(self, name: str, **kwargs: Any):
        super().__init__()
        self.name = name
        self.convention = _CONVENTIONS[name]
        self.loss = self.convention.torch_class(**kwargs)

    @property
    def reduction(self) -> str:
        return self.loss.reduction

    def forward(self, pred: Any, target: Any) -> Tensor:
        parts = self.convention.pred
        if not isinstance(pred, (tuple, list)) or len(pred) != len(parts):
            got = f"{len(pred)} values" if isinstance(pred, (tuple, list)) else type(pred).__name__
            raise ShapeError(
                f"loss {self.name!r}: the model must return ({', '.join(parts)}), got {got}"
            )
        return self.loss(*self.convention.arrange(pred, target))


# --------------------------------------------------------------------------------------------
# the table of names
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    name: str
    cls: type[nn.Module] | None  # None: this torch version lacks it
    kind: str
    aliases: tuple[str, ...] = ()
    doc: str = "pred, target"
    defaults: Mapping[str, Any] | None = None


_ROWS: tuple[_Row, ...] = (
    _Row("l1", nn.L1Loss, ELEMENTWISE, ("mae", "mean_absolute_error")),
    _Row("mse", nn.MSELoss, ELEMENTWISE, ("l2", "mean_squared_error")),
    _Row("smooth_l1", nn.SmoothL1Loss, ELEMENTWISE),
    _Row("huber", nn.HuberLoss, ELEMENTWISE),
    _Row("cross_entropy", nn.CrossEntropyLoss, CLASS_OR_PROBS, ("ce", "xent"),
         "pred=logits (N, C, *), target=class indices (N, *) or probabilities (N, C, *)"),
    _Row("nll", nn.NLLLoss, CLASS_INDEX, ("nll2d", "nllloss2d", "negative_log_likelihood"),
         "pred=log-probabilities (N, C, *), target=class indices (N, *)"),
    _Row("bce", nn.BCELoss, ELEMENTWISE, ("binary_cross_entropy",),
         "pred=probabilities, target=0/1 of the same shape"),
    _Row("bce_with_logits", nn.BCEWithLogitsLoss, ELEMENTWISE,
         ("bce_logits", "binary_cross_entropy_with_logits"),
         "pred=logits, target=0/1 of the same shape"),
    _Row("kl_div", nn.KLDivLoss, ELEMENTWISE, ("kl", "kld", "kl_divergence"),
         "pred=log-probabilities, target=probabilities of the same shape",
         {"reduction": "batchmean"}),
    _Row("poisson_nll", nn.PoissonNLLLoss, ELEMENTWISE, ("poisson",),
         "pred=log-rate (log_input=True), target=counts"),
    _Row("gaussian_nll", nn.GaussianNLLLoss, ELEMENTWISE, ("gaussian",),
         _CONVENTIONS["gaussian_nll"].doc),
    _Row("soft_margin", nn.SoftMarginLoss, ELEMENTWISE, (), "pred, target in {1, -1}"),
    _Row("multilabel_soft_margin", nn.MultiLabelSoftMarginLoss, ELEMENTWISE,
         ("multi_label_soft_margin",), "pred=logits (N, C), target=0/1 (N, C)"),
    _Row("multilabel_margin", nn.MultiLabelMarginLoss, OTHER, ("multi_label_margin",),
         "pred=(N, C), target=class indices (N, C) padded with -1"),
    _Row("multi_margin", nn.MultiMarginLoss, CLASS_INDEX, ("multi_class_hinge",),
         "pred=scores (N, C), target=class indices (N,)"),
    _Row("hinge_embedding", nn.HingeEmbeddingLoss, ELEMENTWISE, (),
         "pred=distances, target in {1, -1}"),
    _Row("margin_ranking", nn.MarginRankingLoss, OTHER, ("ranking",),
         _CONVENTIONS["margin_ranking"].doc),
    _Row("cosine_embedding", nn.CosineEmbeddingLoss, OTHER, (),
         _CONVENTIONS["cosine_embedding"].doc),
    _Row("triplet_margin", nn.TripletMarginLoss, OTHER, ("triplet",),
         _CONVENTIONS["triplet_margin"].doc),
    _Row("triplet_margin_with_distance", nn.TripletMarginWithDistanceLoss, OTHER, (),
         _CONVENTIONS["triplet_margin_with_distance"].doc),
    _Row("ctc", nn.CTCLoss, OTHER, ("connectionist_temporal_classification",),
         _CONVENTIONS["ctc"].doc),
    # Newer torch only; it holds the classifier's weights, so the optimizer must see its parameters.
    _Row("linear_cross_entropy", getattr(nn, "LinearCrossEntropyLoss", None), OTHER, (),
         "pred=features (N, in_features), target=class indices (N,); needs in_features, "
         "num_classes"),
    _Row("dice", DiceLoss, AUTO, ("soft_dice",),
         "pred=logits (N, C, *) + class indices (N, *), or logits + 0/1 target of the same shape"),
    _Row("focal", FocalLoss, AUTO, ("sigmoid_focal", "softmax_focal"),
         "pred=logits (N, C, *) + class indices (N, *), or logits + 0/1 target of the same shape"),
    _Row("tversky", TverskyLoss, AUTO, (),
         "pred=logits (N, C, *) + class indices (N, *), or logits + 0/1 target of the same shape"),
)

_REGISTRY = Registry("loss")
_KIND: dict[str, str] = {}  # canonical name -> shape rule
_CLASS: dict[str, type[nn.Module]] = {}  # canonical name -> the class its keyword arguments go to
_NAME_OF_CLASS: dict[type, str] = {}  # class -> canonical name, for modules built elsewhere


def _auto_aliases(row: _Row) -> list[str]:
    """``<name>_loss`` (torch.nn.functional's spelling) and torch's class name with or without
    ``Loss`` (``CrossEntropyLoss``, ``CrossEntropy``; the registry ignores case)."""
    extra = [f"{row.name}_loss"]
    if row.cls is not None and row.cls.__module__.startswith("torch."):
        extra += [row.cls.__name__.lower(), row.cls.__name__.lower().removesuffix("loss")]
    return [a for a in (*row.aliases, *extra) if a != row.name]


def _register(row: _Row) -> None:
    assert row.cls is not None
    factory: Callable[..., nn.Module]
    factory = functools.partial(MultiInputLoss, row.name) if row.name in _CONVENTIONS else row.cls
    _REGISTRY.add(row.name, factory, aliases=_auto_aliases(row), doc=row.doc, **(row.defaults or {}))
    _KIND[row.name] = row.kind
    _CLASS[row.name] = row.cls
    _NAME_OF_CLASS[row.cls] = row.name


for _row in _ROWS:
    if _row.cls is not None:
        _register(_row)


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------


def names() -> list[str]:
    """Canonical loss names, sorted.

    Example:
        >>> "cross_entropy" in names()
        True
    """
    return _REGISTRY.names()


def aliases() -> dict[str, str]:
    """``alias -> canonical name`` (names are also case-insensitive and accept dashes).

    Example:
        >>> aliases()["mae"]
        'l1'
    """
    return _REGISTRY.aliases()


def describe(name: str) -> str:
    """The calling convention of a registered loss, e.g. ``"pred=(x1, x2), target=y in {1, -1}"``."""
    return _REGISTRY.entry(name).doc


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


class CallableLoss(nn.Module):
    """A plain function ``(pred, target) -> Tensor`` as a module (so ``.to()`` and repr work).

    Example:
        >>> CallableLoss(torch.nn.functional.mse_loss)(torch.zeros(3), torch.ones(3))
        tensor(1.)
    """

    def __init__(self, fn: Callable[..., Tensor]):
        super().__init__()
        self.fn = fn
        self.name = _snake(getattr(fn, "__name__", type(fn).__name__))

    def forward(self, pred: Any, target: Any) -> Tensor:
        return self.fn(pred, target)

    def extra_repr(self) -> str:
        return self.name


class WeightedLoss(nn.Module):
    """A weighted sum of loss terms that remembers each term's unweighted value.

    ``forward(pred, target)`` returns ``Σ weight_i · term_i(pred, target)`` and leaves
    ``last_terms[name_i]`` = the term's value, detached (no host sync); a repeated name gets
    ``_2``, ``_3``. The trainer logs them as ``train_loss/<name>``.

    Args:
        terms: loss modules or callables ``(pred, target) -> Tensor``.
        weights: one float per term (default: all 1.0).
        term_names: one key per term (default: the term's registered name).

    Example:
        >>> loss_fn = WeightedLoss([nn.CrossEntropyLoss(), DiceLoss()], [1.0, 0.5])
        >>> loss_fn.term_names
        ('cross_entropy', 'dice')
    """

    def __init__(
        self,
        terms: Sequence[nn.Module | Callable[..., Tensor]],
        weights: Sequence[float] | None = None,
        term_names: Sequence[str] | None = None,
    ):
        super().__init__()
        if not terms:
            raise TraincraftError("loss: a list of terms needs at least one term")
        weights = [1.0] * len(terms) if weights is None else [float(w) for w in weights]
        if len(weights) != len(terms):
            raise TraincraftError(f"loss: {len(terms)} terms but {len(weights)} weights")
        modules = [t if isinstance(t, nn.Module) else CallableLoss(t) for t in terms]
        self.terms = nn.ModuleList(modules)
        self.weights = tuple(weights)
        keys = list(term_names) if term_names is not None else [_loss_name(m) for m in modules]
        self.term_names = _unique(keys)
        self.last_terms: dict[str, Tensor] = {}

    def forward(self, pred: Any, target: Any) -> Tensor:
        values = {key: term(pred, target) for key, term in zip(self.term_names, self.terms)}
        self.last_terms = {key: value.detach() for key, value in values.items()}
        parts = [w * v if w != 1.0 else v for w, v in zip(self.weights, values.values())]
        return functools.reduce(torch.add, parts)

    def summed(self, pred: Any, target: Any) -> SummedLoss:
        """Each term's sums side by side (a per-sample mean term as ``(mean × samples,
        samples)``): the loss of several batches or processes together is that of their summed
        sums, term by term."""
        parts, layout, values = [], [], {}
        samples = _samples(pred, target)
        for key, term in zip(self.term_names, self.terms):
            sums_of = summing(term)
            batch = sums_of(pred, target) if sums_of is not None else term(pred, target)
            if not isinstance(batch, SummedLoss):
                batch = plain_ratio(batch, samples)
            values[key] = batch.value.detach()
            parts.append(batch.sums.reshape(-1))
            layout.append((batch.source, batch.sums.numel()))
        self.last_terms = values
        dtype = functools.reduce(torch.promote_types, [part.dtype for part in parts])
        return SummedLoss(torch.cat([part.to(dtype) for part in parts]), _TermSums(self, layout))

    def extra_repr(self) -> str:
        return ", ".join(f"{n}×{w:g}" for n, w in zip(self.term_names, self.weights))


class _TermSums:
    """How a weighted list's sums become its loss and its terms' values: each term's slice."""

    ratio = False

    def __init__(self, loss: WeightedLoss, layout: list[tuple[Any, int]]):
        self.loss, self.layout = loss, layout

    def term_values_of_sums(self, sums: Tensor) -> dict[str, Tensor]:
        values, start = {}, 0
        for key, (source, size) in zip(self.loss.term_names, self.layout):
            values[key] = source.value_of_sums(sums[start : start + size])
            start += size
        return values

    def value_of_sums(self, sums: Tensor) -> Tensor:
        values = self.term_values_of_sums(sums).values()
        parts = [w * v if w != 1.0 else v for w, v in zip(self.loss.weights, values)]
        return functools.reduce(torch.add, parts)


def _samples(pred: Any, target: Any) -> int:
    """The batch's samples, as the trainer counts them: the target's leading size, else the
    prediction's."""
    from traincraft.data import num_samples

    return num_samples(target) if target is not None else num_samples(pred)


# --------------------------------------------------------------------------------------------
# losses that are not a per-sample mean
# --------------------------------------------------------------------------------------------

#: torch's default ignore_index (no target is ignored unless it holds this value).
_TORCH_IGNORE_INDEX = -100


def counts_targets(loss: nn.Module) -> bool:
    """Whether a class-index loss divides by something other than its samples: class weights,
    or an ``ignore_index`` given (in the spec, or other than torch's -100 on a module)."""
    if getattr(loss, "weight", None) is not None and isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return True
    return bool(getattr(loss, "ignore_index_given", False)) or (
        getattr(loss, "ignore_index", _TORCH_IGNORE_INDEX) != _TORCH_IGNORE_INDEX
    )


def _class_index_ratio(loss: nn.CrossEntropyLoss | nn.NLLLoss, pred: Tensor, target: Tensor) -> SummedLoss | Tensor:
    """torch's weighted / ignore_index mean as ``Ratio(Σ wᵢ lᵢ, Σ wᵢ)`` over counted targets;
    class probabilities (a per-element mean) as they are."""
    if target.is_floating_point():
        return loss(pred, target)
    weight, ignore_index = loss.weight, loss.ignore_index
    if isinstance(loss, nn.CrossEntropyLoss):
        numerator = F.cross_entropy(pred, target, weight=weight, ignore_index=ignore_index, reduction="sum",
                                    label_smoothing=loss.label_smoothing)
    else:
        numerator = F.nll_loss(pred, target, weight=weight, ignore_index=ignore_index, reduction="sum")
    if weight is None:
        return RatioLoss(numerator, (target != ignore_index).sum(dtype=numerator.dtype))
    # Σ w_yᵢ over the counted targets in one kernel: nll of a constant -1 does the weighting and
    # the ignoring as torch's mean does (a third of the cost of a mask, a gather and a sum).
    if weight.dtype != numerator.dtype:
        weight = weight.to(numerator.dtype)
    key = (numerator.device, numerator.dtype)
    minus_one = _MINUS_ONE.get(key)
    if minus_one is None:  # made once per device: no copy to the device per batch
        with torch.inference_mode(False):  # a plain tensor, even when first made by evaluate()
            minus_one = _MINUS_ONE[key] = torch.full((), -1.0, dtype=numerator.dtype, device=numerator.device)
    return RatioLoss(numerator, F.nll_loss(minus_one.expand(pred.shape), target, weight=weight,
                                           ignore_index=ignore_index, reduction="sum"))


_MINUS_ONE: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def summing(loss_fn: Any) -> Callable[[Any, Any], SummedLoss | Tensor] | None:
    """``sums_of(pred, target)`` for a loss that is not a per-sample mean (returning a
    :class:`~traincraft.loss_sums.SummedLoss`, or the mean when a batch's form is one), or None
    for a per-sample mean (the trainer weights it by samples, at no extra cost).

    Not a per-sample mean: ``cross_entropy``/``nll`` with class weights or an ``ignore_index``
    (class-index targets), ``focal`` with an ``ignore_index``, ``dice``/``tversky`` over the
    batch (not ``per_sample``), a weighted list with any of these, and any module with a
    ``summed(pred, target)`` method.

    Example:
        >>> sums_of = summing(build({"name": "cross_entropy", "class_weight": [1, 3]}))
        >>> sums_of(logits, y).value      # == the torch loss of the batch
    """
    if isinstance(loss_fn, WeightedLoss):
        return loss_fn.summed if any(summing(term) is not None for term in loss_fn.terms) else None
    if isinstance(loss_fn, _OverlapLoss):
        return None if loss_fn.per_sample else loss_fn.summed
    if isinstance(loss_fn, FocalLoss):
        return loss_fn.summed if counts_targets(loss_fn) else None
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return functools.partial(_class_index_ratio, loss_fn) if counts_targets(loss_fn) else None
    summed = getattr(loss_fn, "summed", None)
    return summed if callable(summed) else None


def build(spec: LossSpec) -> nn.Module:
    """Turn a loss spec into a module called as ``loss_fn(pred, target)`` -> scalar mean.

    Args:
        spec: a name (``"mse"``, ``"CrossEntropy"``, ``"bce-logits"``), a ``"package.module:name"``
            import path, a dict ``{"name": ..., **kwargs}``, a list of such (with an optional
            ``"weight"`` per term, default 1.0) for a :class:`WeightedLoss`, an ``nn.Module``
            (returned as is), an ``nn.Module`` class (instantiated) or a callable (wrapped).

    Raises:
        UnknownNameError: an unknown name, with the closest valid names.
        TraincraftError: a keyword the loss does not take, or a reduction other than the mean.

    Example:
        >>> build({"name": "huber", "delta": 0.5})
        HuberLoss()
        >>> build([{"name": "cross_entropy"}, {"name": "dice", "weight": 0.5, "smooth": 1}])
    """
    if isinstance(spec, nn.Module):
        _check_reduction(_loss_name(spec), getattr(spec, "reduction", "mean"))
        return spec
    if isinstance(spec, (str, Mapping)):
        return _build_one(spec)
    if isinstance(spec, (list, tuple)):
        return _build_terms(spec)
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return build(spec())
    if callable(spec):
        return CallableLoss(spec)
    raise TraincraftError(
        f"loss must be a name, a dict with 'name', a list of terms, a module or a callable; "
        f"got {type(spec).__name__}"
    )


def _build_one(spec: str | Mapping[str, Any]) -> nn.Module:
    name, kwargs = split_spec(spec, "loss")
    if ":" in name:
        return _build_imported(name, kwargs)
    canonical = _REGISTRY.canonical(name)
    kwargs = _prepare_kwargs(canonical, kwargs)
    loss = _REGISTRY.create(canonical, **kwargs)
    if "ignore_index" in kwargs and canonical in ("cross_entropy", "nll", "focal"):
        # Given, even as torch's -100: targets hold it, so the counted targets vary by batch.
        loss.ignore_index_given = True
    return loss


def _build_imported(path: str, kwargs: dict[str, Any]) -> nn.Module:
    """``"package.module:Name"``: a class gets the keyword arguments, a function gets them bound."""
    obj = import_object(path, "loss")
    if "reduction" in kwargs:
        _check_reduction(path, kwargs["reduction"])
    try:
        if isinstance(obj, type):
            return build(obj(**kwargs))
        if kwargs:
            obj = functools.partial(obj, **kwargs)
    except TypeError as err:
        raise TraincraftError(f"loss {path!r}: {err}") from err
    return build(obj)


def _prepare_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Check a registered loss's keyword arguments and convert YAML values (lists, paths)."""
    kwargs = dict(kwargs)
    if "class_weight" in kwargs:  # the list form uses "weight" for the term's weight
        if "weight" in kwargs:
            raise TraincraftError(f"loss {name!r}: give 'class_weight' or 'weight', not both")
        kwargs["weight"] = kwargs.pop("class_weight")
    for key in _LEGACY_ARGS:
        if key in kwargs:
            raise TraincraftError(
                f"loss {name!r}: {key!r} is deprecated in torch and changes the reduction; "
                "remove it (traincraft always uses the mean)"
            )
    if "reduction" in kwargs:
        _check_reduction(name, kwargs["reduction"])
    _check_keys(name, kwargs)
    check_numbers(f"loss {name!r}", arguments(name) or {}, kwargs)
    for key in _TENSOR_ARGS:
        if isinstance(kwargs.get(key), (list, tuple)):
            kwargs[key] = torch.tensor(kwargs[key], dtype=torch.float32)
    for key in _CALLABLE_ARGS:
        if isinstance(kwargs.get(key), str):
            kwargs[key] = import_object(kwargs[key], f"loss {name!r} {key}")
    return kwargs


def arguments(name: str) -> dict[str, Any] | None:
    """A registered loss's keyword arguments with their defaults (``inspect.Parameter.empty``
    for one without); None when it takes any keyword.

    Example:
        >>> arguments("huber")
        {'reduction': 'mean', 'delta': 1.0}
    """
    cls = _CLASS[_REGISTRY.canonical(name)]
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name: p.default for p in params
            if p.kind is not inspect.Parameter.VAR_POSITIONAL and p.name not in _LEGACY_ARGS}


def _accepted_keys(cls: type) -> list[str] | None:
    """Keyword arguments of ``cls``; None when it takes ``**kwargs`` (anything goes)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [
        p.name for p in params
        if p.kind is not inspect.Parameter.VAR_POSITIONAL and p.name not in _LEGACY_ARGS
    ]


def _check_keys(name: str, kwargs: Mapping[str, Any]) -> None:
    accepted = _accepted_keys(_CLASS[name])
    if accepted is None:
        return
    for key in kwargs:
        if key not in accepted:
            valid = ", ".join(accepted) or "none"
            raise TraincraftError(
                f"loss {name!r} has no argument {key!r}{did_you_mean(key, accepted)}; "
                f"its arguments: {valid}"
            )


def _check_reduction(name: str, reduction: Any) -> None:
    allowed = _KL_REDUCTIONS if _canonical_or_none(name) == "kl_div" else _MEAN_REDUCTIONS
    if not isinstance(reduction, str) or reduction in allowed:
        return
    raise TraincraftError(
        f"loss {name!r}: reduction={reduction!r} is not supported; the trainer needs the mean "
        "over the batch's samples to weight batches by their size and report exact epoch "
        f"figures. Use {' or '.join(repr(r) for r in allowed)} (the default)"
    )


def _canonical_or_none(name: str) -> str | None:
    return _REGISTRY.canonical(name) if name in _REGISTRY else None


def _build_terms(specs: Sequence[Any]) -> WeightedLoss:
    if not specs:
        raise TraincraftError("loss: a list of terms needs at least one term")
    modules, weights = [], []
    for item in specs:
        weight: Any = 1.0
        if isinstance(item, Mapping):
            item = dict(item)
            weight = item.pop("weight", 1.0)
        if isinstance(item, (list, tuple)):
            raise TraincraftError("loss: a term of a list must be a name or a dict, not a list")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TraincraftError(f"loss term {item!r}: 'weight' must be a number, got {weight!r}")
        modules.append(build(item))
        weights.append(float(weight))
    return WeightedLoss(modules, weights)


def takes_probabilities(spec: LossSpec) -> bool:
    """True when the loss expects probabilities rather than logits (``bce``).

    Metrics then threshold predictions at 0.5 instead of 0. A list is True when every term is.

    Example:
        >>> takes_probabilities("bce"), takes_probabilities("bce_with_logits")
        (True, False)
    """
    module = spec if isinstance(spec, nn.Module) else build(spec)
    if isinstance(module, WeightedLoss):
        return all(takes_probabilities(term) for term in module.terms)
    return isinstance(module, nn.BCELoss)


# --------------------------------------------------------------------------------------------
# names of built modules
# --------------------------------------------------------------------------------------------


def _snake(text: str) -> str:
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", text)
    return text.lower().removesuffix("_loss") or "loss"


def _registered_name(module: Any) -> str | None:
    """The canonical name of a module built by us or a torch loss built elsewhere."""
    if isinstance(module, MultiInputLoss):
        return module.name
    for cls in type(module).__mro__:
        if cls in _NAME_OF_CLASS:
            return _NAME_OF_CLASS[cls]
    return None


def _loss_name(module: Any) -> str:
    if isinstance(module, WeightedLoss):
        return " + ".join(module.term_names)
    if isinstance(module, CallableLoss):
        return module.name
    return _registered_name(module) or _snake(type(module).__name__)


def _unique(keys: list[str]) -> tuple[str, ...]:
    """``[a, b, a, a]`` -> ``(a, b, a_2, a_3)``."""
    seen: dict[str, int] = {}
    out = []
    for key in keys:
        seen[key] = seen.get(key, 0) + 1
        out.append(key if seen[key] == 1 else f"{key}_{seen[key]}")
    return tuple(out)


# --------------------------------------------------------------------------------------------
# target_adapter
# --------------------------------------------------------------------------------------------


def _identity(pred: Any, target: Any) -> Any:
    return target


@dataclass(frozen=True)
class _Rule:
    name: str  # the loss, for messages
    kind: str  # ELEMENTWISE, CLASS_INDEX or CLASS_OR_PROBS
    pick: int | None = None  # which part of a tuple prediction the target is compared with


# Which part of a tuple prediction is compared elementwise with the target.
_PICK = {"gaussian_nll": 0}


def _rule_of(loss_fn: Any, pred: Any, target: Any) -> _Rule | None:
    if isinstance(loss_fn, WeightedLoss):
        return _combined_rule(loss_fn, pred, target)
    name = _registered_name(loss_fn)
    kind = _KIND.get(name or "", OTHER)
    pick = _PICK.get(name or "")
    compared = pred[pick] if pick is not None and isinstance(pred, (tuple, list)) else pred
    if kind == OTHER or not isinstance(compared, Tensor) or not isinstance(target, Tensor):
        return None
    if kind == AUTO:  # one value per target value: binary form; else logits (N, C, *) vs indices
        kind = ELEMENTWISE if compared.numel() == target.numel() else CLASS_INDEX
    return _Rule(str(name), kind, pick)


def _combined_rule(loss_fn: WeightedLoss, pred: Any, target: Any) -> _Rule | None:
    """A weighted sum is checked when all its terms follow the same rule."""
    rules = [_rule_of(term, pred, target) for term in loss_fn.terms]
    if any(rule is None for rule in rules):
        return None
    kinds = {rule.kind for rule in rules}
    picks = {rule.pick for rule in rules}
    if len(picks) != 1:
        return None
    if kinds == {CLASS_INDEX, CLASS_OR_PROBS}:
        kinds = {CLASS_INDEX}  # probabilities only if every term accepts them
    if len(kinds) != 1:
        return None
    return _Rule(_loss_name(loss_fn), kinds.pop(), picks.pop())


def target_adapter(loss_fn: Any, pred: Any, target: Any) -> Adapt:
    """Check the first batch once; return ``adapt(pred, target) -> target`` for every batch.

    Elementwise losses (mse, l1, bce, ...): equal shapes pass; shapes that differ only by size-1
    dimensions get the target reshaped to the prediction's shape; an integer target is cast to the
    prediction's dtype (float32 for a float16/bfloat16 prediction). Class-index losses
    (cross_entropy, nll, ...): logits ``(N, C, *)`` with integer ``(N, *)`` pass (cast to int64),
    ``(N, 1, *)`` is aligned to ``(N, *)``. Anything else raises :class:`ShapeError`. Other losses
    and user callables get the identity.

    Args:
        loss_fn: what :func:`build` returned (or any callable).
        pred: the model's output on the first batch.
        target: the first batch's target.

    Returns:
        A function applied to every later batch: a reshape and/or a dtype cast, no host sync.

    Example:
        >>> loss_fn = build("mse")
        >>> adapt = target_adapter(loss_fn, torch.zeros(32, 1), torch.zeros(32))
        >>> adapt(torch.zeros(7, 1), torch.zeros(7)).shape
        torch.Size([7, 1])
    """
    rule = _rule_of(loss_fn, pred, target)
    if rule is None:
        return _identity
    compared = pred if rule.pick is None else pred[rule.pick]
    return _CHECKS[rule.kind](rule, compared, target)


def _fmt(shape: torch.Size | tuple[int, ...]) -> str:
    return str(tuple(shape))


def _compute_dtype(pred: Tensor) -> torch.dtype:
    # Autocast computes losses in float32; a bfloat16 target would only lose precision.
    return pred.dtype if pred.dtype in (torch.float32, torch.float64) else torch.float32


def _drop_ones(shape: torch.Size) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _elementwise_check(rule: _Rule, pred: Tensor, target: Tensor) -> Adapt:
    reshape = pred.shape != target.shape
    if reshape and (
        pred.numel() != target.numel() or _drop_ones(pred.shape) != _drop_ones(target.shape)
    ):
        raise ShapeError(
            f"loss {rule.name!r}: prediction shape {_fmt(pred.shape)} and target shape "
            f"{_fmt(target.shape)} do not match; {_elementwise_hint(pred, target)}"
        )
    dtype = _compute_dtype(pred) if pred.is_floating_point() else None
    cast = dtype if dtype is not None and target.dtype != dtype else None
    return _make_adapt(rule.pick, reshape, cast)


def _elementwise_hint(pred: Tensor, target: Tensor) -> str:
    indices = not target.is_floating_point() and pred.dim() == target.dim() + 1
    if indices and pred.shape[0] == target.shape[0]:
        return "the target looks like class indices: use 'cross_entropy' for classes"
    return "the model must output one value per target value (the target's shape)"


def _make_adapt(pick: int | None, reshape: bool, dtype: torch.dtype | None) -> Adapt:
    if not reshape and dtype is None:
        return _identity

    def adapt(pred: Any, target: Tensor) -> Tensor:
        if reshape:  # the current prediction's shape: the last batch may be smaller
            target = target.reshape((pred if pick is None else pred[pick]).shape)
        return target if dtype is None else target.to(dtype)

    return adapt


def _class_check(rule: _Rule, pred: Tensor, target: Tensor) -> Adapt:
    if pred.dim() >= 1 and (pred.dim() < 2 or pred.shape[1] == 1) and target.is_floating_point():
        # A softmax over one class is always 1: the loss would be 0 whatever the model does.
        raise ShapeError(
            f"loss {rule.name!r}: prediction shape {_fmt(pred.shape)} has one output per sample, "
            f"and a softmax over one class is always 1 (the loss would be 0). For a "
            f"{str(target.dtype).removeprefix('torch.')} target of shape {_fmt(target.shape)}: "
            "use 'mse' (or another regression loss) for values, 'bce_with_logits' for 0/1 labels, "
            "or make the model output num_classes logits"
        )
    if target.is_floating_point():
        if rule.kind == CLASS_OR_PROBS and target.shape == pred.shape:
            return _make_adapt(None, False, _float_cast(pred, target))
        raise ShapeError(_float_target_message(rule, pred, target))
    if pred.dim() < 2 or pred.shape[1] == 1:
        raise ShapeError(
            f"loss {rule.name!r}: prediction shape {_fmt(pred.shape)} has one output per sample "
            f"but target shape {_fmt(target.shape)} holds class indices; use 'bce_with_logits' "
            "for a binary target, or make the model output num_classes logits"
        )
    cast = torch.int64 if target.dtype != torch.int64 else None
    batch_ok = target.dim() >= 1 and pred.shape[0] == target.shape[0]
    if batch_ok and pred.dim() == target.dim() + 1 and pred.shape[2:] == target.shape[1:]:
        return _make_adapt(None, False, cast)
    if batch_ok and target.dim() == pred.dim() and target.shape[1] == 1 and (
        pred.shape[2:] == target.shape[2:]
    ):
        return _squeeze_adapt(cast)
    raise ShapeError(
        f"loss {rule.name!r}: prediction shape {_fmt(pred.shape)} and target shape "
        f"{_fmt(target.shape)} do not match; expected logits (N, C, *) and integer class "
        "indices (N, *)"
    )


def _float_cast(pred: Tensor, target: Tensor) -> torch.dtype | None:
    dtype = _compute_dtype(pred)
    return dtype if target.dtype != dtype else None


def _float_target_message(rule: _Rule, pred: Tensor, target: Tensor) -> str:
    what = f"a {str(target.dtype).removeprefix('torch.')} target of shape {_fmt(target.shape)}"
    head = f"loss {rule.name!r}: prediction shape {_fmt(pred.shape)} and {what} do not match; "
    if rule.kind == CLASS_OR_PROBS:
        return head + (
            "class indices must be integers (convert with .long()); class probabilities "
            "must have the prediction's shape"
        )
    return head + "class indices must be integers (convert the target with .long())"


def _squeeze_adapt(dtype: torch.dtype | None) -> Adapt:
    def adapt(pred: Any, target: Tensor) -> Tensor:
        target = target.squeeze(1)  # (N, 1, *) -> (N, *): a view
        return target if dtype is None else target.to(dtype)

    return adapt


_CHECKS: dict[str, Callable[[_Rule, Tensor, Tensor], Adapt]] = {
    ELEMENTWISE: _elementwise_check,
    CLASS_INDEX: _class_check,
    CLASS_OR_PROBS: _class_check,
}
