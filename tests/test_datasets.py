"""datasets: built-ins, file readers, seeded (stratified/chronological) splits, scaling, windows."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from traincraft import datasets
from traincraft.datasets import PreparedData, Scaler, prepare
from traincraft.errors import DataError, ShapeError, TraincraftError, UnknownNameError

SPLIT = {"val": 0.15, "test": 0.15}


# ------------------------------------------------------------------------------------------
# test data and small checks
# ------------------------------------------------------------------------------------------


def sizes(data: PreparedData) -> tuple[int, int, int]:
    return tuple(0 if part is None else len(part[0]) for part in (data.train, data.val, data.test))


def expected_sizes(n: int, val: float, test: float) -> tuple[int, int, int]:
    n_test, n_val = round(n * test), round(n * val)
    return n - n_val - n_test, n_val, n_test


def assert_partition(data: PreparedData, n: int) -> None:
    """The split indices are disjoint and cover 0..n-1 exactly once."""
    every = torch.cat([data.indices[k] for k in ("train", "val", "test") if k in data.indices])
    assert sorted(every.tolist()) == list(range(n))


def write_csv(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def prepare_arrays(folder, x, y, **kwargs) -> PreparedData:
    """Prepare in-memory arrays through a .npz file: the real reader, no private shortcut."""
    np.savez(folder / "data.npz", X=x, y=y)
    return prepare(str(folder / "data.npz"), **kwargs)


def make_data():
    """A 'module:function' source: 40 samples, 3 features, a linear target."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    return x, x @ np.array([1.0, -2.0, 0.5], dtype=np.float32)


def make_split_data():
    """A 'module:function' source that gives train and test; val is carved from train."""
    x = np.arange(60, dtype=np.float32).reshape(30, 2)
    y = np.arange(30, dtype=np.float32)
    xt = np.full((10, 2), 7.0, dtype=np.float32)
    return {"train": (x, y), "test": (torch.from_numpy(xt), torch.arange(10.0))}


def make_series():
    """A forecast source: target series 0..99 and one extra series 100..199."""
    t = np.arange(100, dtype=np.float64)
    return (t + 100)[:, None], t


def make_bad_keys():
    return {"train": make_data(), "valid": make_data()}


# ------------------------------------------------------------------------------------------
# built-ins (each loaded once)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iris():
    return prepare("iris", split=SPLIT, seed=0)


@pytest.fixture(scope="module")
def digits():
    return prepare("digits", split=SPLIT, seed=0)


@pytest.fixture(scope="module")
def diabetes():
    return prepare("diabetes", split=SPLIT, seed=0)


@pytest.fixture(scope="module")
def raw_sklearn():
    from sklearn import datasets as sk

    return {
        "iris": sk.load_iris(),
        "digits": sk.load_digits(),
        "diabetes": sk.load_diabetes(scaled=False),
    }


def test_names():
    assert datasets.names() == [
        "breast_cancer",
        "co2",
        "diabetes",
        "digits",
        "iris",
        "sunspots",
        "wine",
    ]


def test_iris(iris, raw_sklearn):
    assert sum(sizes(iris)) == 150
    assert sizes(iris) == expected_sizes(150, 0.15, 0.15) == (106, 22, 22)
    assert iris.task == "classification"
    assert iris.input_shape == (4,)
    assert iris.num_classes == iris.output_size == 3
    assert iris.class_names == ["setosa", "versicolor", "virginica"]
    assert iris.feature_names == list(raw_sklearn["iris"].feature_names)
    assert iris.target_stats is None
    x, y = iris.train
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.shape == (106,)
    expected_y = raw_sklearn["iris"].target[iris.indices["train"].numpy()]
    assert np.array_equal(y.numpy(), expected_y)
    assert (
        iris.summary()
        == "iris: classification, train 106 / val 22 / test 22, input (4,), 3 classes"
    )


