"""The metrics beyond accuracy and errors against scikit-learn, each streamed in many uneven
batches: ranking (auroc, average_precision), mcc, balanced_accuracy, the confusion matrix and the
per-class table, multi-label metrics, mape, smape, explained_variance; and a metric's own name."""

from __future__ import annotations

import math
import sys
import threading
import types
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from traincraft import metrics
from traincraft.errors import DataError, ShapeError, TraincraftError, UnknownNameError

TOL = 1e-12


def sizes(n: int, seed: int) -> list[int]:
    """Uneven batch sizes (1, 7, 13, ... in a seeded order) that add up to ``n``."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    while sum(out) < n:
        out.append(min(int(rng.choice([1, 7, 13, 2, 29, 5])), n - sum(out)))
    return out


def stream(metric, pred: torch.Tensor, target: torch.Tensor, seed: int = 0):
    """Feed ``pred``/``target`` in uneven batches, one ``update`` each, and compute."""
    parts = sizes(pred.shape[0], seed)
    assert len(parts) > 3
    for p, t in zip(pred.split(parts), target.split(parts)):
        metric.update(p, t)
    return metric.compute()


def sk(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's undefined-metric warnings: compared on purpose
        return fn(*args, **kwargs)


def class_data(n: int = 301, classes: int = 4, seed: int = 0, ties: bool = False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g, dtype=torch.float64)
    if ties:  # few distinct values: many tied scores
        logits = (logits * 2).round() / 2
    target = torch.randint(0, classes, (n,), generator=g)
    return logits, target


def binary_data(n: int = 301, seed: int = 0, ties: bool = False):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 2, (n,), generator=g)
    scores = target * 0.8 + torch.randn(n, generator=g, dtype=torch.float64)
    if ties:
        scores = scores.round(decimals=1)
    return scores, target


def softmax(logits: torch.Tensor) -> np.ndarray:
    return logits.double().softmax(1).numpy()


# ------------------------------------------------------------------------------ auroc, average precision


@pytest.mark.parametrize("ties", [False, True])
def test_binary_auroc_and_average_precision_match_sklearn(ties):
    scores, target = binary_data(seed=1, ties=ties)
    if ties:
        assert len(scores.unique()) < 80
    assert stream(metrics.build("auroc"), scores, target, seed=1) == pytest.approx(
        skm.roc_auc_score(target, scores), abs=TOL)
    assert stream(metrics.build("average_precision"), scores, target, seed=2) == pytest.approx(
        skm.average_precision_score(target, scores), abs=TOL)


@pytest.mark.parametrize("shape", [(301,), (301, 1)])
def test_binary_scores_of_both_shapes_and_bool_targets(shape):
    scores, target = binary_data(seed=3)
    auc = stream(metrics.build("auroc"), scores.reshape(shape), target.bool().reshape(shape), seed=3)
    assert auc == pytest.approx(skm.roc_auc_score(target, scores), abs=TOL)


@pytest.mark.parametrize("ties", [False, True])
def test_multiclass_auroc_and_average_precision_are_macro_one_vs_rest(ties):
    logits, target = class_data(classes=5, seed=4, ties=ties)
    probs = softmax(logits)
    assert stream(metrics.build("auroc"), logits, target, seed=4) == pytest.approx(
        skm.roc_auc_score(target, probs, multi_class="ovr", average="macro"), abs=TOL)
    assert stream(metrics.build("average_precision"), logits, target, seed=5) == pytest.approx(
        skm.average_precision_score(target, probs, average="macro"), abs=TOL)


def test_multiclass_probabilities_are_taken_as_they_are():
    logits, target = class_data(classes=3, seed=6)
    probs = logits.softmax(1)
    metric = metrics.build({"name": "auroc", "probabilities": True})
    assert stream(metric, probs, target) == pytest.approx(
        skm.roc_auc_score(target, probs.numpy(), multi_class="ovr"), abs=TOL)


def test_a_class_absent_from_the_targets_is_left_out_of_the_mean():
    logits, target = class_data(classes=4, seed=7)
    target[target == 2] = 1  # class 2 never occurs
    probs = softmax(logits)
    # scikit-learn: NaN for the whole figure (its warning says class 2 is undefined).
    assert math.isnan(sk(skm.roc_auc_score, target, probs, multi_class="ovr", labels=[0, 1, 2, 3]))
    present = [0, 1, 3]
    expected_auc = np.mean([skm.roc_auc_score(target == c, probs[:, c]) for c in present])
    expected_ap = np.mean([skm.average_precision_score(target == c, probs[:, c]) for c in present])
    assert stream(metrics.build("auroc"), logits, target) == pytest.approx(expected_auc, abs=TOL)
    assert stream(metrics.build("average_precision"), logits, target) == pytest.approx(expected_ap, abs=TOL)


def test_one_class_targets_give_nan_not_an_error():
    scores, _ = binary_data(n=40, seed=8)
    for label in (0, 1):
        target = torch.full((40,), label)
        auc = stream(metrics.build("auroc"), scores, target)
        assert math.isnan(auc) and math.isnan(sk(skm.roc_auc_score, target, scores))
    # No positive: average precision is undefined (scikit-learn says 0.0 with a warning).
    assert math.isnan(stream(metrics.build("average_precision"), scores, torch.zeros(40, dtype=torch.long)))
    assert stream(metrics.build("average_precision"), scores, torch.ones(40, dtype=torch.long)) == 1.0


def test_perfect_and_reversed_scores():
    target = torch.tensor([0, 1] * 20)
    scores = target.double() + torch.linspace(0, 0.5, 40)
    assert stream(metrics.build("auroc"), scores, target) == 1.0
    assert stream(metrics.build("average_precision"), scores, target) == 1.0
    assert stream(metrics.build("auroc"), -scores, target) == 0.0
    # All scores equal: one threshold, AUROC one half, AP the share of positives.
    flat = torch.zeros(40, dtype=torch.float64)
    assert stream(metrics.build("auroc"), flat, target) == 0.5
    assert stream(metrics.build("average_precision"), flat, target) == 0.5


def test_nan_scores_give_nan():
    scores, target = binary_data(n=30, seed=9)
    scores[4] = float("nan")
    assert math.isnan(stream(metrics.build("auroc"), scores, target))


def test_ignored_samples_are_left_out_and_invalid_labels_raise_at_compute():
    logits, target = class_data(classes=3, seed=10)
    ignored = target.clone()
    ignored[::5] = -100
    kept = ignored != -100
    metric = metrics.build({"name": "auroc", "ignore_index": -100})
    assert stream(metric, logits, ignored) == pytest.approx(
        skm.roc_auc_score(target[kept], softmax(logits[kept]), multi_class="ovr"), abs=TOL)
    metric = metrics.build("auroc")
    metric.update(logits, ignored)  # no read in update: the check waits for compute
    with pytest.raises(DataError, match=r"'auroc': 61 targets are not valid classes"):
        metric.compute()


def test_dense_prediction_ranks_every_pixel():
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(6, 3, 4, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (6, 4, 5), generator=g)
    flat_logits, flat_target = logits.movedim(1, -1).reshape(-1, 3), target.reshape(-1)
    metric = metrics.build("auroc")
    for i in range(6):
        metric.update(logits[i:i + 1], target[i:i + 1])
    assert metric.compute() == pytest.approx(
        skm.roc_auc_score(flat_target, softmax(flat_logits), multi_class="ovr"), abs=TOL)


def test_half_precision_scores_rank_as_given():
    scores, target = binary_data(seed=12)
    half = scores.half()
    auc = stream(metrics.build("auroc"), half, target)
    assert auc == pytest.approx(skm.roc_auc_score(target, half.float()), abs=TOL)


def test_ranking_state_dict_resumes_mid_epoch(tmp_path):
    logits, target = class_data(classes=3, seed=13)
    full = stream(metrics.build("auroc"), logits, target)
    first = metrics.build("auroc")
    first.update(logits[:100], target[:100])
    torch.save(first.state_dict(), tmp_path / "m.pt")
    resumed = metrics.build("auroc")
    resumed.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    resumed.update(logits[100:200], target[100:200])
    resumed.update(logits[200:], target[200:])
    assert resumed.compute() == full
    resumed.reset()
    assert math.isnan(resumed.compute())


# ------------------------------------------------------------------------------ mcc, balanced accuracy


@pytest.mark.parametrize("seed", [14, 15])
def test_mcc_and_balanced_accuracy_match_sklearn(seed):
    logits, target = class_data(classes=5, seed=seed)
    predicted = logits.argmax(1)
    assert stream(metrics.build("mcc"), logits, target, seed) == pytest.approx(
        skm.matthews_corrcoef(target, predicted), abs=TOL)
    assert stream(metrics.build("balanced_accuracy"), logits, target, seed) == pytest.approx(
        skm.balanced_accuracy_score(target, predicted), abs=TOL)


def test_binary_mcc_and_balanced_accuracy():
    scores, target = binary_data(seed=16)
    predicted = (scores > 0).long()
    assert stream(metrics.build("mcc"), scores, target) == pytest.approx(
        skm.matthews_corrcoef(target, predicted), abs=TOL)
    assert stream(metrics.build("balanced_accuracy"), scores, target) == pytest.approx(
        skm.balanced_accuracy_score(target, predicted), abs=TOL)


def test_class_only_predicted_or_absent_and_one_class_predictions():
    logits, target = class_data(classes=4, seed=17)
    target[target == 3] = 0  # class 3 only ever predicted
    predicted = logits.argmax(1)
    assert (predicted == 3).any()
    assert stream(metrics.build("balanced_accuracy"), logits, target) == pytest.approx(
        sk(skm.balanced_accuracy_score, target, predicted), abs=TOL)
    assert stream(metrics.build("mcc"), logits, target) == pytest.approx(
        skm.matthews_corrcoef(target, predicted), abs=TOL)
    # Every prediction one class: MCC 0, as scikit-learn.
    constant = torch.zeros_like(logits)
    constant[:, 1] = 1.0
    assert stream(metrics.build("mcc"), constant, target) == 0.0 == sk(
        skm.matthews_corrcoef, target, constant.argmax(1))


def test_perfect_predictions():
    target = torch.arange(40) % 4
    logits = torch.nn.functional.one_hot(target, 4).double()
    for name in ("mcc", "balanced_accuracy", "auroc", "average_precision"):
        assert stream(metrics.build(name), logits, target) == 1.0, name


# ------------------------------------------------------------------------------ confusion matrix, per class


def test_confusion_matrix_and_per_class_match_sklearn_with_an_absent_class():
    logits, target = class_data(classes=5, seed=18)
    target[target == 4] = 2  # class 4 is never a target
    predicted = logits.argmax(1)
    labels = list(range(5))
    cm = stream(metrics.build("confusion_matrix"), logits, target)
    assert cm == skm.confusion_matrix(target, predicted, labels=labels).tolist()
    rows = stream(metrics.build({"name": "per_class", "class_names": list("abcde")}), logits, target)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        target, predicted, labels=labels, zero_division=0)
    assert [r["class"] for r in rows] == list("abcde")
    assert [r["support"] for r in rows] == support.tolist()
    for key, expected in (("precision", precision), ("recall", recall), ("f1", f1)):
        assert [r[key] for r in rows] == pytest.approx(expected.tolist(), abs=TOL)
    assert all(type(r["support"]) is int for r in rows)


def test_confusion_matrix_function_from_scores_or_indices():
    logits, target = class_data(classes=3, seed=19)
    expected = skm.confusion_matrix(target, logits.argmax(1), labels=[0, 1, 2])
    assert metrics.confusion_matrix(logits, target).numpy().tolist() == expected.tolist()
    from_indices = metrics.confusion_matrix(logits.argmax(1).numpy(), target.numpy(), 3)
    assert from_indices.dtype == torch.int64 and from_indices.tolist() == expected.tolist()
    # Indices alone: as many classes as the largest index says, unless num_classes says more.
    assert metrics.confusion_matrix([0, 1], [1, 1]).tolist() == [[0, 0], [1, 1]]
    assert metrics.confusion_matrix([0, 1], [1, 1], 3).shape == (3, 3)
    scores, binary = binary_data(n=50, seed=20)
    assert metrics.confusion_matrix(scores, binary).tolist() == skm.confusion_matrix(
        binary, (scores > 0).long()).tolist()
    assert metrics.confusion_matrix(scores.sigmoid(), binary, probabilities=True).tolist() == skm.confusion_matrix(
        binary, (scores > 0).long()).tolist()


def test_confusion_matrix_and_table_refuse_bad_input_in_one_line():
    with pytest.raises(TraincraftError, match="class index 3 given with num_classes=2"):
        metrics.confusion_matrix([0, 3], [1, 1], 2)
    with pytest.raises(TraincraftError, match="must be >= 0"):
        metrics.confusion_matrix([0, -1], [1, 1])
    with pytest.raises(ShapeError, match="has 3 classes, not num_classes=4"):
        metrics.confusion_matrix(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), 4)
    with pytest.raises(ShapeError, match="square"):
        metrics.per_class_table([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(TraincraftError, match="1 class names for 2 classes"):
        metrics.per_class_table([[1, 0], [0, 1]], ["a"])


def test_per_class_table_of_a_matrix_scores_zero_division_as_zero():
    rows = metrics.per_class_table(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]]))
    assert rows[2] == {"class": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert rows[0]["recall"] == 0.75 and rows[1]["precision"] == 2 / 3


def test_tables_stay_out_of_the_figures():
    logits, target = class_data(classes=3, seed=21)
    ms = metrics.MetricSet(["accuracy", "confusion_matrix", "per_class"])
    assert ms.table_names == ["confusion_matrix", "per_class"]
    ms.update(logits, target)
    assert list(ms.compute()) == ["accuracy"]
    tables = ms.tables()
    assert tables["confusion_matrix"] == skm.confusion_matrix(target, logits.argmax(1)).tolist()
    assert len(tables["per_class"]) == 3
    assert metrics.MetricSet(["confusion_matrix"]).tables() == {"confusion_matrix": None}


def test_extra_metrics_join_for_a_while_and_leave():
    logits, target = class_data(classes=3, seed=22)
    ms = metrics.MetricSet(["accuracy", "per_class"])
    with ms.extra(["confusion_matrix", "per_class", "mcc"]) as held:
        assert held is ms and ms.names == ["accuracy", "per_class", "confusion_matrix", "mcc"]
        ms.update(logits, target)
        assert set(ms.compute()) == {"accuracy", "mcc"} and set(ms.tables()) == {"per_class", "confusion_matrix"}
    assert ms.names == ["accuracy", "per_class"] and set(ms.compute()) == {"accuracy"}


# ------------------------------------------------------------------------------ multi-label


def multilabel_data(n: int = 301, labels: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(n, labels, generator=g) < 0.3).long()
    target[:, 4] = 0  # a label never positive
    probs = (0.35 * target + 0.65 * torch.rand(n, labels, generator=g)).double()
    return probs, target


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_multilabel_metrics_match_sklearn(threshold):
    probs, target = multilabel_data(seed=23)
    decided = (probs > threshold).long().numpy()
    y = target.numpy()
    spec = {"threshold": threshold}
    assert stream(metrics.build({"name": "multilabel_accuracy", **spec}), probs, target) == pytest.approx(
        1 - skm.hamming_loss(y, decided), abs=TOL)
    assert stream(metrics.build({"name": "subset_accuracy", **spec}), probs, target) == pytest.approx(
        skm.accuracy_score(y, decided), abs=TOL)
    for average in ("macro", "micro", "weighted"):
        metric = metrics.build({"name": "multilabel_f1", "average": average, **spec})
        assert stream(metric, probs, target) == pytest.approx(
            sk(skm.f1_score, y, decided, average=average, zero_division=0), abs=TOL), average


def test_multilabel_threshold_follows_logits_or_probabilities():
    probs, target = multilabel_data(seed=24)
    logits = torch.logit(probs)
    from_logits = stream(metrics.build("multilabel_f1"), logits, target)
    from_probs = stream(metrics.build("multilabel_f1", probabilities=True), probs, target)
    assert from_logits == pytest.approx(from_probs, abs=TOL)
    assert metrics.build("multilabel_accuracy", probabilities=True).threshold == 0.5


def test_multilabel_ignored_entries_and_bad_input():
    probs, target = multilabel_data(n=40, seed=25)
    masked = target.clone()
    masked[::3, 0] = -1
    metric = metrics.build({"name": "multilabel_accuracy", "threshold": 0.5, "ignore_index": -1})
    keep = masked != -1
    expected = float(((probs > 0.5).long() == target)[keep].double().mean())
    assert stream(metric, probs, masked) == pytest.approx(expected, abs=TOL)
    metric = metrics.build("multilabel_f1")
    metric.update(probs, masked)
    with pytest.raises(DataError, match=r"'multilabel_f1': 14 target entries are not 0 or 1"):
        metric.compute()
    with pytest.raises(ShapeError, match=r"pred of shape \(40, 5\) and target of shape \(40,\)"):
        metrics.build("multilabel_accuracy").update(probs, target[:, 0])
    with pytest.raises(TraincraftError, match="average must be one of macro, micro, weighted"):
        metrics.build({"name": "multilabel_f1", "average": "samples"})


# ------------------------------------------------------------------------------ regression


def regression_data(n: int = 301, columns: int = 2, seed: int = 0, offset: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(n, columns, generator=g, dtype=torch.float64) * 3 + 2 + offset
    pred = target + torch.randn(n, columns, generator=g, dtype=torch.float64) + 0.5
    return pred, target


def smape(y: np.ndarray, p: np.ndarray) -> float:
    scale = np.abs(y) + np.abs(p)
    return float(np.mean(np.where(scale > 0, 2 * np.abs(p - y) / np.where(scale > 0, scale, 1), 0)))


@pytest.mark.parametrize("columns", [1, 3])
def test_regression_metrics_match_sklearn(columns):
    pred, target = regression_data(columns=columns, seed=26)
    target[3, 0] = 0.0  # mape divides by max(|y|, eps) there, as scikit-learn does
    pred[5], target[5] = 0.0, 0.0  # smape counts 0/0 as 0
    y, p = target.numpy(), pred.numpy()
    assert stream(metrics.build("mape"), pred, target) == pytest.approx(
        skm.mean_absolute_percentage_error(y, p), rel=1e-12)
    assert stream(metrics.build("smape"), pred, target) == pytest.approx(smape(y, p), rel=1e-12)
    assert stream(metrics.build("explained_variance"), pred, target) == pytest.approx(
        skm.explained_variance_score(y, p), abs=1e-12)


def test_explained_variance_far_from_zero_and_on_constant_columns():
    pred, target = regression_data(columns=1, seed=27, offset=1e8)
    pred = pred - 3e7  # a large constant offset: explained variance forgives it, r2 does not
    assert stream(metrics.build("explained_variance"), pred, target) == pytest.approx(
        skm.explained_variance_score(target.numpy(), pred.numpy()), abs=1e-9)
    y = torch.tensor([[5.0, 1.0, 2.0]]).repeat(20, 1).double()
    y[:, 2] += torch.arange(20)
    p = y.clone()
    p[:, 1] += torch.arange(20) % 3  # a constant column predicted with varying error: 0
    p[:, 0] += 1.0  # a constant column predicted with a constant error: 1
    assert stream(metrics.build("explained_variance"), p, y) == pytest.approx(
        skm.explained_variance_score(y.numpy(), p.numpy()), abs=TOL)
    one = metrics.build("explained_variance")
    one.update(torch.tensor([1.0]), torch.tensor([2.0]))
    assert math.isnan(one.compute())


# ------------------------------------------------------------------------------ several processes


def two_processes(shards: list[metrics.MetricSet]) -> None:
    """Sync two metric sets as two processes would: two threads, SUM and gather through slots."""
    barrier, slots = threading.Barrier(2), [None, None]

    def exchange(rank, tensors):
        slots[rank] = [t.clone() for t in tensors]
        barrier.wait()
        parts = list(slots)
        barrier.wait()
        return parts

    def reduce(rank):
        def fn(tensors):
            for t, *parts in zip(tensors, *exchange(rank, tensors)):
                t.copy_(sum(parts))
        return fn

    def gather(rank):
        def fn(tensors):
            return [torch.cat(parts) for parts in zip(*exchange(rank, tensors))]
        return fn

    errors = []

    def run(rank):
        try:
            shards[rank].sync(reduce(rank), gather(rank))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors


CLASSIFICATION = ["auroc", "average_precision", "mcc", "balanced_accuracy", "confusion_matrix", "per_class"]
REGRESSION = ["mape", "smape", "explained_variance"]


def test_two_processes_of_uneven_shards_give_the_whole_set_figures():
    logits, target = class_data(n=257, classes=4, seed=28, ties=True)
    pred, y = regression_data(n=257, columns=2, seed=28, offset=50.0)
    for specs, p, t in ((CLASSIFICATION, logits, target), (REGRESSION, pred, y)):
        whole = metrics.MetricSet(specs)
        whole.update(p, t)
        shards = [metrics.MetricSet(specs), metrics.MetricSet(specs)]
        # Each process its own uneven batches, in an order of its own.
        order = torch.randperm(257, generator=torch.Generator().manual_seed(29))
        halves = [order[:100], order[100:]]
        for rank, rows in enumerate(halves):
            for chunk in rows.split(sizes(len(rows), rank)):
                shards[rank].update(p[chunk], t[chunk])
        two_processes(shards)
        for shard in shards:
            assert shard.compute() == pytest.approx(whole.compute(), abs=1e-12)
            assert shard.tables() == whole.tables()
    assert whole.compute()["explained_variance"] == pytest.approx(
        skm.explained_variance_score(y.numpy(), pred.numpy()), abs=1e-12)


def test_sync_without_a_gather_is_refused_when_a_metric_keeps_its_scores():
    ms = metrics.MetricSet(["accuracy", "auroc"])
    ms.update(*binary_data(n=10))
    with pytest.raises(TraincraftError, match="'auroc' keeps every score and needs gather_fn"):
        ms.sync(lambda tensors: None)


def test_updates_read_nothing_back_to_the_host(monkeypatch):
    logits, target = class_data(n=40, classes=3, seed=30)
    probs, labels = multilabel_data(n=40, seed=30)
    pred, y = regression_data(n=40, seed=30)
    sets = [
        (metrics.MetricSet(CLASSIFICATION), logits, target),
        (metrics.MetricSet(["multilabel_accuracy", "subset_accuracy", "multilabel_f1"]), probs, labels),
        (metrics.MetricSet(REGRESSION), pred, y),
    ]

    def forbid(*args, **kwargs):
        raise AssertionError("host sync in update")

    with monkeypatch.context() as patch:
        for attr in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__"):
            patch.setattr(torch.Tensor, attr, forbid)
        for ms, p, t in sets:
            ms.update(p[:13], t[:13])
            ms.update(p[13:], t[13:])
            ms.flush()
    for ms, _, _ in sets:
        assert all(not math.isnan(v) for v in ms.compute().values())


# ------------------------------------------------------------------------------ names and specs


def test_a_metric_takes_the_name_it_is_given():
    scores, target = binary_data(n=50, seed=31)
    ms = metrics.MetricSet([{"name": "my_auc", "metric": "auroc"}, "auroc",
                            {"name": "ap_at_probs", "metric": metrics.AveragePrecision, "probabilities": True}])
    assert ms.names == ["my_auc", "auroc", "ap_at_probs"]
    ms.update(scores, target)
    figures = ms.compute()
    assert figures["my_auc"] == figures["auroc"] == pytest.approx(skm.roc_auc_score(target, scores), abs=TOL)
    assert metrics.build({"name": "val_auc", "metric": "roc_auc"}).name == "val_auc"
    with pytest.raises(TraincraftError, match="'auroc' given more than once"):
        metrics.MetricSet([{"name": "auroc", "metric": "auroc"}, "auroc"])


class CountingMetric:
    """A metric of another library: update/compute/reset, a name of its own."""

    name = "counting"

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self.reset()

    def update(self, pred, target):
        self.count += target.numel()

    def compute(self):
        return self.count * self.scale

    def reset(self):
        self.count = 0


def test_an_imported_metric_is_renamed_and_called_with_the_keys(monkeypatch):
    module = types.ModuleType("othermetrics_for_test")
    module.Counting = CountingMetric
    monkeypatch.setitem(sys.modules, module.__name__, module)
    ms = metrics.MetricSet([{"name": "my_count", "metric": "othermetrics_for_test:Counting", "scale": 2.0}])
    ms.update(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    assert ms.compute() == {"my_count": 6.0}
    assert ms["my_count"].name == "counting"  # the object keeps its own attribute
    built = CountingMetric()
    assert metrics.MetricSet([{"name": "n", "metric": built}]).names == ["n"]
    with pytest.raises(TraincraftError, match="'n': its metric is an object already built; it takes no keys"):
        metrics.build({"name": "n", "metric": built, "scale": 2})


@pytest.mark.parametrize("name", [None, "", "2auc", "my auc", 3])
def test_a_bad_given_name_is_one_line(name):
    with pytest.raises(TraincraftError, match="'name' must be a column name"):
        metrics.build({"name": name, "metric": "auroc"})


def test_a_missing_torchmetrics_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchmetrics" else real(name, *a))
    monkeypatch.delitem(sys.modules, "torchmetrics", raising=False)
    spec = {"name": "my_auc", "metric": "torchmetrics.classification:BinaryAUROC"}
    with pytest.raises(TraincraftError, match=r"needs torchmetrics, which is not installed: pip install torchmetrics"):
        metrics.MetricSet([spec])


def test_unknown_names_and_arguments_are_one_line():
    with pytest.raises(UnknownNameError, match=r"unknown metric 'aucroc' \(did you mean"):
        metrics.build("aucroc")
    with pytest.raises(UnknownNameError, match="unknown metric 'auroc2'"):
        metrics.build({"name": "x", "metric": "auroc2"})
    with pytest.raises(TraincraftError, match="metric 'auroc'.*unexpected keyword argument 'threshold'"):
        metrics.build({"name": "auroc", "threshold": 0.5})
    with pytest.raises(TraincraftError, match="metric 'mape'.*unexpected keyword"):
        metrics.build({"name": "mape", "epsilon": 1})


@pytest.mark.parametrize(("alias", "name"), [("roc_auc", "auroc"), ("AP", "average_precision"),
                                             ("matthews_corrcoef", "mcc"), ("classification_report", "per_class"),
                                             ("mean_absolute_percentage_error", "mape"),
                                             ("explained_variance_score", "explained_variance")])
def test_aliases(alias, name):
    assert metrics.build(alias).name == name
