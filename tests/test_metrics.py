"""Streaming metrics against scikit-learn on the whole data, streamed in uneven batches."""

from __future__ import annotations

import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from traincraft import metrics
from traincraft.errors import DataError, ShapeError, TraincraftError, UnknownNameError

SIZES = (7, 3, 10, 1)  # uneven on purpose: a mean of batch means differs from the epoch figure
N = sum(SIZES)
TOL = 1e-12


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def stream(metric, pred: torch.Tensor, target: torch.Tensor, sizes=SIZES) -> float:
    """Feed ``pred``/``target`` to ``metric`` in batches of ``sizes`` and compute."""
    assert sum(sizes) == pred.shape[0]
    for p, t in zip(pred.split(list(sizes)), target.split(list(sizes))):
        metric.update(p, t)
    return metric.compute()


def sk(fn, *args, **kwargs) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's zero-division warning: we expect 0 there
        return float(fn(*args, **kwargs))


def class_data(num_classes: int = 4, seed: int = 0, n: int = N):
    g = gen(seed)
    logits = torch.randn(n, num_classes, generator=g, dtype=torch.float64)
    target = torch.randint(0, num_classes, (n,), generator=g)
    return logits, target


def regression_data(columns: int | None = None, seed: int = 1, n: int = N):
    g = gen(seed)
    shape = (n,) if columns is None else (n, columns)
    target = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2
    pred = target + torch.randn(shape, generator=g, dtype=torch.float64)
    return pred, target


# ------------------------------------------------------------------------------ names, build


def test_names_are_the_registered_metrics():
    assert metrics.names() == [
        "accuracy",
        "auroc",
        "average_precision",
        "balanced_accuracy",
        "confusion_matrix",
        "explained_variance",
        "f1_macro",
        "mae",
        "mape",
        "mcc",
        "mse",
        "multilabel_accuracy",
        "multilabel_f1",
        "per_class",
        "precision_macro",
        "r2",
        "recall_macro",
        "rmse",
        "smape",
        "subset_accuracy",
        "top5_accuracy",
        "top_k_accuracy",
    ]


@pytest.mark.parametrize(
    ("alias", "cls", "name"),
    [
        ("acc", metrics.Accuracy, "accuracy"),
        ("Macro-F1", metrics.F1Macro, "f1_macro"),
        ("mean_squared_error", metrics.MeanSquaredError, "mse"),
        ("root_mean_squared_error", metrics.RootMeanSquaredError, "rmse"),
        ("r2_score", metrics.R2Score, "r2"),
        ("top5", metrics.TopKAccuracy, "top5_accuracy"),
    ],
)
def test_aliases_build_the_same_metric(alias, cls, name):
    metric = metrics.build(alias)
    assert type(metric) is cls
    assert metric.name == name


def test_unknown_name_suggests_the_closest():
    with pytest.raises(
        UnknownNameError, match=r"unknown metric 'accuarcy' \(did you mean 'accuracy'"
    ):
        metrics.build("accuarcy")


def test_top_k_accuracy_needs_k_and_is_named_after_it():
    with pytest.raises(TraincraftError, match="needs k"):
        metrics.build("top_k_accuracy")
    assert metrics.build({"name": "top_k_accuracy", "k": 3}).name == "top3_accuracy"
    with pytest.raises(TraincraftError, match="k must be"):
        metrics.build({"name": "top_k_accuracy", "k": 0})


def test_unknown_keyword_is_one_clear_error():
    with pytest.raises(TraincraftError, match="metric 'accuracy'.*unexpected keyword"):
        metrics.build({"name": "accuracy", "treshold": 0.3})


def test_probabilities_flag_reaches_classification_metrics_only_and_spec_wins():
    assert metrics.build("accuracy", probabilities=True).threshold == 0.5
    assert metrics.build("accuracy").threshold == 0.0
    spec = {"name": "f1_macro", "probabilities": False}
    assert metrics.build(spec, probabilities=True).threshold == 0.0
    assert isinstance(metrics.build("mse", probabilities=True), metrics.MeanSquaredError)


def test_metric_class_is_instantiated():
    metric = metrics.build(metrics.Accuracy, probabilities=True)
    assert isinstance(metric, metrics.Accuracy) and metric.threshold == 0.5