def test_digits(digits, raw_sklearn):
    assert sum(sizes(digits)) == 1797
    x, y = digits.train
    assert x.shape[1:] == (1, 8, 8) and digits.input_shape == (1, 8, 8)
    assert digits.num_classes == 10 and digits.class_names == [str(i) for i in range(10)]
    assert set(y.tolist()) == set(range(10))
    # per-pixel standard scaling: statistics have one image's shape; always-blank pixels keep 1
    raw = raw_sklearn["digits"].images[digits.indices["train"].numpy()][:, None].astype(np.float32)
    scaler = digits.scaler
    assert scaler.shift.shape == (1, 8, 8)
    np.testing.assert_array_equal(scaler.shift, raw.astype(np.float64).mean(axis=0))
    blank = raw.std(axis=0) == 0
    assert blank.any() and (scaler.scale[blank] == 1).all()
    assert (x[:, blank] == 0).all()  # a pixel that is always 0 stays 0, no division by zero
    torch.testing.assert_close(
        scaler.inverse_transform(x), torch.from_numpy(raw), atol=1e-4, rtol=0
    )


def test_diabetes_raw_targets(diabetes, raw_sklearn):
    bunch = raw_sklearn["diabetes"]
    assert sum(sizes(diabetes)) == 442
    assert diabetes.task == "regression" and diabetes.num_classes is None
    assert diabetes.output_size == 1 and diabetes.input_shape == (10,)
    x, y = diabetes.train
    assert y.shape == (len(x), 1) and y.dtype == torch.float32
    rows = diabetes.indices["train"].numpy()
    np.testing.assert_array_equal(y[:, 0].numpy(), bunch.target[rows].astype(np.float32))
    # raw (unscaled=False) features: age is in years before our own scaling
    assert bunch.data[:, 0].max() > 50
    mean, std = diabetes.target_stats
    assert mean == pytest.approx([float(bunch.target[rows].astype(np.float32).mean())], rel=1e-6)
    assert std == pytest.approx([float(bunch.target[rows].astype(np.float32).std())], rel=1e-6)
    # targets stay in their own units in every split
    _, y_test = diabetes.test
    np.testing.assert_array_equal(
        y_test[:, 0].numpy(), bunch.target[diabetes.indices["test"].numpy()].astype(np.float32)
    )


@pytest.mark.parametrize(
    ("name", "rows", "features", "classes"), [("wine", 178, 13, 3), ("breast_cancer", 569, 30, 2)]
)
def test_tabular_classification_builtins(name, rows, features, classes):
    data = prepare(name.replace("_", "-"))  # dashes are accepted in names
    assert data.name == name
    assert sizes(data) == (rows, 0, 0)
    assert data.input_shape == (features,) and data.num_classes == classes
    assert len(data.class_names) == classes


def test_sunspots_windows():
    from statsmodels.datasets import sunspots

    series = sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    assert len(series) == 309
    data = prepare("sunspots", lookback=9)
    x, y = data.train
    assert data.task == "forecast" and x.shape == (300, 9, 1) and y.shape == (300, 1)
    assert data.feature_names == data.target_names == ["SUNACTIVITY"]
    np.testing.assert_array_equal(y[:, 0].numpy(), series[9:].astype(np.float32))
    restored = data.scaler.inverse_transform(x[0, :, 0:1])[:, 0]
    torch.testing.assert_close(restored, torch.tensor(series[:9], dtype=torch.float32))


def test_co2_monthly_without_gaps():
    from statsmodels.datasets import co2

    weekly = co2.load_pandas().data["co2"]
    assert weekly.isna().any()  # the raw data has gaps, so the check below means something
    data = prepare("co2", lookback=12, split={"test": 0.1})
    n_steps = 526  # monthly means, March 1958 .. December 2001
    x, y = data.train
    assert len(x) + len(data.test[0]) == n_steps - 12
    for part in (data.train, data.test):
        assert torch.isfinite(part[0]).all() and torch.isfinite(part[1]).all()
    # the first monthly mean is March 1958's weekly readings averaged
    march = weekly["1958-03"].mean()
    first = data.scaler.inverse_transform(x[0, :1, :])[0, 0]
    assert first.item() == pytest.approx(march, abs=1e-3)


def test_forecast_builtin_needs_lookback():
    with pytest.raises(DataError, match=r"data\.lookback"):
        prepare("sunspots")


