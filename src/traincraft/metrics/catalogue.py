"""The metric names: the registry, and building a metric from a name, a dict or an object."""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

from traincraft.errors import TraincraftError
from traincraft.metrics.base import Metric
from traincraft.metrics.classification import (
    Accuracy,
    BalancedAccuracy,
    F1Macro,
    MatthewsCorrelation,
    PrecisionMacro,
    RecallMacro,
    TopKAccuracy,
)
from traincraft.metrics.confusion import ConfusionMatrix, PerClass
from traincraft.metrics.multilabel import MultilabelAccuracy, MultilabelF1, SubsetAccuracy
from traincraft.metrics.ranking import AUROC, AveragePrecision
from traincraft.metrics.regression import (
    ExplainedVariance,
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanSquaredError,
    R2Score,
    RootMeanSquaredError,
    SymmetricMeanAbsolutePercentageError,
)
from traincraft.registry import Registry, import_object, split_spec

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
REGISTRY.add(
    "balanced_accuracy",
    BalancedAccuracy,
    aliases=["balanced_accuracy_score"],
    doc="mean recall over the target classes",
)
REGISTRY.add(
    "mcc",
    MatthewsCorrelation,
    aliases=["matthews_corrcoef", "matthews_correlation"],
    doc="Matthews correlation coefficient",
)
REGISTRY.add(
    "auroc",
    AUROC,
    aliases=["roc_auc", "auc", "roc_auc_score"],
    doc="area under the ROC curve, exact; macro one-vs-rest for several classes",
)
REGISTRY.add(
    "average_precision",
    AveragePrecision,
    aliases=["ap", "average_precision_score", "auprc", "pr_auc"],
    doc="average precision, exact; macro one-vs-rest for several classes",
)
REGISTRY.add(
    "confusion_matrix",
    ConfusionMatrix,
    doc="C×C counts, rows targets (a table for results.json, not a column)",
)
REGISTRY.add(
    "per_class",
    PerClass,
    aliases=["classification_report", "per_class_metrics"],
    doc="precision/recall/F1/support of each class (a table, not a column)",
)
REGISTRY.add(
    "multilabel_accuracy",
    MultilabelAccuracy,
    aliases=["hamming_accuracy"],
    doc="right (sample, label) decisions / all",
)
REGISTRY.add(
    "subset_accuracy",
    SubsetAccuracy,
    aliases=["multilabel_subset_accuracy", "exact_match"],
    doc="samples with every label right / samples",
)
REGISTRY.add(
    "multilabel_f1", MultilabelF1, aliases=["f1_multilabel"], doc="F1 over labels (macro/micro/weighted)"
)
REGISTRY.add(
    "mape",
    MeanAbsolutePercentageError,
    aliases=["mean_absolute_percentage_error"],
    doc="mean |ŷ − y| / |y| (a fraction)",
)
REGISTRY.add(
    "smape",
    SymmetricMeanAbsolutePercentageError,
    aliases=["symmetric_mean_absolute_percentage_error"],
    doc="mean 2|ŷ − y| / (|y| + |ŷ|)",
)
REGISTRY.add(
    "explained_variance",
    ExplainedVariance,
    aliases=["explained_variance_score"],
    doc="1 − Var(y − ŷ) / Var(y), uniform average",
)

#: What a metric's name may be: it becomes a history column (``val_<name>``) and a CSV header.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


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
    return build_named(spec, probabilities=probabilities)[1]


def build_named(spec: str | Mapping[str, Any] | Any, *, probabilities: bool = False) -> tuple[str, Any]:
    """:func:`build`, with the name the metric's figures go by: the ``name`` of a
    ``{"name": ..., "metric": ...}`` spec, else the metric's own (:func:`metric_name`).

    Example:
        >>> build_named({"name": "val_auc", "metric": "auroc"})
        ('val_auc', AUROC(name='val_auc'))
    """
    if isinstance(spec, Mapping) and "metric" in spec:
        return _renamed(spec, probabilities)
    metric = _build(spec, probabilities)
    return metric_name(metric), metric


def _renamed(spec: Mapping[str, Any], probabilities: bool) -> tuple[str, Any]:
    """``{"name": "my_auc", "metric": <name, "module:Class", class or object>, **kwargs}``."""
    name, target = spec.get("name"), spec["metric"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise TraincraftError(
            f"metric spec {dict(spec)!r}: 'name' must be a column name (letters, digits, _ . -, "
            f"not starting with a digit) when 'metric' says what to compute; got {name!r}"
        )
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "metric")}
    if isinstance(target, str):
        metric = _build({"name": target, **kwargs}, probabilities)
    elif isinstance(target, type) or not kwargs:
        metric = _build(target, probabilities) if not kwargs else _call(target, name, kwargs)
    else:
        raise TraincraftError(f"metric {name!r}: its metric is an object already built; it takes no keys")
    if isinstance(metric, Metric):
        metric.name = name  # our own metrics carry their name; others keep theirs, MetricSet uses this one
    return name, metric


def _build(spec: Any, probabilities: bool) -> Any:
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
        _require_package(name)
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


#: Packages that metrics are often taken from, and how to install them.
_INSTALL = {"torchmetrics": "pip install torchmetrics", "torcheval": "pip install torcheval"}


def _require_package(path: str) -> None:
    """One line saying how to install a known metrics package that a spec names but is missing."""
    top = path.partition(":")[0].split(".")[0]
    if top in _INSTALL and importlib.util.find_spec(top) is None:
        raise TraincraftError(
            f"metric {path!r} needs {top}, which is not installed: {_INSTALL[top]} "
            "(traincraft's own metrics need nothing more: traincraft list metrics)"
        )