def test_bad_spec_types_raise():
    with pytest.raises(TraincraftError, match="got int"):
        metrics.build(3)
    with pytest.raises(TraincraftError, match="needs a 'name'"):
        metrics.build({"k": 3})


def test_duplicate_names_in_a_set_raise():
    with pytest.raises(TraincraftError, match="'accuracy' given more than once"):
        metrics.MetricSet(["accuracy", "acc"])


# ------------------------------------------------------------------------------ classification


def test_accuracy_matches_sklearn():
    logits, target = class_data()
    got = stream(metrics.Accuracy(), logits, target)
    assert got == pytest.approx(skm.accuracy_score(target, logits.argmax(1)), abs=TOL)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 9])
def test_top_k_accuracy_matches_sklearn(k):
    logits, target = class_data(num_classes=7, seed=k, n=N)
    got = stream(metrics.TopKAccuracy(k), logits, target)
    want = sk(skm.top_k_accuracy_score, target, logits, k=k, labels=list(range(7)))
    assert got == pytest.approx(want, abs=TOL)


def test_top5_accuracy_is_top_k_with_k_5():
    logits, target = class_data(num_classes=8, seed=3)
    got = stream(metrics.build("top5_accuracy"), logits, target)
    want = skm.top_k_accuracy_score(target, logits, k=5, labels=list(range(8)))
    assert got == pytest.approx(want, abs=TOL)
    assert got < 1.0  # k below the class count: not trivially 1


MACRO = [
    ("f1_macro", skm.f1_score),
    ("precision_macro", skm.precision_score),
    ("recall_macro", skm.recall_score),
]


@pytest.mark.parametrize(("name", "fn"), MACRO)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macro_scores_match_sklearn(name, fn, seed):
    logits, target = class_data(num_classes=5, seed=seed)
    got = stream(metrics.build(name), logits, target)
    want = sk(fn, target, logits.argmax(1), average="macro")
    assert got == pytest.approx(want, abs=TOL)


@pytest.mark.parametrize(("name", "fn"), MACRO)
def test_macro_leaves_out_absent_classes_and_scores_zero_division_as_zero(name, fn):
    logits, target = class_data(num_classes=6, seed=4)
    logits[:, 5] = -50.0  # class 5: never predicted, never a target: left out
    target[target == 5] = 0
    target[:2] = 4  # class 4: a target ...
    logits[:, 4] = -50.0  # ... never predicted: precision 0/0 -> 0
    pred = logits.argmax(1)
    assert 5 not in set(pred.tolist()) | set(target.tolist())
    got = stream(metrics.build(name), logits, target)
    want = sk(fn, target, pred, average="macro")
    assert got == pytest.approx(want, abs=TOL)
    # Averaging over all 6 classes would give a different, wrong value.
    assert got != pytest.approx(sk(fn, target, pred, average="macro", labels=list(range(6))))


@pytest.mark.parametrize(("name", "fn"), MACRO)
def test_binary_macro_scores_match_sklearn(name, fn):
    g = gen(7)
    logits = torch.randn(N, 1, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (N,), generator=g)
    got = stream(metrics.build(name), logits, target)
    want = sk(fn, target, (logits[:, 0] > 0).long(), average="macro")
    assert got == pytest.approx(want, abs=TOL)


def test_binary_threshold_logits_versus_probabilities():
    g = gen(8)
    # Scores in (0, 1): every one is a positive logit, but only those above 0.5 are positive
    # probabilities.
    scores = torch.rand(N, generator=g, dtype=torch.float64) * 0.98 + 0.01
    target = torch.randint(0, 2, (N,), generator=g)
    as_logits = stream(metrics.Accuracy(), scores, target)
    as_probs = stream(metrics.Accuracy(probabilities=True), scores, target)
    assert as_logits == pytest.approx(skm.accuracy_score(target, np.ones(N)), abs=TOL)
    assert as_probs == pytest.approx(skm.accuracy_score(target, scores > 0.5), abs=TOL)
    assert as_logits != as_probs
    # The trainer's flag, through MetricSet, and an explicit threshold.
    ms = metrics.MetricSet(["accuracy"], probabilities=True)
    assert stream(ms, scores, target)["accuracy"] == as_probs
    assert stream(metrics.Accuracy(threshold=0.3), scores, target) == pytest.approx(
        skm.accuracy_score(target, scores > 0.3), abs=TOL
    )