def test_builtin_task_cannot_change():
    with pytest.raises(DataError, match="classification data set"):
        prepare("iris", task="regression")


def test_builtin_rejects_columns():
    with pytest.raises(DataError, match="data.target"):
        prepare("iris", target="species")


def test_unknown_dataset_suggests_names():
    with pytest.raises(UnknownNameError, match=r"'irsi'.*did you mean 'iris'"):
        prepare("irsi")


def test_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import raises ImportError
    with pytest.raises(TraincraftError, match=r"pip install 'traincraft\[datasets\]'"):
        prepare("wine")


# ------------------------------------------------------------------------------------------
# splits
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["iris", "digits", "diabetes"])
def test_split_sizes_exact_and_disjoint(fixture, request):
    data = request.getfixturevalue(fixture)
    n = sum(sizes(data))
    assert sizes(data) == expected_sizes(n, 0.15, 0.15)
    assert_partition(data, n)


@pytest.mark.parametrize("fixture", ["iris", "digits"])
def test_stratified_shares(fixture, request, raw_sklearn):
    data = request.getfixturevalue(fixture)
    labels = raw_sklearn[fixture].target
    for key, share in (("val", 0.15), ("test", 0.15)):
        got = np.bincount(labels[data.indices[key].numpy()], minlength=data.num_classes)
        wanted = np.bincount(labels) * share
        assert (np.abs(got - wanted) < 1).all(), (key, got, wanted)  # floor or ceil per class
        assert got.sum() == round(len(labels) * share)


def test_stratified_split_of_uneven_classes(tmp_path):
    labels = np.array([0] * 50 + [1] * 7 + [2] * 3)
    x = np.arange(60, dtype=np.float32)[:, None]
    for seed in range(5):
        data = prepare_arrays(
            tmp_path, x, labels, task="classification", split={"val": 0.2, "test": 0.25}, seed=seed
        )
        assert sizes(data) == expected_sizes(60, 0.2, 0.25)
        assert_partition(data, 60)
        for key, share in (("val", 0.2), ("test", 0.25)):
            got = np.bincount(labels[data.indices[key].numpy()], minlength=3)
            assert (np.abs(got - np.bincount(labels) * share) < 1).all()


def test_split_is_seeded(iris):
    again = prepare("iris", split=SPLIT, seed=0)
    other = prepare("iris", split=SPLIT, seed=1)
    for key in ("train", "val", "test"):
        assert torch.equal(again.indices[key], iris.indices[key])
        assert torch.equal(again.train[0], iris.train[0])
    assert not torch.equal(other.indices["test"], iris.indices["test"])


def test_regression_split_is_seeded_permutation(tmp_path):
    x, y = make_data()
    a = prepare_arrays(tmp_path, x, y, split={"val": 0.25, "test": 0.2}, seed=5)
    b = prepare_arrays(tmp_path, x, y, split={"val": 0.25, "test": 0.2}, seed=5)
    c = prepare_arrays(tmp_path, x, y, split={"val": 0.25, "test": 0.2}, seed=6)
    assert sizes(a) == (22, 10, 8)
    assert_partition(a, 40)
    assert torch.equal(a.indices["val"], b.indices["val"])
    assert not torch.equal(a.indices["val"], c.indices["val"])
    # targets follow their rows
    np.testing.assert_array_equal(a.val[1][:, 0].numpy(), y[a.indices["val"].numpy()])


@pytest.mark.parametrize(
    ("split", "match"),
    [
        ({"val": 0.5, "test": 0.5}, "leaves nothing to train on"),
        ({"valid": 0.1}, r"unknown key 'valid' \(did you mean 'val'\?\)"),
        ({"test": 1.5}, r"data\.split\.test must be a share"),
        ({"test": 0.01}, "gives 0 samples"),
        ({"train": 0.5, "test": 0.2}, "must equal 1 - val - test"),
    ],
)
def test_bad_split(split, match, tmp_path):
    x, y = make_data()
    with pytest.raises(DataError, match=match):
        prepare_arrays(tmp_path, x, y, split=split)


def test_split_zero_means_none(tmp_path):
    x, y = make_data()
    data = prepare_arrays(tmp_path, x, y, split={"val": 0, "test": 0.25, "train": 0.75})
    assert data.val is None and sizes(data) == (30, 0, 10)


