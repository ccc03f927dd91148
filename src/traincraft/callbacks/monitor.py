"""Is this value an improvement? The test is written once, here.

Early stopping, checkpointing of the best model and plateau schedules all ask the same question
of a monitored figure: which way is better (``mode``), by how much must it beat the best so far
(``min_delta``), and what is the best so far. :class:`Monitor` answers it and nothing else, so the
three agree on what "improved" means.

Example:
    >>> m = Monitor("val_loss", min_delta=0.01)
    >>> m.update(0.50), m.update(0.495), m.update(0.48)
    (True, False, True)
    >>> m.best
    0.48
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from traincraft.errors import TraincraftError, did_you_mean, expect_choice

Mode = Literal["min", "max"]

# Prefixes that say where a figure was measured, not which way it should go.
_SPLIT_PREFIXES = ("train_", "val_", "test_")

# Substrings that decide the direction of a figure. Lower-is-better terms are checked first, so
# "dice_loss" and "top1_error" are "min" although they also contain a higher-is-better term.
_MIN_TERMS = ("loss", "error", "mse", "mae", "mape", "msle", "nll", "perplexity", "ppl", "hinge", "kld",
              "kl_div", "kullback", "crossentropy", "cross_entropy", "huber", "logcosh", "poisson")
_MAX_TERMS = (
    "acc",  # also accuracy, top5_acc, balanced_accuracy
    "f1",
    "fbeta",
    "r2",
    "precision",  # also average_precision
    "recall",
    "auc",  # also roc_auc, pr_auc
    "auroc",
    "auprc",
    "iou",  # also miou
    "dice",
    "jaccard",
    "kappa",
    "mcc",
    "bleu",
    "rouge",
    "psnr",
    "ssim",
    "explained_variance",
)


def infer_mode(name: str) -> Mode:
    """Whether the figure ``name`` improves by going down (``"min"``) or up (``"max"``).

    The name is lower-cased and one ``train_``/``val_``/``test_`` prefix is dropped. A name
    containing a lower-is-better term (loss, error, mse, mae, mape, nll, perplexity, ppl) is
    ``"min"`` (also hinge, squared/categorical hinge, kld, crossentropy, huber, logcosh, poisson:
    Keras' loss-like metrics); otherwise one containing a higher-is-better term (acc, f1, fbeta, r2, precision,
    recall, auc, auroc, auprc, iou, dice, jaccard, kappa, mcc, bleu, rouge, psnr, ssim,
    explained_variance) is ``"max"``. A ``neg_`` prefix (scikit-learn's negated scorers, such as
    ``neg_mean_squared_error``) flips the answer.

    Args:
        name: the figure's name, as reported in the trainer's metrics.

    Returns:
        ``"min"`` or ``"max"``.

    Raises:
        TraincraftError: when the name contains none of the terms.

    Example:
        >>> infer_mode("val_loss"), infer_mode("val_accuracy"), infer_mode("neg_mean_squared_error")
        ('min', 'max', 'max')
    """
    key = str(name).strip().lower()
    for prefix in _SPLIT_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    negated = key.startswith("neg_")
    if negated:
        key = key[len("neg_") :]
    mode = _mode_of(key)
    if mode is None:
        raise TraincraftError(
            f"cannot tell whether {name!r} should go up or down: set mode='min' or mode='max'"
        )
    if negated:
        return "max" if mode == "min" else "min"
    return mode


def _mode_of(key: str) -> Mode | None:
    if any(term in key for term in _MIN_TERMS):
        return "min"
    if any(term in key for term in _MAX_TERMS):
        return "max"
    return None


def format_value(value: float) -> str:
    """A figure as shown in log lines: 4 decimals (``0.4016``), ``inf``/``nan`` as such.

    Below 0.001 in magnitude 4 decimals would print ``0.0000`` for every value, and from 1e5 on
    they are noise, so such figures get 4 significant digits instead (``1.235e-05``).

    Example:
        >>> format_value(0.40157), format_value(float("inf")), format_value(0.0000123456)
        ('0.4016', 'inf', '1.235e-05')
    """
    value = float(value)
    if math.isfinite(value) and value != 0.0 and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.4f}"


class Monitor:
    """Tracks the best value of one figure and tells whether a new value improves on it.

    Improvement is strict and needs a finite value. With ``b`` the best so far and ``d`` the
    ``min_delta``:

    =========  ==============================  ==============================
    mode       ``min_delta_mode="abs"``        ``min_delta_mode="rel"``
    =========  ==============================  ==============================
    ``min``    ``value < b - d``               ``value < b - |b| * d``
    ``max``    ``value > b + d``               ``value > b + |b| * d``
    =========  ==============================  ==============================

    The relative rule uses ``|b|`` so that it still asks for a step in the better direction when
    the best is negative (``b * (1 - d)`` would ask a negative loss to go *up*). The first finite
    value always improves on the starting ``best`` (``inf`` for min, ``-inf`` for max).

    Args:
        monitor: the name of the figure in the trainer's metrics, such as ``"val_loss"``.
        mode: ``"min"`` or ``"max"``; ``None`` (or ``"auto"``) infers it from the name with
            :func:`infer_mode`.
        min_delta: how much better than the best a value must be to count, ``>= 0``.
        min_delta_mode: ``"abs"`` (``min_delta`` in the figure's units) or ``"rel"`` (a fraction
            of the best's magnitude).

    Attributes:
        monitor: the figure's name.
        mode: ``"min"`` or ``"max"``, resolved.
        best: the best value so far; ``inf`` (min) or ``-inf`` (max) before any.

    Example:
        >>> m = Monitor("val_accuracy", min_delta=0.1, min_delta_mode="rel")
        >>> m.update(0.5), m.update(0.54), m.update(0.56)
        (True, False, True)
    """

    def __init__(
        self,
        monitor: str,
        mode: str | None = None,
        min_delta: float = 0.0,
        min_delta_mode: str = "abs",
    ) -> None:
        self.monitor = str(monitor)
        if mode is None or str(mode).strip().lower() == "auto":
            self.mode: Mode = infer_mode(self.monitor)
        else:
            self.mode = expect_choice("mode", mode, ("min", "max"))  # type: ignore[assignment]
        self.min_delta = _check_min_delta(min_delta)
        self.min_delta_mode = expect_choice("min_delta_mode", min_delta_mode, ("abs", "rel"))
        self.best: float = self._worst()

    def _worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf

    def reset(self) -> None:
        """Forget the best value, as at the start."""
        self.best = self._worst()

    def is_improvement(self, value: float) -> bool:
        """Whether ``value`` beats the best by more than ``min_delta``; never for nan or inf."""
        value = float(value)
        if not math.isfinite(value):
            return False
        if not math.isfinite(self.best):
            # Only the starting inf/-inf: inf - |inf| * d would be nan and refuse every value.
            return True
        margin = self.min_delta if self.min_delta_mode == "abs" else abs(self.best) * self.min_delta
        if self.mode == "min":
            return value < self.best - margin
        return value > self.best + margin

    def beats(self, value: float, reference: float) -> bool:
        """Whether ``value`` is better than ``reference`` by more than ``min_delta``."""
        value, reference = float(value), float(reference)
        if not math.isfinite(value):
            return False
        margin = self.min_delta if self.min_delta_mode == "abs" else abs(reference) * self.min_delta
        return value < reference - margin if self.mode == "min" else value > reference + margin

    def update(self, value: float) -> bool:
        """Record ``value`` as the best when it is an improvement; return whether it was."""
        improved = self.is_improvement(value)
        if improved:
            self.best = float(value)
        return improved

    def value_from(self, metrics: Mapping[str, Any]) -> float:
        """The monitored figure out of the trainer's metrics.

        Raises:
            TraincraftError: when ``metrics`` has no figure of that name; the message lists the
                figures that were reported and the closest names.
        """
        if self.monitor in metrics:
            return float(metrics[self.monitor])
        names = sorted(metrics)
        if not names:
            raise TraincraftError(
                f"monitor {self.monitor!r}: no figures were reported at this epoch"
                f"{_validation_hint(self.monitor, names)}"
            )
        hint = _validation_hint(self.monitor, names)
        close = "" if hint else did_you_mean(self.monitor, names)
        raise TraincraftError(
            f"monitor {self.monitor!r} is not among the reported figures{close}; "
            f"reported: {', '.join(names)}{hint}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "min_delta": self.min_delta,
            "min_delta_mode": self.min_delta_mode,
            "best": self.best,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the best value. ``min_delta`` keeps this object's setting, so a resumed run
        may change it; a different monitored figure or mode is refused, since its best would
        mean nothing here."""
        if state["monitor"] != self.monitor or state["mode"] != self.mode:
            raise TraincraftError(
                f"the saved state monitors {state['monitor']!r} ({state['mode']}) but this run "
                f"monitors {self.monitor!r} ({self.mode}): use the same monitor and mode to resume"
            )
        self.best = float(state["best"])

    def __repr__(self) -> str:
        return (
            f"Monitor({self.monitor!r}, mode={self.mode!r}, min_delta={self.min_delta}, "
            f"min_delta_mode={self.min_delta_mode!r}, best={self.best})"
        )


def _check_min_delta(min_delta: float) -> float:
    try:
        value = float(min_delta)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0.0):
        raise TraincraftError(
            f"min_delta must be a finite number >= 0, got {min_delta!r}: the direction comes "
            "from mode, not from the sign of min_delta"
        )
    return value


def _validation_hint(monitor: str, names: list[str]) -> str:
    # The usual cause: a val_* figure monitored in a run that has no validation data.
    if monitor.startswith("val_") and not any(n.startswith("val_") for n in names):
        alternative = "train_" + monitor[len("val_") :]
        return f" (give validation data, or monitor {alternative!r})"
    return ""