@pytest.mark.parametrize(
    ("pred_shape", "target_shape"),
    [((N,), (N,)), ((N,), (N, 1)), ((N, 1), (N,)), ((N, 1), (N, 1))],
)
def test_binary_shapes_are_aligned(pred_shape, target_shape):
    g = gen(9)
    logits = torch.randn(N, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (N,), generator=g)
    got = stream(metrics.Accuracy(), logits.reshape(pred_shape), target.reshape(target_shape))
    assert got == pytest.approx(skm.accuracy_score(target, logits > 0), abs=TOL)


def test_binary_float_and_bool_targets():
    g = gen(10)
    logits = torch.randn(N, 1, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (N,), generator=g)
    want = skm.accuracy_score(target, logits[:, 0] > 0)
    assert stream(metrics.Accuracy(), logits, target.double().unsqueeze(1)) == pytest.approx(want)
    assert stream(metrics.Accuracy(), logits, target.bool()) == pytest.approx(want)


def test_binary_top_k():
    g = gen(11)
    logits = torch.randn(N, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (N,), generator=g)
    assert stream(metrics.TopKAccuracy(1), logits, target) == pytest.approx(
        skm.accuracy_score(target, logits > 0), abs=TOL
    )
    assert stream(metrics.TopKAccuracy(2), logits, target) == 1.0


def test_one_hot_and_probability_targets_are_argmaxed():
    logits, target = class_data(num_classes=4, seed=12)
    one_hot = torch.nn.functional.one_hot(target, 4)
    soft = one_hot.double() * 0.7 + 0.1  # probabilities that still peak at the label
    want = skm.accuracy_score(target, logits.argmax(1))
    for t in (one_hot.double(), one_hot, soft):
        assert stream(metrics.Accuracy(), logits, t) == pytest.approx(want, abs=TOL)
    want_f1 = skm.f1_score(target, logits.argmax(1), average="macro")
    assert stream(metrics.F1Macro(), logits, soft) == pytest.approx(want_f1, abs=TOL)


def test_class_index_target_of_shape_n_1():
    logits, target = class_data(num_classes=3, seed=13)
    got = stream(metrics.Accuracy(), logits, target.unsqueeze(1))
    assert got == pytest.approx(skm.accuracy_score(target, logits.argmax(1)), abs=TOL)


@pytest.mark.parametrize("name", ["accuracy", "f1_macro", "recall_macro", "top_k"])
def test_dense_prediction_counts_every_pixel(name):
    g = gen(14)
    logits = torch.randn(N, 3, 4, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (N, 4, 5), generator=g)
    spec = {"name": name, "k": 2} if name == "top_k" else name
    got = stream(metrics.build(spec), logits, target)
    flat_scores = logits.movedim(1, -1).reshape(-1, 3).numpy()
    flat_target = target.reshape(-1).numpy()
    flat_pred = flat_scores.argmax(1)
    want = {
        "accuracy": lambda: skm.accuracy_score(flat_target, flat_pred),
        "f1_macro": lambda: skm.f1_score(flat_target, flat_pred, average="macro"),
        "recall_macro": lambda: skm.recall_score(flat_target, flat_pred, average="macro"),
        "top_k": lambda: skm.top_k_accuracy_score(flat_target, flat_scores, k=2),
    }[name]()
    assert got == pytest.approx(want, abs=TOL)


def test_binary_dense_prediction_n_1_h_w():
    g = gen(15)
    logits = torch.randn(N, 1, 4, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (N, 4, 4), generator=g)
    got = stream(metrics.Accuracy(), logits, target)
    want = skm.accuracy_score(target.reshape(-1), logits.reshape(-1) > 0)
    assert got == pytest.approx(want, abs=TOL)


def test_ignore_index_leaves_samples_out():
    logits, target = class_data(num_classes=4, seed=16)
    target[::3] = -100
    keep = target != -100
    kept_target, kept_pred = target[keep], logits.argmax(1)[keep]
    acc = stream(metrics.Accuracy(ignore_index=-100), logits, target)
    f1 = stream(metrics.F1Macro(ignore_index=-100), logits, target)
    assert acc == pytest.approx(skm.accuracy_score(kept_target, kept_pred), abs=TOL)
    assert f1 == pytest.approx(skm.f1_score(kept_target, kept_pred, average="macro"), abs=TOL)