# ------------------------------------------------------------------------------------------
# scaling
# ------------------------------------------------------------------------------------------


def test_standard_scaler_fitted_on_train_only(tmp_path):
    rng = np.random.default_rng(0)
    raw = (rng.normal(size=(200, 3)) * [1.0, 10.0, 0.1] + [0.0, 50.0, -3.0]).astype(np.float32)
    raw[:100] += 5.0  # the first rows differ, so full-data statistics differ from train ones
    y = rng.normal(size=200).astype(np.float32)
    data = prepare_arrays(tmp_path, raw, y, split={"val": 0.2, "test": 0.2}, seed=1)
    train_rows = raw[data.indices["train"].numpy()].astype(np.float64)
    np.testing.assert_array_equal(data.scaler.shift, train_rows.mean(axis=0))
    np.testing.assert_array_equal(data.scaler.scale, train_rows.std(axis=0))
    assert not np.allclose(data.scaler.shift, raw.astype(np.float64).mean(axis=0))
    x = data.train[0].double()
    torch.testing.assert_close(x.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        x.std(0, correction=0), torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0
    )

    from sklearn.preprocessing import StandardScaler  # the oracle

    oracle = StandardScaler().fit(train_rows)
    test_rows = raw[data.indices["test"].numpy()].astype(np.float64)
    np.testing.assert_allclose(data.test[0].numpy(), oracle.transform(test_rows), atol=1e-5)


def test_minmax_scaler_matches_sklearn(tmp_path):
    from sklearn.preprocessing import MinMaxScaler

    rng = np.random.default_rng(2)
    raw = rng.uniform(-4, 9, size=(50, 4)).astype(np.float32)
    data = prepare_arrays(tmp_path, raw, raw[:, 0], split={"test": 0.2}, scale="minmax", seed=3)
    train_rows = raw[data.indices["train"].numpy()].astype(np.float64)
    oracle = MinMaxScaler().fit(train_rows)
    np.testing.assert_array_equal(data.scaler.shift, oracle.data_min_)
    np.testing.assert_allclose(data.train[0].numpy(), oracle.transform(train_rows), atol=1e-6)
    assert data.train[0].min() == 0 and data.train[0].max() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["standard", "minmax"])
def test_zero_spread_features_are_left_unscaled(kind):
    # float64 0.1 three times: numpy's std is 1.4e-17 (rounding noise), not 0
    x = torch.tensor([[0.1, 1.0, 0.0], [0.1, 2.0, 0.0], [0.1, 4.0, 0.0]], dtype=torch.float64)
    assert 0 < x[:, 0].numpy().std() < 1e-15
    scaler = Scaler(kind).fit(x)
    out = scaler.transform(x)
    assert scaler.scale[0] == 1 and scaler.scale[2] == 1
    assert scaler.scale[1] == (x[:, 1].numpy().std() if kind == "standard" else 3.0)
    assert torch.isfinite(out).all()
    assert (out[:, 0].abs() < 1e-15).all() and torch.equal(out[:, 2], torch.zeros(3, dtype=x.dtype))


def test_scale_none_keeps_inputs_and_targets(tmp_path):
    x, y = make_data()
    data = prepare_arrays(tmp_path, x, y, scale="none")
    assert torch.equal(data.train[0], torch.from_numpy(x))
    assert torch.equal(data.train[1], torch.from_numpy(y)[:, None])
    assert data.scaler.to_dict() == {"kind": "none"}


def test_scaler_dict_round_trip_through_json(digits):
    saved = json.loads(json.dumps(digits.scaler.to_dict()))
    assert saved["kind"] == "standard" and saved["shape"] == [1, 8, 8]
    again = Scaler.from_dict(saved)
    x = torch.rand(5, 1, 8, 8) * 16
    assert torch.equal(again.transform(x), digits.scaler.transform(x))
    assert Scaler.from_dict({"kind": "none"}).transform(x) is x


