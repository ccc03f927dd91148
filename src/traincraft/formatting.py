"""Figures written for people: 4 significant digits, rates as percentages, times in s or m.

One convention for everything printed while training:

- **rates** (accuracy, precision, recall, F1, AUROC, IoU, Dice, ...: figures in [0, 1] whose name
  says so) as a percentage with two decimals: ``97.33%``;
- **everything else** (losses, errors, gradient norms, R², ...) with 4 significant digits:
  ``0.6575``, ``1.955``, ``1235``, ``1.235e-05``;
- **learning rates** with 3 significant digits: ``0.003``, ``5.39e-05``;
- **seconds** as ``0.35s``, ``12.4s``, ``3m05s``.

Example:
    >>> format_figure("val_accuracy", 0.97333), format_figure("val_loss", 0.657512)
    ('97.33%', '0.6575')
"""

from __future__ import annotations

import math

# Name parts that make a figure a rate (a share of samples or of overlap, in [0, 1]). A name
# that also says loss or error ("dice_loss", "top1_error") is not one.
_RATE_TERMS = ("acc", "precision", "recall", "f1", "fbeta", "f_score", "auc", "auroc", "auprc", "iou", "dice",
               "jaccard", "specificity", "sensitivity", "hit_rate")
_NOT_RATE_TERMS = ("loss", "error", "mse", "mae", "mape", "nll")


def is_rate(name: str) -> bool:
    """Whether the figure ``name`` is a rate, shown as a percentage (``val_accuracy``: yes,
    ``val_dice_loss``: no)."""
    key = str(name).lower()
    return any(t in key for t in _RATE_TERMS) and not any(t in key for t in _NOT_RATE_TERMS)


def significant(value: float, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits; ``nan``, ``inf`` as such.

    Example:
        >>> significant(0.657512), significant(1234.5), significant(0.0000123456)
        ('0.6575', '1235', '1.235e-05')
    """
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def format_figure(name: str, value: float) -> str:
    """A figure as shown in the epoch lines: a rate in [0, 1] as a percentage with two decimals,
    anything else with 4 significant digits.

    Example:
        >>> format_figure("train_f1", 0.5), format_figure("r2", 0.81234), format_figure("accuracy", 1.5)
        ('50.00%', '0.8123', '1.5')
    """
    value = float(value)
    if is_rate(name) and math.isfinite(value) and 0.0 <= value <= 1.0:
        return percent(value)
    return significant(value)


def percent(value: float, decimals: int = 2) -> str:
    """A rate as a percentage: ``0.997214`` -> ``99.72%``."""
    return f"{100 * float(value):.{decimals}f}%"


def format_lr(value: float) -> str:
    """A learning rate, 3 significant digits: ``0.003``, ``5.39e-05``."""
    return significant(value, 3)


def format_seconds(seconds: float) -> str:
    """A duration: ``0.35s``, ``12.4s``, ``3m05s``, ``2h03m``."""
    seconds = float(seconds)
    if not math.isfinite(seconds):
        return f"{seconds}s"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