@pytest.mark.parametrize("name", ["accuracy", "top5_accuracy", "f1_macro"])
def test_labels_outside_the_classes_raise_at_compute(name):
    logits, target = class_data(num_classes=6, seed=17)
    target[4] = 6  # labels 1..6 for 6 classes: a classic off-by-one
    metric = metrics.build(name)
    for p, t in zip(logits.split(list(SIZES)), target.split(list(SIZES))):
        metric.update(p, t)  # no error here: checking would read the device every batch
    with pytest.raises(
        DataError, match=rf"metric '{name}': 1 targets are not valid classes.*0\.\.5"
    ):
        metric.compute()


def test_binary_labels_outside_0_1_raise():
    metric = metrics.Accuracy()
    metric.update(torch.tensor([0.3, -1.0]), torch.tensor([1, -1]))
    with pytest.raises(DataError, match="0 or 1"):
        metric.compute()


@pytest.mark.parametrize(
    ("pred_shape", "target_shape"),
    [((4, 3), (4, 2)), ((4, 3), (5,)), ((4,), (4, 2)), ((4, 1), (2, 2)), ((4, 3, 2), (4, 3))],
)
def test_classification_shape_mismatch_names_both_shapes(pred_shape, target_shape):
    pred = torch.zeros(pred_shape)
    target = torch.zeros(target_shape, dtype=torch.long)
    with pytest.raises(ShapeError) as err:
        metrics.Accuracy().update(pred, target)
    message = str(err.value)
    assert "'accuracy'" in message
    assert str(pred_shape) in message and str(target_shape) in message


def test_class_count_change_between_batches_raises():
    metric = metrics.F1Macro()
    metric.update(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"'f1_macro'.*\(5,\).*\(4,\)"):
        metric.update(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))


# ------------------------------------------------------------------------------ regression


REGRESSION = [
    ("mae", skm.mean_absolute_error),
    ("mse", skm.mean_squared_error),
    ("rmse", lambda y, p: math.sqrt(skm.mean_squared_error(y, p))),
    ("r2", skm.r2_score),
]


@pytest.mark.parametrize(("name", "fn"), REGRESSION)
@pytest.mark.parametrize("columns", [None, 1, 3])
def test_regression_matches_sklearn(name, fn, columns):
    pred, target = regression_data(columns)
    got = stream(metrics.build(name), pred, target)
    assert got == pytest.approx(fn(target.numpy(), pred.numpy()), abs=TOL)


@pytest.mark.parametrize(("name", "fn"), REGRESSION)
@pytest.mark.parametrize("pred_is_column", [True, False])
def test_n_and_n_1_are_aligned_not_broadcast(name, fn, pred_is_column):
    pred, target = regression_data()
    if pred_is_column:
        got = stream(metrics.build(name), pred.unsqueeze(1), target)
    else:
        got = stream(metrics.build(name), pred, target.unsqueeze(1))
    assert got == pytest.approx(fn(target.numpy(), pred.numpy()), abs=TOL)


def test_r2_averages_columns_uniformly_and_handles_constant_columns():
    pred, target = regression_data(columns=3, seed=18)
    target[:, 1] = 4.0  # constant column, predicted wrongly: 0 like sklearn's force_finite
    got = stream(metrics.R2Score(), pred, target)
    assert got == pytest.approx(skm.r2_score(target.numpy(), pred.numpy()), abs=TOL)
    pred[:, 1] = 4.0  # now predicted exactly: 1
    got = stream(metrics.R2Score(), pred, target)
    assert got == pytest.approx(skm.r2_score(target.numpy(), pred.numpy()), abs=TOL)


def test_r2_of_one_sample_is_nan():
    metric = metrics.R2Score()
    metric.update(torch.tensor([1.0]), torch.tensor([2.0]))
    assert math.isnan(metric.compute())


@pytest.mark.parametrize(
    ("pred_shape", "target_shape"),
    [((5, 2), (5, 3)), ((5, 1), (1, 5)), ((5,), (5, 2)), ((6,), (5,))],
)
@pytest.mark.parametrize("name", ["mse", "r2"])
def test_regression_shape_mismatch_names_both_shapes(name, pred_shape, target_shape):
    with pytest.raises(ShapeError) as err:
        metrics.build(name).update(torch.zeros(pred_shape), torch.zeros(target_shape))
    message = str(err.value)
    assert f"'{name}'" in message
    assert str(pred_shape) in message and str(target_shape) in message