def test_scaler_errors():
    with pytest.raises(UnknownNameError, match=r"did you mean 'minmax'"):
        Scaler("minmaxx")
    with pytest.raises(TraincraftError, match="before fit"):
        Scaler("standard").transform(torch.ones(2, 3))
    scaler = Scaler("standard").fit(torch.rand(10, 3))
    with pytest.raises(ShapeError, match=r"\(3,\).*\(2, 4\)"):
        scaler.transform(torch.ones(2, 4))
    x = torch.rand(4, 3)
    torch.testing.assert_close(scaler.inverse_transform(scaler.transform(x)), x)


# ------------------------------------------------------------------------------------------
# forecast windows
# ------------------------------------------------------------------------------------------


def test_forecast_windows_on_0_to_99(tmp_path):
    series = np.arange(100, dtype=np.float64)
    path = tmp_path / "series.npz"
    np.savez(path, y=series)  # a forecast needs no X: the target series is the input
    data = prepare(
        "series.npz",
        base_dir=tmp_path,
        task="forecast",
        lookback=5,
        split={"val": 0.2, "test": 0.1},
    )
    # segments: train 0..69, val 70..89, test 90..99
    x, y = data.train
    assert x.shape == (65, 5, 1) and y.shape == (65, 1)
    assert data.input_shape == (5, 1) and data.output_size == 1
    starts = np.arange(5, 70)
    np.testing.assert_array_equal(y[:, 0].numpy(), starts)
    expected_inputs = (starts[:, None] + np.arange(-5, 0) - 34.5) / np.arange(70).std()
    np.testing.assert_allclose(x[:, :, 0].numpy(), expected_inputs, atol=1e-6)
    assert data.indices["train"].max() < 70  # no training target from val/test
    np.testing.assert_array_equal(data.scaler.shift, [series[:70].mean()])
    np.testing.assert_array_equal(data.scaler.scale, [series[:70].std()])
    x_val, y_val = data.val
    assert y_val.shape == (20, 1) and y_val[0, 0] == 70  # first val target: first val value
    # a val window's inputs reach back into train (the past): 65..69 for target 70
    restored = data.scaler.inverse_transform(x_val[0])[:, 0]
    torch.testing.assert_close(restored, torch.arange(65.0, 70.0))
    np.testing.assert_array_equal(data.test[1][:, 0].numpy(), np.arange(90, 100))
    assert data.target_stats == ([float(starts.mean())], [float(starts.std())])
    assert data.summary() == (
        "series.npz: forecast, train 65 / val 20 / test 10 windows, input (5, 1), 1 output"
    )


def test_forecast_horizon_and_extra_series():
    data = prepare(
        f"{__name__}:make_series",
        task="forecast",
        lookback=4,
        horizon=3,
        split={"val": 0.2, "test": 0.1},
    )
    x, y = data.train
    # train targets t..t+2 must stay below 70: starts 4..67
    assert x.shape == (64, 4, 2) and y.shape == (64, 3)
    assert data.output_size == 3 and data.input_shape == (4, 2)
    np.testing.assert_array_equal(y.numpy(), np.arange(4, 68)[:, None] + np.arange(3))
    assert data.feature_names == ["y", "x0"] and data.target_names == ["y"]
    restored = data.scaler.inverse_transform(x[0])
    torch.testing.assert_close(restored, torch.tensor([[0.0, 100], [1, 101], [2, 102], [3, 103]]))
    assert data.val[1][0].tolist() == [70.0, 71.0, 72.0]
    assert data.val[1][-1].tolist() == [87.0, 88.0, 89.0]  # the last val window ends inside val
    assert len(data.test[1]) == 8


def test_forecast_segment_too_short():
    with pytest.raises(DataError, match="test segment has 2 of 100 steps"):
        prepare(
            f"{__name__}:make_series", task="forecast", lookback=4, horizon=3, split={"test": 0.02}
        )


def test_lookback_only_for_forecast():
    with pytest.raises(DataError, match="task 'forecast'"):
        prepare(f"{__name__}:make_data", lookback=3)


# ------------------------------------------------------------------------------------------
# CSV
# ------------------------------------------------------------------------------------------

CSV = """a,b,label,price
1.0,2.0,cat,10
2.0,3.5,dog,20
3.0,1.0,cat,30
4.0,0.5,bird,40
"""


