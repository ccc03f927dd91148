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

from traincraft.metrics.base import BatchSums, Metric
from traincraft.metrics.catalogue import (
    REGISTRY,
    build,
    build_named,
    is_metric_like,
    metric_name,
    names,
)
from traincraft.metrics.classification import (
    Accuracy,
    BalancedAccuracy,
    F1Macro,
    MatthewsCorrelation,
    PrecisionMacro,
    RecallMacro,
    TopKAccuracy,
)
from traincraft.metrics.confusion import (
    ConfusionMatrix,
    PerClass,
    confusion_matrix,
    per_class_table,
)
from traincraft.metrics.metric_set import MetricSet
from traincraft.metrics.multilabel import MultilabelAccuracy, MultilabelF1, SubsetAccuracy
from traincraft.metrics.ranking import (
    AUROC,
    AveragePrecision,
    binary_auroc,
    binary_average_precision,
)
from traincraft.metrics.regression import (
    ExplainedVariance,
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanSquaredError,
    R2Score,
    RootMeanSquaredError,
    SymmetricMeanAbsolutePercentageError,
)
from traincraft.metrics.running_means import RunningMeans

__all__ = [
    "AUROC",
    "REGISTRY",
    "Accuracy",
    "AveragePrecision",
    "BalancedAccuracy",
    "BatchSums",
    "ConfusionMatrix",
    "ExplainedVariance",
    "F1Macro",
    "MatthewsCorrelation",
    "MeanAbsoluteError",
    "MeanAbsolutePercentageError",
    "MeanSquaredError",
    "Metric",
    "MetricSet",
    "MultilabelAccuracy",
    "MultilabelF1",
    "PerClass",
    "PrecisionMacro",
    "R2Score",
    "RecallMacro",
    "RootMeanSquaredError",
    "RunningMeans",
    "SubsetAccuracy",
    "SymmetricMeanAbsolutePercentageError",
    "TopKAccuracy",
    "binary_auroc",
    "binary_average_precision",
    "build",
    "build_named",
    "confusion_matrix",
    "is_metric_like",
    "metric_name",
    "names",
    "per_class_table",
]