def test_float32_inputs_accumulate_in_float64():
    # Each element's error in the inputs' precision (float32: relative 6e-8), the epoch's sum in
    # float64, so that a long epoch does not lose the small batches' contributions.
    pred, target = regression_data(seed=19)
    metric = metrics.MeanSquaredError()
    stream(metric, pred.float(), target.float())
    total, count = metric.sums()
    assert total.dtype == torch.float64 and count.dtype == torch.int64
    want = skm.mean_squared_error(target.float().double().numpy(), pred.float().double().numpy())
    assert metric.compute() == pytest.approx(want, rel=1e-7)
    # A million batches of one small error each: a float32 running sum would stall at 2**24 × e.
    big = metrics.MeanAbsoluteError()
    big.update(torch.zeros(1), torch.ones(1))
    big._sums[0].fill_(2.0**25)  # as if many batches had been added
    big._pending[1] += 2**25 - 1
    for _ in range(4):
        big.update(torch.zeros(1, dtype=torch.float32), torch.full((1,), 1.0))
    assert big.sums()[0].item() == 2.0**25 + 4 and big.compute() == pytest.approx(1.0)


# ------------------------------------------------------------------------------ streaming


def test_epoch_figures_are_not_means_of_batch_means():
    pred, target = regression_data(seed=20)
    logits, labels = class_data(num_classes=3, seed=20)
    rmse = stream(metrics.RootMeanSquaredError(), pred, target)
    acc = stream(metrics.Accuracy(), logits, labels)
    batch_rmse = [
        math.sqrt(skm.mean_squared_error(t, p))
        for p, t in zip(pred.split(list(SIZES)), target.split(list(SIZES)))
    ]
    batch_acc = [
        skm.accuracy_score(t, p.argmax(1))
        for p, t in zip(logits.split(list(SIZES)), labels.split(list(SIZES)))
    ]
    assert rmse == pytest.approx(math.sqrt(skm.mean_squared_error(target, pred)), abs=TOL)
    assert acc == pytest.approx(skm.accuracy_score(labels, logits.argmax(1)), abs=TOL)
    # The data make the wrong answers measurably different, so the checks above can fail.
    assert abs(np.mean(batch_rmse) - rmse) > 1e-3
    assert abs(np.mean(batch_acc) - acc) > 1e-3


@pytest.mark.parametrize("name", metrics.names())
def test_compute_before_any_update_is_nan(name):
    spec = {"name": name, "k": 2} if name == "top_k_accuracy" else name
    value = metrics.build(spec).compute()
    if name in ("confusion_matrix", "per_class"):  # tables: nothing yet
        assert value is None
    else:
        assert math.isnan(value)


def test_reset_forgets_the_epoch():
    logits, target = class_data(seed=21)
    metric = metrics.Accuracy()
    metric.update(torch.tensor([[5.0, 0.0]]), torch.tensor([1]))
    metric.reset()
    assert math.isnan(metric.compute())
    assert stream(metric, logits, target) == pytest.approx(
        skm.accuracy_score(target, logits.argmax(1)), abs=TOL
    )


def test_sums_never_keep_the_autograd_graph():
    weight = torch.ones(3, requires_grad=True)
    metric = metrics.MeanSquaredError()
    metric.update(torch.randn(4, 3, generator=gen(22)) * weight, torch.zeros(4, 3))
    assert not any(s.requires_grad for s in metric.sums())


# ------------------------------------------------------------------------------ MetricSet


class CountingMetric:
    """A duck-typed metric (no Metric base): the share of positive targets, as a tensor."""

    def __init__(self):
        self.reset()

    def update(self, pred, target):
        self.positives += (target > 0).sum()
        self.count += target.numel()

    def compute(self):
        return self.positives.double() / self.count

    def reset(self):
        self.positives = torch.zeros((), dtype=torch.int64)
        self.count = 0


class NamedMetric(CountingMetric):
    name = "share_positive"


def test_duck_typed_metric_passes_through_metric_set():
    logits, target = class_data(num_classes=3, seed=23)
    duck, named = CountingMetric(), NamedMetric()
    ms = metrics.MetricSet(["accuracy", duck, named])
    assert ms.names == ["accuracy", "countingmetric", "share_positive"]
    assert ms["countingmetric"] is duck
    result = stream(ms, logits, target)
    share = float((target > 0).double().mean())
    assert result == pytest.approx(
        {
            "accuracy": skm.accuracy_score(target, logits.argmax(1)),
            "countingmetric": share,
            "share_positive": share,
        },
        abs=TOL,
    )
    assert all(type(v) is float for v in result.values())
    ms.reset()
    assert duck.count == 0 and math.isnan(ms.compute()["accuracy"])