def test_csv_regression_default_features(tmp_path):
    write_csv(tmp_path / "t.csv", CSV)
    data = prepare("t.csv", base_dir=tmp_path, target="price", features=["a", "b"], scale="none")
    x, y = data.train
    assert data.task == "regression"
    assert torch.equal(x, torch.tensor([[1.0, 2.0], [2.0, 3.5], [3.0, 1.0], [4.0, 0.5]]))
    assert torch.equal(y, torch.tensor([[10.0], [20.0], [30.0], [40.0]]))
    assert data.feature_names == ["a", "b"] and data.target_names == ["price"]
    # default features are every other column: the text column 'label' is then an error
    with pytest.raises(DataError, match=r"feature column 'label', data row 1 \(file line 2\)"):
        prepare(str(tmp_path / "t.csv"), target="price")


def test_csv_string_labels(tmp_path):
    write_csv(tmp_path / "t.csv", CSV)
    data = prepare(str(tmp_path / "t.csv"), target="label", features=["a", "b"])
    assert data.task == "classification"
    assert data.class_names == ["bird", "cat", "dog"]
    assert data.train[1].tolist() == [1, 2, 1, 0]
    assert data.num_classes == data.output_size == 3


def test_csv_integer_labels_need_task(tmp_path):
    write_csv(tmp_path / "t.csv", "x,y\n1,3\n2,10\n3,3\n4,2\n")
    assert prepare(str(tmp_path / "t.csv"), target="y").task == "regression"
    data = prepare(str(tmp_path / "t.csv"), target="y", task="classification")
    assert data.class_names == ["2", "3", "10"]  # numbers sort as numbers
    assert data.train[1].tolist() == [1, 2, 1, 0]


def test_csv_two_targets(tmp_path):
    write_csv(tmp_path / "t.csv", CSV)
    data = prepare(str(tmp_path / "t.csv"), target=["a", "price"], features=["b"])
    assert data.train[1].shape == (4, 2) and data.output_size == 2
    assert data.train[1][:, 1].tolist() == [10, 20, 30, 40]
    assert data.target_stats[0] == pytest.approx([2.5, 25.0])


def test_csv_missing_column(tmp_path):
    write_csv(tmp_path / "t.csv", CSV)
    with pytest.raises(DataError) as err:
        prepare(str(tmp_path / "t.csv"), target="prise")
    assert str(err.value) == (
        "t.csv: data.target names column 'prise', which is not in the file "
        "(did you mean 'price'?); columns: a, b, label, price"
    )
    with pytest.raises(DataError, match=r"data\.features names column 'c'.*columns: a, b"):
        prepare(str(tmp_path / "t.csv"), target="price", features=["a", "c"])


@pytest.mark.parametrize(
    ("cell", "problem"),
    [
        ("nan", "'nan' is not a finite number"),
        ("abc", "'abc' is not a finite number"),
        ("", "the value is empty"),
    ],
)
def test_csv_bad_value_names_row(tmp_path, cell, problem):
    write_csv(tmp_path / "t.csv", f"a,b,y\n1,2,3\n4,5,6\n7,{cell},9\n")
    with pytest.raises(DataError) as err:
        prepare(str(tmp_path / "t.csv"), target="y")
    message = str(err.value)
    assert message.startswith("t.csv: feature column 'b', data row 3 (file line 4)")
    assert problem in message


def test_csv_mixed_target_is_reported(tmp_path):
    write_csv(tmp_path / "t.csv", "a,y\n1,2.5\n2,3.x\n3,4\n")
    with pytest.raises(DataError, match=r"mixes numbers and text \(data row 2 \(file line 3\)"):
        prepare(str(tmp_path / "t.csv"), target="y")
    with pytest.raises(DataError, match=r"target column 'y', data row 2"):
        prepare(str(tmp_path / "t.csv"), target="y", task="regression")


def test_csv_needs_target_and_header(tmp_path):
    write_csv(tmp_path / "t.csv", CSV)
    with pytest.raises(DataError, match=r"set data\.target.*columns: a, b, label, price"):
        prepare(str(tmp_path / "t.csv"))
    write_csv(tmp_path / "e.csv", "")
    with pytest.raises(DataError, match="no header row"):
        prepare(str(tmp_path / "e.csv"), target="y")


