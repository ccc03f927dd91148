"""Ranking metrics, exact: AUROC and average precision from every sample's score, sorted once.

A ranking metric cannot be a ratio of sums: it depends on the order of all the scores. These keep
every valid sample's scores and label (on the device, batch after batch, no host read), and at
``compute()`` sort them once on the CPU in float64. Several processes gather every process's
scores before ``compute()`` (:meth:`traincraft.metrics.MetricSet.sync` with ``gather_fn``), so
the value over many uneven batches and processes equals scikit-learn's on the whole set.

Memory: one score per sample (C scores for C classes, float32 or float64) and one int64 label,
kept until the epoch's ``compute()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from traincraft.metrics.base import BatchSums
from traincraft.metrics.classification import _ClassificationMetric


def binary_auroc(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve of one score per sample: the Mann–Whitney U statistic over the
    positive–negative pairs, a tie counted as half (the trapezoids of scikit-learn's
    ``roc_auc_score``). NaN when every label is the same, or a score is NaN."""
    positives = int(positive.sum())
    negatives = positive.numel() - positives
    if positives == 0 or negatives == 0 or bool(scores.isnan().any()):
        return float("nan")
    ordered, order = scores.sort(stable=True)
    _, group, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
    # The average 1-based rank of each group of equal scores.
    last = counts.cumsum(0).double()
    ranks = (last - (counts.double() - 1) / 2)[group]
    rank_sum = float(ranks[positive[order]].sum())
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def binary_average_precision(scores: Tensor, positive: Tensor) -> float:
    """Σ (R_k − R_{k−1}) · P_k over the distinct scores, highest first: scikit-learn's
    ``average_precision_score`` (no interpolation; equal scores form one threshold). NaN when no
    label is positive, or a score is NaN."""
    positives = int(positive.sum())
    if positives == 0 or bool(scores.isnan().any()):
        return float("nan")
    ordered, order = scores.sort(descending=True, stable=True)
    hits = positive[order].double()
    true_pos, seen = hits.cumsum(0), torch.arange(1, hits.numel() + 1, dtype=torch.float64)
    # A threshold after each group of equal scores: the group's last position.
    last = torch.ones_like(ordered, dtype=torch.bool)
    last[:-1] = ordered[1:] != ordered[:-1]
    true_pos, seen = true_pos[last], seen[last]
    recall = true_pos / positives
    gained = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((gained * (true_pos / seen)).sum())


class _RankingMetric(_ClassificationMetric):
    """Keeps each valid sample's scores and label; the value from all of them at ``compute()``.

    Binary pred (``(N,)``, ``(N, 1)``): the scores as they are (any increasing function of them,
    e.g. the sigmoid, ranks the same). Multi-class pred ``(N, C, *)``: the softmax over classes
    (as given when ``probabilities``), one-vs-rest for each class, averaged over the classes that
    have both positives and negatives in the targets.
    """

    def __init__(self, *, probabilities: bool = False, ignore_index: int | None = None) -> None:
        super().__init__(probabilities=probabilities, ignore_index=ignore_index)
        self._scores: list[Tensor] = []
        self._labels: list[Tensor] = []

    def batch_sums(self, pred: Tensor, target: Tensor) -> BatchSums:
        binary, scores, labels, valid, invalid = self._prepare(pred, target)
        if not binary:  # (N, C, *) -> one row of C scores per sample
            scores = scores.movedim(1, -1).reshape(-1, scores.shape[1])
        if not scores.is_floating_point() or scores.dtype.itemsize < 4:
            scores = scores.float()  # exact for half precision; what every collective can send
        # Left-out samples are kept with label -1 (filtering here would read the mask's count).
        self._scores.append(scores.clone())
        self._labels.append(torch.where(valid, labels, torch.full_like(labels, -1)).reshape(-1))
        return (invalid,)

    def compute(self) -> float:
        if not self._sums:
            return float("nan")
        (invalid,) = self.sums()
        self._check_invalid(invalid.cpu())
        scores = torch.cat([s.detach().cpu() for s in self._scores]).double()
        labels = torch.cat([t.detach().cpu() for t in self._labels])
        kept = labels >= 0
        scores, labels = scores[kept], labels[kept]
        if scores.ndim == 1:
            return self._score(scores, labels == 1)
        if not self.probabilities:
            scores = scores.softmax(1)
        per_class = [self._score(scores[:, c], labels == c) for c in range(scores.shape[1])]
        defined = [v for v in per_class if v == v]
        return sum(defined) / len(defined) if defined else float("nan")

    def _score(self, scores: Tensor, positive: Tensor) -> float:
        raise NotImplementedError

    def finalize(self, sums: list[Tensor]) -> float:  # compute() reads the scores itself
        raise NotImplementedError

    def gather(self, gather_fn: Callable[[list[Tensor]], list[Tensor]]) -> None:
        """Several processes: every process's scores and labels, concatenated in rank order.

        ``gather_fn`` receives ``[scores, labels]`` and returns them gathered from every process
        (see :func:`traincraft.distributed.all_gather_cat`).
        """
        if not self._scores:
            return
        device = self._sums[0].device if self._sums else self._scores[-1].device
        scores = torch.cat([s.to(device) for s in self._scores])
        labels = torch.cat([t.to(device) for t in self._labels])
        scores, labels = gather_fn([scores, labels])
        self._scores, self._labels = [scores], [labels]

    def reset(self) -> None:
        super().reset()
        self._scores, self._labels = [], []

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._scores:
            state["scores"] = torch.cat([s.detach().cpu() for s in self._scores])
            state["labels"] = torch.cat([t.detach().cpu() for t in self._labels])
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        has = "scores" in state
        self._scores = [torch.as_tensor(state["scores"]).clone()] if has else []
        self._labels = [torch.as_tensor(state["labels"]).clone()] if has else []


class AUROC(_RankingMetric):
    """Area under the ROC curve, exact: binary, or the macro one-vs-rest mean over classes.

    Equals scikit-learn's ``roc_auc_score(y, scores)`` (binary) and
    ``roc_auc_score(y, softmax, multi_class="ovr", average="macro")``. Undefined cases give NaN
    rather than an error: every target the same class (binary); for several classes, a class
    absent from the targets is left out of the mean (scikit-learn's mean is then NaN).

    Args:
        probabilities: multi-class pred holds probabilities already (no softmax).
        ignore_index: a target value whose samples are left out.

    Example:
        >>> auc = AUROC()
        >>> auc.update(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        >>> auc.compute()
        0.75
    """

    name = "auroc"

    def _score(self, scores: Tensor, positive: Tensor) -> float:
        return binary_auroc(scores, positive)


class AveragePrecision(_RankingMetric):
    """Average precision (area under the precision–recall curve, step-wise), exact: binary, or
    the macro mean over classes of one-vs-rest AP.

    Equals scikit-learn's ``average_precision_score(y, scores)`` (binary) and the mean over
    classes of ``average_precision_score(y == c, softmax[:, c])``. No positive target gives NaN
    (scikit-learn gives 0 with a warning); for several classes, classes absent from the targets
    are left out of the mean.

    Args:
        probabilities: multi-class pred holds probabilities already (no softmax).
        ignore_index: a target value whose samples are left out.

    Example:
        >>> ap = AveragePrecision()
        >>> ap.update(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        >>> round(ap.compute(), 4)
        0.8333
    """

    name = "average_precision"

    def _score(self, scores: Tensor, positive: Tensor) -> float:
        return binary_average_precision(scores, positive)