def test_import_path_spec_builds_an_object(monkeypatch):
    module = types.ModuleType("custom_metrics_for_test")
    module.CountingMetric = CountingMetric
    monkeypatch.setitem(sys.modules, module.__name__, module)
    metric = metrics.build({"name": "custom_metrics_for_test:CountingMetric"})
    assert isinstance(metric, CountingMetric)
    with pytest.raises(TraincraftError, match="no update/compute/reset"):
        metrics.build("math:pi")


def test_compute_returning_a_vector_is_a_clear_error():
    class Vector(CountingMetric):
        def compute(self):
            return torch.zeros(3)

    ms = metrics.MetricSet([Vector()])
    with pytest.raises(TraincraftError, match=r"'vector'.*shape \(3,\)"):
        ms.compute()


def test_sync_reduces_every_sum_once_and_leaves_ratios_unchanged():
    logits, target = class_data(num_classes=4, seed=24)
    duck = CountingMetric()
    ms = metrics.MetricSet(["accuracy", "f1_macro", {"name": "top_k_accuracy", "k": 2}, duck])
    before = stream(ms, logits, target)
    state_before = ms.state_dict()
    calls = []

    def double(tensors):  # what SUM over two identical processes does
        calls.append(len(tensors))
        for t in tensors:
            t.mul_(2)

    ms.sync(double)
    # accuracy: 3 sums, f1: 4, top-2: 3; the duck metric has no sums() and is left alone.
    assert calls == [10]
    assert ms.compute() == pytest.approx(before, abs=TOL)
    after = ms.state_dict()
    for name in ("accuracy", "f1_macro", "top2_accuracy"):
        for old, new in zip(state_before[name]["sums"], after[name]["sums"]):
            assert torch.equal(new, 2 * old)
    assert duck.count == N  # not doubled


def test_sync_on_regression_keeps_mse_rmse_r2():
    pred, target = regression_data(columns=2, seed=25)
    ms = metrics.MetricSet(["mse", "rmse", "r2", "mae"])
    before = stream(ms, pred, target)
    ms.sync(lambda tensors: [t.mul_(2) for t in tensors])
    assert ms.compute() == pytest.approx(before, abs=TOL)
    assert int(ms["mse"].sums()[1]) == 2 * pred.numel()


def test_sync_with_identity_changes_nothing_and_skips_empty_metrics():
    ms = metrics.MetricSet(["accuracy"])
    seen = []
    ms.sync(seen.append)
    assert seen == []  # nothing updated yet
    ms.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    ms.sync(lambda tensors: None)
    assert ms.compute() == {"accuracy": 1.0}


def test_state_dict_round_trip_mid_epoch(tmp_path):
    logits, target = class_data(num_classes=4, seed=26)
    pred, y = regression_data(seed=26)
    cls_specs = ["accuracy", "f1_macro", "precision_macro", "recall_macro", "top_k_accuracy"]
    cls_specs[-1] = {"name": "top_k_accuracy", "k": 2}
    reg_specs = ["mae", "mse", "rmse", "r2"]
    for specs, p, t in ((cls_specs, logits, target), (reg_specs, pred, y)):
        # The same batches: updates are grouped, and a group's sum rounds as one.
        full = stream(metrics.MetricSet(specs), p, t, sizes=(7, 3, 10, p.shape[0] - 20))
        first = metrics.MetricSet(specs)
        first.update(p[:7], t[:7])
        first.update(p[7:10], t[7:10])
        state = first.state_dict()
        for name, metric_state in state.items():
            if name == "_held_batches":  # the batches of the group under way
                assert [len(p) for p, _ in metric_state] == [7, 3]
                continue
            assert all(s.device.type == "cpu" for s in metric_state["sums"])
        path = tmp_path / "metrics.pt"
        torch.save(state, path)
        resumed = metrics.MetricSet(specs)
        resumed.load_state_dict(torch.load(path, weights_only=True))
        resumed.update(p[10:20], t[10:20])
        resumed.update(p[20:], t[20:])
        assert resumed.compute() == full  # exactly the same sums, so exactly the same values