def test_csv_unreadable(tmp_path):
    (tmp_path / "latin.csv").write_bytes("a,y\n1,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="latin.csv: not UTF-8 text"):
        prepare(str(tmp_path / "latin.csv"), target="y")
    write_csv(tmp_path / "short.csv", "a,b,y\n1,2,3\n4,5\n")
    with pytest.raises(DataError, match="short.csv: file line 3 has 2 fields, the header has 3"):
        prepare(str(tmp_path / "short.csv"), target="y")
    write_csv(tmp_path / "one.csv", "y\n1\n2\n")
    with pytest.raises(DataError, match="no input columns"):
        prepare(str(tmp_path / "one.csv"), target="y")


def test_csv_forecast(tmp_path):
    rows = "\n".join(f"2020-{i:03d},{i},{2 * i}" for i in range(30))
    write_csv(tmp_path / "s.csv", "date,sales,price\n" + rows + "\n")
    data = prepare(
        str(tmp_path / "s.csv"),
        task="forecast",
        target="sales",
        features=["price"],
        lookback=3,
        split={"test": 0.2},
    )
    assert data.train[0].shape == (21, 3, 2) and data.test[1][:, 0].tolist() == list(range(24, 30))
    # by default a forecast uses only the target history, so the date column is not read
    alone = prepare(str(tmp_path / "s.csv"), task="forecast", target="sales", lookback=3)
    assert alone.input_shape == (3, 1)


def test_file_not_found(tmp_path):
    with pytest.raises(DataError, match=r"'nope\.csv' not found \(resolved against base_dir"):
        prepare("nope.csv", base_dir=tmp_path, target="y")
    with pytest.raises(DataError, match="unsupported type '.tsv'"):
        prepare("data.tsv")


# ------------------------------------------------------------------------------------------
# npz, pt, module:function
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("xk", "yk"), [("X", "y"), ("x", "y"), ("inputs", "targets")])
def test_npz_round_trip(tmp_path, xk, yk):
    x, y = make_data()
    np.savez(tmp_path / "d.npz", **{xk: x, yk: y})
    data = prepare("d.npz", base_dir=tmp_path, scale="none")
    assert torch.equal(data.train[0], torch.from_numpy(x))
    assert torch.equal(data.train[1][:, 0], torch.from_numpy(y))
    assert data.feature_names == ["x0", "x1", "x2"] and data.target_names == ["y"]


def test_npz_bad_keys(tmp_path):
    np.savez(tmp_path / "d.npz", features=np.ones((3, 2)), labels=np.ones(3))
    with pytest.raises(DataError, match="needs arrays 'X' and 'y'.*found: features, labels"):
        prepare(str(tmp_path / "d.npz"))


def test_npz_with_pickled_objects_is_refused(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.ones((2, 1)), y=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match=r"d\.npz: cannot read as \.npz of plain arrays"):
        prepare(str(tmp_path / "d.npz"))


def test_npz_text_labels(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.eye(4), y=np.array(["b", "a", "b", "c"]))
    data = prepare(str(tmp_path / "d.npz"))
    assert data.task == "classification" and data.class_names == ["a", "b", "c"]
    assert data.train[1].tolist() == [1, 0, 1, 2]


@pytest.mark.parametrize("as_tuple", [False, True])
def test_pt_round_trip(tmp_path, as_tuple):
    x = torch.randn(12, 2, 3)
    y = torch.tensor([5, 7, 9] * 4)
    torch.save((x, y) if as_tuple else {"X": x, "y": y}, tmp_path / "d.pt")
    data = prepare(str(tmp_path / "d.pt"), task="classification", scale="none")
    assert torch.equal(data.train[0], x) and data.input_shape == (2, 3)
    assert data.feature_names == ["x0", "x1", "x2", "x3", "x4", "x5"]  # row-major input values
    assert data.class_names == ["5", "7", "9"] and data.train[1].tolist() == [0, 1, 2] * 4
    assert prepare(str(tmp_path / "d.pt")).task == "regression"  # integers: regression by default


def test_pt_unsafe_object(tmp_path):
    torch.save({"X": torch.ones(2, 1), "y": object()}, tmp_path / "d.pt")
    with pytest.raises(DataError, match=r"d.pt was refused: it holds Python objects other than tensors"):
        prepare(str(tmp_path / "d.pt"))


def test_module_function():
    x, y = make_data()
    data = prepare(f"{__name__}:make_data", split={"test": 0.25}, seed=0)
    assert data.name == f"{__name__}:make_data"
    assert sizes(data) == (30, 0, 10)
    rows = data.indices["test"].numpy()
    np.testing.assert_array_equal(data.test[1][:, 0].numpy(), y[rows])
    torch.testing.assert_close(
        data.scaler.inverse_transform(data.test[0]), torch.from_numpy(x[rows])
    )


def test_module_function_given_splits():
    data = prepare(f"{__name__}:make_split_data", split={"val": 0.25, "test": 0.5}, scale="none")
    # test is given (10 rows, its share ignored); val = round(40 * 0.25) rows carved from train
    assert sizes(data) == (20, 10, 10)
    assert torch.equal(data.test[0], torch.full((10, 2), 7.0))
    assert torch.equal(data.test[1][:, 0], torch.arange(10.0))
    carved = torch.cat([data.indices["train"], data.indices["val"]])
    assert sorted(carved.tolist()) == list(range(30))


def test_module_function_split_too_large():
    # val = round(40 * 0.8) = 32 rows cannot come out of the 30 given training rows
    with pytest.raises(DataError, match="leaves no training samples"):
        prepare(f"{__name__}:make_split_data", split={"val": 0.8})


def test_module_function_bad_dict():
    with pytest.raises(DataError, match=r"unknown key 'valid' \(did you mean 'val'\?\)"):
        prepare(f"{__name__}:make_bad_keys")
    with pytest.raises(TraincraftError, match="has no 'nothing_here'"):
        prepare(f"{__name__}:nothing_here")


def test_classes_keeps_only_those_samples_numbered_in_the_order_given():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    data = prepare("digits", classes=[7, 5], split={"val": 0.2, "test": 0.2}, seed=0)
    assert data.class_names == ["7", "5"] and data.num_classes == data.output_size == 2
    ys = torch.cat([data.train[1], data.val[1], data.test[1]])
    assert torch.bincount(ys).tolist() == [int((labels == 7).sum()), int((labels == 5).sum())]
    # the images are those of the kept labels: a 7 is no 5
    images = load_digits().images.astype(np.float32)
    sevens = {tuple(x.flatten().tolist()) for x in images[labels == 7]}
    kept = prepare("digits", classes=[7, 5], split={"val": 0.2, "test": 0.2}, seed=0, scale="none")
    assert all((tuple(x.flatten().tolist()) in sevens) == (y == 0) for x, y in zip(*kept.train))


def test_classes_errors_name_the_labels():
    with pytest.raises(DataError, match=r"data.classes \['11'\] not among its labels: 0, 1, 2"):
        prepare("digits", classes=[1, 11])
    with pytest.raises(DataError, match="distinct"):
        prepare("digits", classes=[1, 1])
    with pytest.raises(DataError, match="needs a classification task"):
        prepare("diabetes", classes=[1])


def test_whole_number_labels_read_as_regression_are_pointed_out(tmp_path):
    path = tmp_path / "labels.csv"
    rows = ["a,b,label"] + [f"{i % 5},{i % 3},{i % 3}" for i in range(30)]
    path.write_text("\n".join(rows) + "\n")
    data = prepare(str(path), target="label")
    assert data.task == "regression"
    assert data.notes == ["warning: labels.csv: the target holds 3 distinct whole numbers (0, 1, 2), read as "
                          "regression values; if they are class labels, set data.task: classification"]
    assert prepare(str(path), target="label", task="classification").notes == []
    values = tmp_path / "values.csv"
    values.write_text("\n".join(["a,y"] + [f"{i},{i * 0.5}" for i in range(30)]) + "\n")
    assert prepare(str(values), target="y").notes == []