def test_state_dict_is_a_copy():
    metric = metrics.Accuracy()
    metric.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    state = metric.state_dict()
    metric.update(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert [int(s) for s in state["sums"]] == [1, 1, 0]
    assert state["num_classes"] == 2


# ------------------------------------------------------------------------------ no host sync


def _forbid(*args, **kwargs):
    raise AssertionError("host sync in update")


@pytest.mark.parametrize(
    ("specs", "data"),
    [
        (
            ["accuracy", "top5_accuracy", "f1_macro", "precision_macro", "recall_macro"],
            lambda: class_data(num_classes=6, seed=27),
        ),
        (
            ["accuracy", {"name": "top_k", "k": 2}, "f1_macro"],
            lambda: (
                torch.randn(N, 1, generator=gen(28)),
                torch.randint(0, 2, (N, 1), generator=gen(29)),
            ),
        ),
        (
            ["accuracy", "f1_macro"],
            lambda: (torch.randn(N, 3, 2, 2), torch.randint(0, 3, (N, 2, 2))),
        ),
        (["mae", "mse", "rmse", "r2"], lambda: regression_data(columns=2, seed=30)),
    ],
)
def test_update_reads_nothing_back_to_the_host(monkeypatch, specs, data):
    pred, target = data()
    ms = metrics.MetricSet(specs, probabilities=False)
    ms_ignore = metrics.MetricSet([{"name": "accuracy", "ignore_index": -1}])
    first = metrics.MetricSet(specs)
    first.update(pred[:3], target[:3])
    state = first.state_dict()
    with monkeypatch.context() as patch:
        for attr in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__"):
            patch.setattr(torch.Tensor, attr, _forbid)
        ms.update(pred[:3], target[:3])
        ms.update(pred[3:], target[3:])  # first batch creates the sums, later ones add to them
        ms_ignore.update(pred, target)
        first.load_state_dict(state)
        first.update(pred[3:], target[3:])  # sums restored from a state_dict
        for held in (ms, ms_ignore, first):
            held.flush()  # the grouped update itself reads nothing either
    assert ms.compute() == first.compute()


def test_running_means_group_their_adds_and_reads_change_nothing():
    gen = torch.Generator().manual_seed(40)
    n = 2 * metrics.RunningMeans.GROUP + 22  # two full groups added, one under way
    values = torch.rand(n, generator=gen, dtype=torch.float32) * 10
    sizes = [64] * (n - 1) + [17]

    def feed(means, start, stop, read_every=None):
        for i in range(start, stop):
            means.add("loss", values[i], sizes[i])
            if read_every and i % read_every == 0:
                means.mean("loss")  # a progress refresh, at any moment
                means.sums  # noqa: B018  (a logger's read)

    plain = metrics.RunningMeans(torch.device("cpu"))
    feed(plain, 0, n)
    read = metrics.RunningMeans(torch.device("cpu"))
    feed(read, 0, n, read_every=3)
    assert plain.mean("loss") == read.mean("loss")  # bit for bit
    want = sum(float(v) * n for v, n in zip(values.double(), sizes)) / sum(sizes)
    assert plain.mean("loss") == pytest.approx(want, rel=1e-12)

    first = metrics.RunningMeans(torch.device("cpu"))
    cut = metrics.RunningMeans.GROUP + 21  # mid-group: values held
    feed(first, 0, cut)
    resumed = metrics.RunningMeans(torch.device("cpu"))
    resumed.load_state_dict(first.state_dict())
    feed(resumed, cut, n)
    assert resumed.means("train_") == plain.means("train_")


def test_metric_set_groups_batches_into_the_same_figures():
    pred, target = regression_data(seed=41)
    grouped = stream(metrics.MetricSet(["mae", "rmse"]), pred, target, sizes=(1,) * pred.shape[0])
    one = metrics.MetricSet(["mae", "rmse"])
    one.update(pred, target)
    assert grouped == pytest.approx(one.compute(), rel=1e-12)
    ms = metrics.MetricSet(["accuracy"])
    ms.update(torch.tensor([[2.0, 1.0]]), torch.tensor([0]))
    ms.update(torch.tensor([[[2.0], [1.0]]]), torch.tensor([[1]]))  # another shape: its own run
    assert ms.compute() == {"accuracy": 0.5}


@pytest.mark.parametrize("kind", ["shape", "dtype"])
def test_batches_that_differ_are_not_joined_into_one(kind):
    # Alike batches are concatenated; a batch of another trailing shape or dtype is added on its
    # own, in its own precision (a float32 error is not recomputed in float64).
    tiny = [
        (torch.tensor([[1 + 2**-23]]), torch.tensor([[1e-9]])),  # the difference rounds in float32
        (torch.tensor([[1 + 2**-23]], dtype=torch.float64), torch.tensor([[1e-9]], dtype=torch.float64)),
    ]
    other_shape = [
        (torch.zeros(2, 3), torch.ones(2, 3)),
        (torch.zeros(2, 3), torch.ones(2, 3)),
        (torch.zeros(1, 2), torch.full((1, 2), 4.0)),  # same ndim, other trailing shape
    ]
    batches = tiny if kind == "dtype" else other_shape
    grouped, one_by_one = metrics.MetricSet(["mae"]), metrics.MetricSet(["mae"])
    one_by_one.GROUP_BATCHES = 1
    for pred, target in batches:
        grouped.update(pred, target)
        one_by_one.update(pred, target)
    if kind == "dtype":
        float32_error = float(torch.tensor(1 + 2**-23) - torch.tensor(1e-9))
        want = (float32_error + (1 + 2**-23 - 1e-9)) / 2
    else:
        want = (12 * 1.0 + 2 * 4.0) / 14
    assert one_by_one.compute()["mae"] == pytest.approx(want, rel=1e-15)
    assert grouped.compute() == one_by_one.compute()


def test_batches_held_in_inference_mode_are_added_after_it():
    pred, target = regression_data(seed=42)
    ms = metrics.MetricSet(["mae"])
    with torch.inference_mode():
        for i in range(0, pred.shape[0], 2):  # more than a group: some added inside, some held
            ms.update(pred[i : i + 2], target[i : i + 2])
    want = float((pred - target).abs().double().mean())
    assert ms.compute()["mae"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("offset", [0.0, 1e6, 1e8, 1.7e9])
def test_r2_far_from_zero_matches_sklearn(offset):
    # Timestamps, prices in cents: targets far from zero relative to their spread.
    rng = np.random.default_rng(3)
    y = offset + rng.normal(size=(300, 2))
    p = y + 0.5 * rng.normal(size=(300, 2))
    r2 = metrics.R2Score()
    for start in range(0, 300, 37):
        r2.update(torch.tensor(p[start:start + 37]), torch.tensor(y[start:start + 37]))
    assert r2.compute() == pytest.approx(skm.r2_score(y, p), rel=1e-9, abs=1e-9)


def test_r2_of_several_processes_adds_up_across_different_shifts():
    import threading

    rng = np.random.default_rng(4)
    y = 1e8 + rng.normal(size=(120, 1))
    p = y + 0.3 * rng.normal(size=(120, 1))
    shards = [metrics.MetricSet(["r2"]), metrics.MetricSet(["r2"])]
    for rank, shard in enumerate(shards):  # each process its own samples (and first batch)
        for start in range(rank * 8, 120, 16):
            shard.update(torch.tensor(p[start:start + 8]), torch.tensor(y[start:start + 8]))
    barrier, slots = threading.Barrier(2), [None, None]

    def all_reduce_sum(rank):  # two threads stand for two processes
        def reduce(tensors):
            slots[rank] = [t.clone() for t in tensors]
            barrier.wait()
            for t, *parts in zip(tensors, *slots):
                t.copy_(sum(parts))
            barrier.wait()
        return reduce

    threads = [threading.Thread(target=shard.sync, args=(all_reduce_sum(rank),)) for rank, shard in enumerate(shards)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    expected = skm.r2_score(y, p)
    assert [shard.compute()["r2"] for shard in shards] == [pytest.approx(expected, rel=1e-9)] * 2


def test_half_precision_errors_are_subtracted_in_a_wider_type():
    y = (torch.linspace(-300, 300, 1000)).half()
    p = (y.float() + torch.linspace(-1, 1, 1000).sin()).half()
    for name, fn in (("mae", skm.mean_absolute_error), ("mse", skm.mean_squared_error)):
        metric = metrics.build(name)
        metric.update(p, y)
        assert metric.compute() == pytest.approx(fn(y.double().numpy(), p.double().numpy()), rel=1e-12)
