"""Built-in data sets and file readers, turned into plain tensors ready for in-memory batching.

:func:`prepare` does the whole data side of a recipe in one call: it loads the source (a built-in
name, a ``.csv``/``.npz``/``.pt`` file, or ``"package.module:function"``), decides the task, makes
seeded splits (stratified for classification, chronological for forecasting), fits the input
scaler on the training split only, and for forecasting cuts sliding windows that never let a
training target come from val/test.

Decisions that hold everywhere below:

* Inputs are scaled; targets stay in their own units, so RMSE and MSE read in the data's units.
  Regression and forecast results carry the train targets' mean/std (``target_stats``) for a
  model's fixed affine output layer.
* Inputs are float32; classification targets are int64 indices ``0..C-1``; regression targets are
  float32 of shape ``(N, n_targets)``.
* Split sizes: ``n_test = round(n * test)``, ``n_val = round(n * val)``, the rest is train.

Example:
    >>> from traincraft import datasets
    >>> data = datasets.prepare("iris", split={"val": 0.15, "test": 0.15}, seed=0)
    >>> data.summary()
    'iris: classification, train 106 / val 22 / test 22, input (4,), 3 classes'
"""

from __future__ import annotations

import csv
import importlib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from traincraft.errors import (
    DataError,
    ShapeError,
    TraincraftError,
    did_you_mean,
    first_line,
    unknown_name,
)
from traincraft.registry import Registry, import_object

__all__ = ["PreparedData", "Scaler", "names", "prepare", "DATASETS", "SCALERS", "TASKS"]

TASKS = ("classification", "regression", "forecast")
SPLITS = ("train", "val", "test")
_EXTRA_HINT = "pip install 'traincraft[datasets]'"
# A feature whose spread is below this fraction of its largest magnitude is constant up to float
# rounding (the mean of n copies of 0.1 is not exactly 0.1): dividing by it would blow noise up.
_ZERO_SPREAD = 1e-12
_FUNCTION_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


# --------------------------------------------------------------------------------------------
# Scaler
# --------------------------------------------------------------------------------------------


def _safe_spread(spread: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """``spread`` with zero (or rounding-noise) entries replaced by 1: those features stay as is."""
    constant = spread <= _ZERO_SPREAD * magnitude
    return np.where(constant, 1.0, spread)


def _standard_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std (ddof=0, as scikit-learn's StandardScaler) per feature."""
    return x.mean(axis=0), _safe_spread(x.std(axis=0), np.abs(x).max(axis=0))


def _minmax_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and range per feature: the training split maps onto [0, 1]."""
    low, high = x.min(axis=0), x.max(axis=0)
    return low, _safe_spread(high - low, np.abs(x).max(axis=0))


def _no_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(x.shape[1:]), np.ones(x.shape[1:])


SCALERS = Registry("scaler")
SCALERS.add(
    "standard",
    _standard_stats,
    aliases=["zscore", "standardize"],
    doc="subtract the train mean, divide by the train std, per feature",
)
SCALERS.add(
    "minmax",
    _minmax_stats,
    aliases=["min_max"],
    doc="subtract the train minimum, divide by the train range, per feature",
)
SCALERS.add("none", _no_stats, aliases=["identity"], doc="leave inputs as they are")


class Scaler:
    """Per-feature input scaling, fitted on the training inputs only.

    ``fit`` reduces over the first dimension only, so the statistics have one sample's shape:
    ``(F,)`` for tables, ``(1, 8, 8)`` for 8×8 images (per pixel), ``(S,)`` for a ``(T, S)`` series.
    ``transform`` broadcasts them over any leading dimensions, so the same scaler fitted on a
    series segment scales ``(N, lookback, S)`` windows. A feature with zero spread keeps spread 1.

    Attributes:
        kind: ``"standard"``, ``"minmax"`` or ``"none"``.
        shift: what is subtracted (mean or minimum), float64, one sample's shape; None until fitted.
        scale: what is divided by (std or range), float64; None until fitted.

    Example:
        >>> scaler = Scaler("standard").fit(torch.tensor([[0.0, 5.0], [2.0, 5.0]]))
        >>> scaler.transform(torch.tensor([[1.0, 5.0]]))
        tensor([[0., 0.]])
    """

    def __init__(self, kind: str | None = "standard"):
        self.kind = SCALERS.canonical("none" if kind is None else kind)
        self.shift: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self._device_cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        shape = None if self.shift is None else tuple(self.shift.shape)
        return f"Scaler(kind={self.kind!r}, shape={shape})"

    def fit(self, x: Tensor | np.ndarray) -> Scaler:
        """Fit on ``x`` of shape ``(N, *feature_shape)``; statistics in float64. Returns self."""
        arr = torch.as_tensor(x).detach().cpu().double().numpy()
        if arr.ndim < 1 or arr.shape[0] == 0:
            raise DataError(
                f"cannot fit a {self.kind!r} scaler on an empty input of shape {arr.shape}"
            )
        self.shift, self.scale = SCALERS.entry(self.kind).factory(arr)
        self._device_cache.clear()
        return self

    def _stats_on(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.shift is None or self.scale is None:
            raise TraincraftError(f"Scaler({self.kind!r}) is used before fit(); call fit(train_x)")
        n = self.shift.ndim
        if tuple(x.shape[x.ndim - n :]) != self.shift.shape or x.ndim < n:
            raise ShapeError(
                f"scaler fitted on features of shape {tuple(self.shift.shape)} got an input of "
                f"shape {tuple(x.shape)}; its trailing dimensions must match"
            )
        key = (x.device, x.dtype)
        if key not in self._device_cache:  # built once per device: no copy per call
            self._device_cache[key] = (
                torch.as_tensor(self.shift, dtype=x.dtype, device=x.device),
                torch.as_tensor(self.scale, dtype=x.dtype, device=x.device),
            )
        return self._device_cache[key]

    @staticmethod
    def _as_float(x: Tensor | np.ndarray) -> Tensor:
        x = torch.as_tensor(x)
        return x if x.is_floating_point() else x.to(torch.float32)

    def transform(self, x: Tensor | np.ndarray) -> Tensor:
        """Scaled ``x``: ``(x - shift) / scale``; float input keeps its dtype, others become float32."""
        x = self._as_float(x)
        if self.kind == "none":
            return x
        shift, scale = self._stats_on(x)
        return (x - shift) / scale

    def inverse_transform(self, x: Tensor | np.ndarray) -> Tensor:
        """Undo :meth:`transform`: ``x * scale + shift``."""
        x = self._as_float(x)
        if self.kind == "none":
            return x
        shift, scale = self._stats_on(x)
        return x * scale + shift

    def to_dict(self) -> dict[str, Any]:
        """Plain floats and lists (JSON-ready): ``{"kind", "shape", "shift", "scale"}``."""
        if self.kind == "none" or self.shift is None or self.scale is None:
            return {"kind": self.kind}
        return {
            "kind": self.kind,
            "shape": [int(s) for s in self.shift.shape],
            "shift": [float(v) for v in self.shift.ravel()],
            "scale": [float(v) for v in self.scale.ravel()],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scaler:
        """Rebuild a scaler saved with :meth:`to_dict`.

        Example:
            >>> Scaler.from_dict({"kind": "none"}).kind
            'none'
        """
        if not isinstance(d, Mapping) or "kind" not in d:
            raise TraincraftError(f"a saved scaler needs a 'kind' key, got {d!r}")
        scaler = cls(d["kind"])
        if "shift" not in d and "scale" not in d:
            return scaler
        try:
            shape = tuple(int(s) for s in d["shape"])
            scaler.shift = np.asarray(d["shift"], dtype=np.float64).reshape(shape)
            scaler.scale = np.asarray(d["scale"], dtype=np.float64).reshape(shape)
        except (KeyError, TypeError, ValueError) as err:
            raise TraincraftError(f"saved scaler is malformed ({err}): {dict(d)!r}") from err
        return scaler


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """Tensors of each split plus what a model and a report need to know about them.

    Attributes:
        train, val, test: ``(inputs, targets)``; val/test are None when not asked for.
        task: ``"classification"``, ``"regression"`` or ``"forecast"``.
        input_shape: one sample's input shape, e.g. ``(1, 8, 8)``, ``(10,)``, ``(24, 1)``.
        output_size: classes for classification, else outputs per sample.
        num_classes: classes for classification, else None.
        feature_names: input columns (forecast: the input series, targets first).
        target_names: target columns (forecast: the predicted series).
        class_names: the label of each class index, classification only.
        scaler: the input scaler, fitted on the training split.
        target_stats: ``(mean, std)`` per output of the train targets (regression, forecast).
        name: the data set's name (built-in name, file name or function path).
        indices: per split, each sample's position in the source (rows of a file; for a given
            split, positions within it; forecast: the time step of each window's first target).

    Example:
        >>> data = prepare("diabetes", split={"test": 0.2})
        >>> x, y = data.train
        >>> x.shape, y.shape
        (torch.Size([354, 10]), torch.Size([354, 1]))
    """

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor] | None
    test: tuple[Tensor, Tensor] | None
    task: str
    input_shape: tuple[int, ...]
    output_size: int
    num_classes: int | None
    feature_names: list[str]
    target_names: list[str]
    class_names: list[str] | None
    scaler: Scaler
    target_stats: tuple[list[float], list[float]] | None
    name: str = ""
    indices: dict[str, Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # warnings about how the data was read
    normalize: dict[str, list[float]] | None = None  # images: per-channel mean/std of the train split

    def summary(self) -> str:
        """One line: name, task, sizes of each split, input shape, outputs."""
        sizes = " / ".join(
            f"{key} {'-' if part is None else split_size(part)}"
            for key, part in (("train", self.train), ("val", self.val), ("test", self.test))
        )
        unit = " windows" if self.task == "forecast" else ""
        if self.num_classes is not None:
            outputs = f"{self.num_classes} classes"
        else:
            outputs = f"{self.output_size} output{'s' if self.output_size != 1 else ''}"
        return f"{self.name}: {self.task}, {sizes}{unit}, input {self.input_shape}, {outputs}"


# --------------------------------------------------------------------------------------------
# Sources: everything is loaded into a _Source of numpy arrays before splitting
# --------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """A loaded data source. ``parts`` always holds ``"train"``, and ``"val"``/``"test"`` when the
    source gives them. Samples: ``(X (N, ...), y)``; forecast: ``(extra series (T, F) or None,
    target series (T,) or (T, k))``."""

    name: str
    parts: dict[str, tuple[np.ndarray | None, np.ndarray]]
    task: str
    fixed_task: bool = False
    feature_names: list[str] | None = None
    target_names: list[str] | None = None
    class_names: list[str] | None = None
    pixels: bool = False  # uint8 images (N, C, H, W): kept as they are, normalised per batch


def _require(module: str, package: str, dataset: str) -> ModuleType:
    """Import an optional dependency or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise TraincraftError(
            f"dataset {dataset!r} needs {package}, which is not installed: {_EXTRA_HINT}"
        ) from err


def _sklearn_table(dataset: str, loader: str, task: str) -> _Source:
    bunch = getattr(_require("sklearn.datasets", "scikit-learn", dataset), loader)()
    class_names = [str(c) for c in bunch.target_names] if task == "classification" else None
    return _Source(
        dataset,
        {"train": (bunch.data, bunch.target)},
        task,
        True,
        list(bunch.feature_names),
        ["target"],
        class_names,
    )


def _load_digits() -> _Source:
    bunch = _require("sklearn.datasets", "scikit-learn", "digits").load_digits()
    images = bunch.images[:, None]  # (N, 1, 8, 8): one channel, as convolutions expect
    return _Source(
        "digits",
        {"train": (images, bunch.target)},
        "classification",
        True,
        list(bunch.feature_names),
        ["digit"],
        [str(c) for c in bunch.target_names],
    )


def _load_diabetes() -> _Source:
    datasets = _require("sklearn.datasets", "scikit-learn", "diabetes")
    # scaled=False: raw feature values; the target is always the real disease progression.
    bunch = datasets.load_diabetes(scaled=False)
    return _Source(
        "diabetes",
        {"train": (bunch.data, bunch.target)},
        "regression",
        True,
        list(bunch.feature_names),
        ["disease_progression"],
    )


def _load_sunspots() -> _Source:
    module = _require("statsmodels.datasets.sunspots", "statsmodels", "sunspots")
    series = module.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=np.float64)
    return _Source("sunspots", {"train": (None, series)}, "forecast", True, [], ["SUNACTIVITY"])


def _load_co2() -> _Source:
    module = _require("statsmodels.datasets.co2", "statsmodels", "co2")
    weekly = module.load_pandas().data["co2"]
    # Weekly readings with gaps: monthly means ("MS": month start), then linear interpolation
    # for the five months without any reading, so every window is complete.
    monthly = weekly.resample("MS").mean().interpolate(method="linear", limit_direction="both")
    return _Source(
        "co2", {"train": (None, monthly.to_numpy(dtype=np.float64))}, "forecast", True, [], ["co2"]
    )


DATASETS = Registry("dataset")
DATASETS.add(
    "digits", _load_digits, doc="scikit-learn 8×8 digits: 1797 images (1, 8, 8), 10 classes"
)
DATASETS.add(
    "iris",
    lambda: _sklearn_table("iris", "load_iris", "classification"),
    doc="scikit-learn iris: 150 rows, 4 features, 3 classes",
)
DATASETS.add(
    "wine",
    lambda: _sklearn_table("wine", "load_wine", "classification"),
    doc="scikit-learn wine: 178 rows, 13 features, 3 classes",
)
DATASETS.add(
    "breast_cancer",
    lambda: _sklearn_table("breast_cancer", "load_breast_cancer", "classification"),
    doc="scikit-learn breast cancer: 569 rows, 30 features, 2 classes",
)
DATASETS.add(
    "diabetes",
    _load_diabetes,
    doc="scikit-learn diabetes, raw values: 442 rows, 10 features, 1 regression target",
)
DATASETS.add(
    "sunspots",
    _load_sunspots,
    aliases=["sunspot"],
    doc="statsmodels yearly sunspot activity 1700-2008: 309 values, forecast",
)
DATASETS.add(
    "co2", _load_co2, doc="statsmodels Mauna Loa CO2, monthly means 1958-2001: 526 values, forecast"
)


def names() -> list[str]:
    """The built-in data set names.

    Example:
        >>> "iris" in names()
        True
    """
    return DATASETS.names()


def _to_numpy(value: Any, what: str, source: str) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise DataError(
            f"{source}: {what} is not an array ({type(value).__name__}): {err}"
        ) from err


def _pair(value: Any, source: str, where: str) -> tuple[np.ndarray | None, np.ndarray]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise DataError(f"{source}: {where} must be a pair (X, y), got {type(value).__name__}")
    y = _to_numpy(value[1], f"{where} y", source)
    if y is None:
        raise DataError(f"{source}: {where} has no targets y")
    return _to_numpy(value[0], f"{where} X", source), y


_INPUT_KEYS = ("X", "x", "inputs")
_TARGET_KEYS = ("y", "targets")


def _pair_from_mapping(found: Mapping[str, Any], source: str, task: str | None) -> tuple[Any, Any]:
    """``(X, y)`` from a mapping with keys X/x/inputs and y/targets (X optional for forecasts)."""
    x_key = next((k for k in _INPUT_KEYS if k in found), None)
    y_key = next((k for k in _TARGET_KEYS if k in found), None)
    if y_key is None or (x_key is None and task != "forecast"):
        raise DataError(
            f"{source}: needs arrays 'X' and 'y' (or 'x'/'y', 'inputs'/'targets'); "
            f"found: {', '.join(map(str, found)) or 'nothing'}"
        )
    return (found[x_key] if x_key else None), found[y_key]


def _read_npz(path: Path, task: str | None) -> _Source:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as err:  # a bad zip, object arrays (pickles are refused), a truncated file
        raise DataError(
            f"{path.name}: cannot read as .npz of plain arrays ({first_line(err)}); "
            "save it with numpy.savez(path, X=..., y=...)"
        ) from err
    x, y = _pair_from_mapping(arrays, path.name, task)
    return _Source(path.name, {"train": (x, y)}, _infer_task(y))


def _read_pt(path: Path, task: str | None) -> _Source:
    from traincraft.checkpoint import CheckpointError, torch_load_safely

    try:
        obj = torch_load_safely(path)
    except CheckpointError as err:
        raise DataError(f"{err}; save a dict {{'X': tensor, 'y': tensor}} or a tuple (X, y) of tensors") from None
    if isinstance(obj, Mapping):
        pair = _pair_from_mapping(obj, path.name, task)
    else:
        pair = obj
    x, y = _pair(pair, path.name, "the saved object")
    return _Source(path.name, {"train": (x, y)}, _infer_task(y))


def _call_function(spec: str) -> _Source:
    func = import_object(spec, kind="dataset function")
    if not callable(func):
        raise DataError(f"dataset {spec!r} is not a function but {type(func).__name__}")
    return _source_of_result(spec, func())


def _source_of_result(spec: str, result: Any) -> _Source:
    """What a recipe's dataset function returned: ``(X, y)`` or ``{"train": (X, y), ...}``."""
    if isinstance(result, Mapping):
        unknown = [k for k in result if k not in SPLITS]
        if unknown or "train" not in result:
            bad = (
                f"unknown key {unknown[0]!r}{did_you_mean(unknown[0], SPLITS)}"
                if unknown
                else "no 'train' key"
            )
            raise DataError(f"dataset {spec!r} returned a dict with {bad}; keys: train, val, test")
        parts = {k: _pair(result[k], spec, f"split {k!r}") for k in SPLITS if k in result}
    else:
        parts = {"train": _pair(result, spec, "the returned value")}
    return _Source(spec, parts, _infer_task(parts["train"][1]))


def _infer_task(y: np.ndarray) -> str:
    """Files and functions: regression unless the targets are text (then classification)."""
    return "regression" if _is_numeric(y) else "classification"


def _is_numeric(a: np.ndarray) -> bool:
    return a.dtype.kind in "biuf"


# --- CSV ------------------------------------------------------------------------------------


@dataclass
class _Table:
    """A CSV file as text columns; ``lines[i]`` is the file line of data row ``i + 1``."""

    file: str
    header: list[str]
    columns: dict[str, list[str]]
    lines: list[int]

    def where(self, row: int) -> str:
        """``row`` is 0-based here; messages count data rows from 1, the header excluded."""
        return f"data row {row + 1} (file line {self.lines[row]})"


def _read_table(path: Path) -> _Table:
    try:
        return _read_rows(path)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path.name}: not UTF-8 text ({first_line(err)}); save the file as UTF-8 CSV"
        ) from err
    except csv.Error as err:
        raise DataError(f"{path.name}: not a readable CSV file ({first_line(err)})") from err


def _read_rows(path: Path) -> _Table:
    # utf-8-sig drops the byte-order mark that spreadsheet programs put before the header.
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        if not header or not any(header):
            raise DataError(f"{path.name}: no header row; the first line must name the columns")
        duplicates = sorted({h for h in header if header.count(h) > 1})
        if duplicates:
            raise DataError(f"{path.name}: column names appear twice: {', '.join(duplicates)}")
        rows, lines = [], []
        for row in reader:
            if not row:  # a blank line, not a row of empty values
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path.name}: file line {reader.line_num} has {len(row)} fields, "
                    f"the header has {len(header)}"
                )
            rows.append(row)
            lines.append(reader.line_num)
    if not rows:
        raise DataError(f"{path.name}: the header is there but no data rows follow it")
    columns = {name: [row[i] for row in rows] for i, name in enumerate(header)}
    return _Table(path.name, header, columns, lines)


def _parse_column(table: _Table, name: str) -> np.ndarray | int:
    """Float64 values of a column, or the 0-based row of its first bad value."""
    values = table.columns[name]
    try:  # fast path: numpy parses the whole column at once
        out = np.asarray(values).astype(np.float64)
        if np.isfinite(out).all():
            return out
    except ValueError:
        pass
    for row, text in enumerate(values):
        try:
            if not math.isfinite(float(text)):
                return row
        except ValueError:
            return row
    raise AssertionError("unreachable: a bad value was seen but not found")  # pragma: no cover


def _bad_value(table: _Table, name: str, row: int, role: str) -> DataError:
    text = table.columns[name][row]
    problem = "is empty" if not text.strip() else f"{text.strip()!r} is not a finite number"
    return DataError(
        f"{table.file}: {role} column {name!r}, {table.where(row)}: the value {problem}"
    )


def _numeric_column(table: _Table, name: str, role: str) -> np.ndarray:
    parsed = _parse_column(table, name)
    if isinstance(parsed, int):
        raise _bad_value(table, name, parsed, role)
    return parsed


def _label_column(table: _Table, name: str, task: str | None) -> tuple[np.ndarray, str]:
    """A target column as numbers when it can be, else as text labels; plus the task it implies."""
    values = table.columns[name]
    empty = next((i for i, v in enumerate(values) if not v.strip()), None)
    if empty is not None:
        raise _bad_value(table, name, empty, "target")
    parsed = _parse_column(table, name)
    if not isinstance(parsed, int):
        return parsed, task or "regression"
    if task in ("regression", "forecast"):
        raise _bad_value(table, name, parsed, "target")
    numbers = sum(_parses(v) for v in values)
    if task is None and numbers:
        # Mostly numbers with a few words is more often a typo than a set of labels: say so.
        raise DataError(
            f"{table.file}: target column {name!r} mixes numbers and text "
            f"({table.where(parsed)}: {values[parsed].strip()!r}); fix the value, or set "
            "data.task: classification to treat every value as a label"
        )
    return np.asarray([v.strip() for v in values]), "classification"


def _parses(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _columns_arg(value: str | Sequence[str] | None, key: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise DataError(f"data.{key} must be a column name or a list of names, got {value!r}")
    return list(value)


def _check_columns(table: _Table, wanted: list[str], key: str) -> None:
    for name in wanted:
        if name not in table.columns:
            raise DataError(
                f"{table.file}: data.{key} names column {name!r}, which is not in the file"
                f"{did_you_mean(name, table.header)}; columns: {', '.join(table.header)}"
            )
    duplicates = sorted({n for n in wanted if wanted.count(n) > 1})
    if duplicates:
        raise DataError(f"{table.file}: data.{key} lists {', '.join(map(repr, duplicates))} twice")


def _read_csv(
    path: Path,
    task: str | None,
    target: str | Sequence[str] | None,
    features: Sequence[str] | None,
) -> _Source:
    table = _read_table(path)
    targets = _columns_arg(target, "target")
    if not targets:
        raise DataError(
            f"{table.file}: set data.target to the column(s) to predict; "
            f"columns: {', '.join(table.header)}"
        )
    _check_columns(table, targets, "target")
    chosen = _columns_arg(features, "features")
    if chosen is None:  # forecasts use only the target history unless extra series are named
        chosen = [] if task == "forecast" else [h for h in table.header if h not in targets]
    _check_columns(table, chosen, "features")
    if not chosen and task != "forecast":
        raise DataError(
            f"{table.file}: no input columns left besides the target; set data.features"
        )
    both = [name for name in chosen if name in targets]
    if both:
        raise DataError(
            f"{table.file}: column {both[0]!r} is both a target and a feature; "
            "a target among the inputs leaks the answer"
        )
    if len(targets) == 1:
        y, task_found = _label_column(table, targets[0], task)
    elif task == "classification":
        raise DataError(
            f"{table.file}: classification takes one target column, got {', '.join(targets)}"
        )
    else:
        y = np.stack([_numeric_column(table, name, "target") for name in targets], axis=1)
        task_found = task or "regression"
    x = (
        np.stack([_numeric_column(table, name, "feature") for name in chosen], axis=1)
        if chosen
        else np.empty((len(table.lines), 0))
    )
    return _Source(table.file, {"train": (x, y)}, task_found, False, chosen, targets)


# --- choosing the source ---------------------------------------------------------------------

_READERS: dict[str, Callable[..., _Source]] = {
    ".csv": _read_csv,
    ".npz": _read_npz,
    ".pt": _read_pt,
}


def _resolve_path(text: str, base_dir: str | os.PathLike[str] | None) -> Path:
    path = Path(text).expanduser()
    relative = not path.is_absolute()
    if relative and base_dir is not None:
        path = Path(base_dir).expanduser() / path
    if not path.is_file():
        where = (
            f" (resolved against base_dir {str(base_dir)!r}: {path})"
            if relative and base_dir
            else f" (looked for {path.absolute()})"
        )
        state = "is not a file" if path.exists() else "not found"
        raise DataError(f"data file {text!r} {state}{where}")
    return path


def _load_source(
    dataset: str | os.PathLike[str],
    task: str | None,
    target: Any,
    features: Any,
    base_dir: str | os.PathLike[str] | None,
) -> _Source:
    if isinstance(dataset, Mapping):
        source = _read_image_source(dataset, base_dir)
        if target is not None or features is not None:
            raise DataError("an image data set has no columns: leave data.target and data.features out")
        return source
    text = os.fspath(dataset)
    suffix = Path(text).suffix.lower()
    if suffix in _READERS:
        path = _resolve_path(text, base_dir)
        if suffix == ".csv":
            return _read_csv(path, task, target, features)
        source = _READERS[suffix](path, task)
    elif _FUNCTION_RE.fullmatch(text):
        source = _call_function(text)
    elif text in DATASETS:
        source = DATASETS.entry(text).factory()
        source.name = DATASETS.canonical(text)
    elif suffix or "/" in text or os.sep in text:
        raise DataError(
            f"data file {text!r}: unsupported type {suffix or '(no suffix)'!r}; traincraft reads "
            ".csv, .npz and .pt files, or a function written 'package.module:function'"
        )
    else:
        err = unknown_name("dataset", text, [*DATASETS.names(), *DATASETS.aliases()])
        raise type(err)(f"{err}; or give a .csv/.npz/.pt file or 'package.module:function'")
    if target is not None or features is not None:
        raise DataError(
            f"dataset {source.name!r}: data.target and data.features choose CSV columns; "
            "this source has no columns to choose from (leave them out)"
        )
    return source


def _read_image_source(spec: Mapping[str, Any], base_dir: str | os.PathLike[str] | None) -> _Source:
    from traincraft.errors import check_keys
    from traincraft.images import ImageSpec, read_images

    check_keys("dataset", spec, ["images", "image_size", "channels", "resize", "cache", "in_memory"])
    if "images" not in spec:
        raise DataError("dataset: a dict names image files: {images: folder | {train, val, test} | list.csv, ...}")
    parts = read_images(ImageSpec(**spec), base_dir)
    name = os.fspath(spec["images"]) if not isinstance(spec["images"], Mapping) else os.fspath(spec["images"]["train"])
    return _Source(name=name, parts=dict(parts), task="classification", fixed_task=True, pixels=True)


def _prepare_user_dataset(result: Any, name: str, task: str | None, shares: dict[str, float],
                          seed: int) -> PreparedData:
    """A recipe's own Dataset(s): kept as Datasets, sized from the first sample."""
    from traincraft import user_datasets

    if task is not None and task not in ("classification", "regression"):
        raise DataError(f"dataset {name!r}: a Dataset of your own trains for classification or regression, not {task}")
    parts = user_datasets.splits_of(result, name, shares, seed)
    first = user_datasets.describe_first(parts["train"], name, task)
    n_out = first["output_size"]
    return PreparedData(
        train=parts["train"], val=parts.get("val"), test=parts.get("test"), task=first["task"],
        input_shape=first["input_shape"], output_size=n_out,
        num_classes=n_out if first["task"] == "classification" else None, feature_names=[],
        target_names=_default_names("y", 1 if first["task"] == "classification" else n_out),
        class_names=first["class_names"], scaler=Scaler("none"), target_stats=None, name=name,
    )


def _prepare_mapped(spec: Mapping[str, Any], task: str | None, shares: dict[str, float], seed: int,
                    base_dir: str | os.PathLike[str] | None, classes: Sequence[Any] | None) -> PreparedData:
    """``{inputs: x.npy, targets: y.npy}``: the inputs memory-mapped, the splits lists of rows."""
    from traincraft.errors import check_keys
    from traincraft.mapped import MappedSplit, open_inputs

    check_keys("dataset", spec, ["inputs", "targets"])
    if "targets" not in spec:
        raise DataError("dataset: a memory-mapped data set needs {inputs: x.npy, targets: y.npy}")
    inputs_path, targets_path = (_resolve_path(str(spec[k]), base_dir) for k in ("inputs", "targets"))
    inputs = open_inputs(inputs_path)
    try:
        y = np.load(targets_path)
    except (OSError, ValueError) as err:
        raise DataError(f"targets {targets_path}: not a readable .npy file ({err})") from None
    name = str(spec["inputs"])
    if len(y) != len(inputs):
        raise DataError(f"dataset {name!r}: {len(inputs)} inputs but {len(y)} targets in {targets_path}")
    if classes is not None:
        raise DataError("data.classes filters the samples of in-memory data; a memory-mapped set is used whole")
    task = task or _infer_task(y)
    class_names = None
    if task == "classification":
        codes, class_names = _encode_labels({"train": y}, None, name)
        y = codes["train"]
        targets = torch.from_numpy(y)
    else:
        targets = torch.from_numpy(_regression_targets({"train": y}, name)["train"])
    sizes = _split_sizes(len(y), {k: shares.get(k, 0.0) for k in ("val", "test")}, name)
    if sizes["val"] + sizes["test"] >= len(y):
        raise DataError(f"dataset {name!r}: the split leaves no training samples; lower data.split")
    rng = np.random.default_rng(seed)
    index = _stratified_split(y, sizes, rng) if task == "classification" else _random_split(len(y), sizes, rng)
    splits = {}
    for key in SPLITS:
        if key == "train" or sizes.get(key, 0) > 0:
            rows = np.sort(index[key]).astype(np.int64)
            splits[key] = MappedSplit(inputs, targets[torch.from_numpy(rows)], rows)
    n_out = len(class_names) if class_names is not None else int(targets[0].numel())
    return PreparedData(
        train=splits["train"], val=splits.get("val"), test=splits.get("test"), task=task,
        input_shape=tuple(inputs.shape[1:]), output_size=n_out,
        num_classes=n_out if class_names is not None else None,
        feature_names=_default_names("x", int(np.prod(inputs.shape[1:]))),
        target_names=_default_names("y", 1 if class_names is not None else n_out), class_names=class_names,
        scaler=Scaler("none"), target_stats=None, name=name,
    )


def split_size(split: Any) -> int:
    """Samples in a split: ``(X, y)`` tensors or a Dataset (0 for None)."""
    if split is None:
        return 0
    return len(split[1]) if isinstance(split, tuple) else len(split)


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def _check_task(task: str | None, source: _Source) -> str:
    if task is None:
        return source.task
    if task not in TASKS:
        raise unknown_name("task", task, TASKS)
    if source.fixed_task and task != source.task:
        raise DataError(
            f"dataset {source.name!r} is a {source.task} data set; data.task {task!r} does not "
            "fit it (leave data.task out)"
        )
    return task


def _check_shares(split: Mapping[str, Any] | None) -> dict[str, float]:
    """``{"val": v, "test": t}`` with 0 <= v, t and v + t < 1; a "train" key must agree."""
    if split is None:
        return {"val": 0.0, "test": 0.0}
    if not isinstance(split, Mapping):
        raise DataError(
            f"data.split must be a mapping like {{val: 0.15, test: 0.15}}, got {split!r}"
        )
    shares: dict[str, float] = {}
    for key, value in split.items():
        if key not in SPLITS:
            raise DataError(
                f"data.split has unknown key {key!r}{did_you_mean(str(key), SPLITS)}; "
                "keys: val, test (shares of the whole data)"
            )
        if value is None:
            value = 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise DataError(f"data.split.{key} must be a share in [0, 1), got {value!r}")
        shares[key] = float(value)
    val, test = shares.get("val", 0.0), shares.get("test", 0.0)
    if val + test >= 1:
        raise DataError(f"data.split val {val} + test {test} leaves nothing to train on")
    if "train" in shares and not math.isclose(shares["train"], 1 - val - test, abs_tol=1e-9):
        raise DataError(
            f"data.split.train {shares['train']} must equal 1 - val - test "
            f"= {1 - val - test:g} (or leave it out)"
        )
    return {"val": val, "test": test}


def _check_windows(task: str, lookback: int | None, horizon: int, name: str) -> None:
    if task != "forecast":
        if lookback is not None or horizon != 1:
            raise DataError(
                f"dataset {name!r}: data.lookback and data.horizon apply to task 'forecast', "
                f"not {task!r}; set data.task: forecast for sliding windows"
            )
        return
    if lookback is None:
        raise DataError(
            f"dataset {name!r} is a forecast: set data.lookback, the window length "
            "in time steps (e.g. data.lookback: 12)"
        )
    for key, value in (("lookback", lookback), ("horizon", horizon)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"data.{key} must be a whole number >= 1, got {value!r}")


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _split_sizes(
    n: int, shares: Mapping[str, float], name: str, unit: str = "samples"
) -> dict[str, int]:
    """``round(n * share)`` for test and val; a positive share that rounds to 0 is an error."""
    sizes = {}
    for key in ("test", "val"):
        share = shares.get(key, 0.0)
        sizes[key] = round(n * share)
        if share > 0 and sizes[key] == 0:
            raise DataError(
                f"dataset {name!r}: data.split.{key} {share} of {n} {unit} gives "
                f"0 {unit}; raise the share or set it to 0"
            )
    return sizes


def _allocate(
    quota: np.ndarray, total: int, capacity: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Integers near ``quota`` (floor or ceil), within ``capacity``, that sum to ``total``.

    Largest remainders first; ties are broken at random (seeded) so no class is always favoured.
    """
    counts = np.minimum(np.floor(quota).astype(np.int64), capacity)
    order = np.lexsort((rng.random(len(quota)), -(quota - np.floor(quota))))
    while counts.sum() < total:  # one pass unless tiny classes run out of room
        room = order[counts[order] < capacity[order]]
        take = room[: total - counts.sum()]
        counts[take] += 1
    return counts


def _random_split(
    n: int, sizes: Mapping[str, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    perm = rng.permutation(n)
    n_test, n_val = sizes["test"], sizes["val"]
    return {
        "test": perm[:n_test],
        "val": perm[n_test : n_test + n_val],
        "train": perm[n_test + n_val :],
    }


def _stratified_split(
    codes: np.ndarray, sizes: Mapping[str, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Each class gives floor or ceil of its share to test and val; totals stay exact."""
    n = len(codes)
    classes, counts = np.unique(codes, return_counts=True)
    room = counts.copy()
    taken = {}
    for key in ("test", "val"):
        taken[key] = _allocate(counts * (sizes[key] / n), sizes[key], room, rng)
        room = room - taken[key]
    out: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for i, cls in enumerate(classes):
        members = rng.permutation(np.flatnonzero(codes == cls))
        t, v = taken["test"][i], taken["val"][i]
        out["test"].append(members[:t])
        out["val"].append(members[t : t + v])
        out["train"].append(members[t + v :])
    return {key: np.concatenate(parts) for key, parts in out.items()}


def _carve(
    parts: dict[str, tuple[np.ndarray, np.ndarray]],
    shares: Mapping[str, float],
    codes: np.ndarray | None,
    seed: int,
    name: str,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Cut the missing val/test out of train; returns ``(x, y, source_index)`` per split."""
    n_whole = sum(len(y) for _, y in parts.values())
    wanted = {k: (shares[k] if k not in parts else 0.0) for k in ("val", "test")}
    sizes = _split_sizes(n_whole, wanted, name)
    x, y = parts["train"]
    if sizes["val"] + sizes["test"] >= len(y):
        raise DataError(
            f"dataset {name!r}: the split leaves no training samples ({len(y)} to "
            f"split, val {sizes['val']}, test {sizes['test']}); lower data.split"
        )
    rng = np.random.default_rng(seed)
    if codes is not None:
        index = _stratified_split(codes, sizes, rng)
    else:
        index = _random_split(len(y), sizes, rng)
    out = {}
    for key in SPLITS:
        if key in parts and key != "train":
            gx, gy = parts[key]
            out[key] = (gx, gy, np.arange(len(gy)))
        elif key == "train" or sizes[key] > 0:
            rows = np.sort(index[key])  # source order: readable, and the trainer shuffles anyway
            out[key] = (x[rows], y[rows], rows)
    return out


# --------------------------------------------------------------------------------------------
# Samples (classification, regression)
# --------------------------------------------------------------------------------------------


def _inputs(x: np.ndarray | None, n: int, name: str, key: str) -> np.ndarray:
    if x is None:
        raise DataError(f"dataset {name!r}: split {key!r} has no inputs X")
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"dataset {name!r}: inputs X of split {key!r} must be numbers, got dtype {x.dtype}"
        )
    if x.ndim < 1 or len(x) != n:
        raise DataError(
            f"dataset {name!r}: split {key!r} has X of shape {x.shape} but "
            f"{n} targets; both need one entry per sample"
        )
    x = x.astype(np.float32, copy=False)
    _check_finite(x, name, f"inputs X of split {key!r}")
    return x


def _check_finite(a: np.ndarray, name: str, what: str) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        sample = int(np.argwhere(~np.isfinite(a))[0][0])
        raise DataError(
            f"dataset {name!r}: {what} has a NaN or infinite value at sample {sample} "
            "(0-based); fill or drop it first"
        )


def _label_name(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _encode_labels(
    ys: dict[str, np.ndarray],
    given_names: list[str] | None,
    name: str,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Class indices 0..C-1 per split and the label of each index (sorted labels)."""
    flat = {}
    for key, y in ys.items():
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DataError(
                f"dataset {name!r}: classification needs one label per sample; "
                f"targets of split {key!r} have shape {y.shape}"
            )
        _check_finite(y, name, f"targets of split {key!r}")
        flat[key] = y
    if given_names is not None:  # built-ins: labels are already 0..C-1
        return {k: y.astype(np.int64) for k, y in flat.items()}, given_names
    every = np.concatenate(list(flat.values()))
    numeric = _is_numeric(every)
    keys = np.unique(every if numeric else every.astype(str))  # numbers sort as numbers
    codes = {
        k: np.searchsorted(keys, y if numeric else y.astype(str)).astype(np.int64)
        for k, y in flat.items()
    }
    return codes, [_label_name(v) for v in keys.tolist()]


def _keep_classes(
    parts: dict[str, tuple[np.ndarray, np.ndarray]], class_names: list[str], classes: Sequence[Any], name: str
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Only the samples of ``classes`` (by label), their codes renumbered in the order given."""
    wanted = [_label_name(c) for c in classes]
    if not wanted or len(set(wanted)) != len(wanted):
        raise DataError(f"dataset {name!r}: data.classes must list distinct labels, got {list(classes)!r}")
    missing = [c for c in wanted if c not in class_names]
    if missing:
        raise DataError(
            f"dataset {name!r}: data.classes {missing} not among its labels: {', '.join(class_names)}"
        )
    old_codes = np.array([class_names.index(c) for c in wanted])
    kept = {}
    for key, (x, y) in parts.items():
        mask = np.isin(y, old_codes)
        lookup = np.full(len(class_names), -1, dtype=np.int64)
        lookup[old_codes] = np.arange(len(wanted))
        kept[key] = (x[mask], lookup[y[mask]])
    return kept, wanted


def _regression_targets(ys: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    out = {}
    for key, y in ys.items():
        if not _is_numeric(y):
            raise DataError(
                f"dataset {name!r}: targets of split {key!r} are text (dtype "
                f"{y.dtype}); regression needs numbers, or set data.task: classification"
            )
        if y.ndim == 1:
            y = y[:, None]
        if y.ndim != 2:
            raise DataError(
                f"dataset {name!r}: regression targets must be (N,) or (N, k); "
                f"split {key!r} has {y.shape}"
            )
        y = y.astype(np.float32, copy=False)
        _check_finite(y, name, f"targets of split {key!r}")
        out[key] = y
    return out


def _target_stats(y_train: Tensor) -> tuple[list[float], list[float]]:
    arr = y_train.double().numpy()
    mean, std = _standard_stats(arr)
    return [float(v) for v in mean], [float(v) for v in std]


def _default_names(prefix: str, count: int) -> list[str]:
    return [prefix] if count == 1 and prefix == "y" else [f"{prefix}{i}" for i in range(count)]


def _prepare_samples(
    source: _Source, task: str, shares: dict[str, float], scaler: Scaler, seed: int,
    classes: Sequence[Any] | None = None,
) -> PreparedData:
    name = source.name
    ys = {k: y for k, (_, y) in source.parts.items()}
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    class_names = None
    if task == "classification":
        targets, class_names = _encode_labels(ys, source.class_names, name)
    else:
        targets = _regression_targets(ys, name)
    for key, (x, _) in source.parts.items():
        parts[key] = (x, targets[key]) if source.pixels else (_inputs(x, len(targets[key]), name, key), targets[key])
    if classes is not None:
        assert class_names is not None
        parts, class_names = _keep_classes(parts, class_names, classes, name)
        targets = {k: y for k, (_, y) in parts.items()}
    shapes = {key: x.shape[1:] for key, (x, _) in parts.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"dataset {name!r}: the splits' samples differ in shape: {shapes}")
    train_codes = targets["train"] if task == "classification" else None
    carved = _carve(parts, shares, train_codes, seed, name)

    normalize = None
    if source.pixels:  # uint8 as they are: converted, augmented and normalised per batch
        from traincraft.images import channel_stats

        scaler, splits = Scaler("none"), {k: _pixel_split(x, y) for k, (x, y, _) in carved.items()}
        normalize = channel_stats(carved["train"][0])
    else:
        tensors = {
            k: (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))
            for k, (x, y, _) in carved.items()
        }
        scaler.fit(tensors["train"][0])  # the training split only: val/test stay unseen
        splits = {
            k: (scaler.transform(x).to(torch.float32).contiguous(), y) for k, (x, y) in tensors.items()
        }
    input_shape = tuple(carved["train"][0].shape[1:])
    y_train = torch.from_numpy(np.ascontiguousarray(carved["train"][1]))
    n_targets = 1 if task == "classification" else y_train.shape[1]
    feature_names = source.feature_names
    if feature_names is None:
        # one name per input value in row-major order, so a CSV can feed any input shape
        feature_names = _default_names("x", math.prod(input_shape))
    return PreparedData(
        train=splits["train"],
        val=splits.get("val"),
        test=splits.get("test"),
        task=task,
        input_shape=input_shape,
        output_size=len(class_names) if class_names is not None else n_targets,
        num_classes=len(class_names) if class_names is not None else None,
        feature_names=list(feature_names),
        target_names=list(source.target_names or _default_names("y", n_targets)),
        class_names=class_names,
        scaler=scaler,
        target_stats=None if task == "classification" else _target_stats(y_train),
        name=name,
        indices={k: torch.from_numpy(rows) for k, (_, _, rows) in carved.items()},
        normalize=normalize,
    )


def _pixel_split(x: Any, y: np.ndarray) -> Any:
    """A split of uint8 images: tensors when the pixels are in memory, a
    :class:`~traincraft.mapped.MappedSplit` (batches read from the cache) when they are on disk."""
    from traincraft.mapped import MappedSplit, OnDisk

    targets = torch.from_numpy(np.ascontiguousarray(y))
    if isinstance(x, OnDisk):
        return MappedSplit(x.inputs, targets, x.rows)
    return torch.from_numpy(np.ascontiguousarray(x)), targets


# --------------------------------------------------------------------------------------------
# Forecast
# --------------------------------------------------------------------------------------------


def _series_part(
    x: np.ndarray | None, y: np.ndarray, name: str, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(targets (T, k), extra series (T, F))`` of one given segment, float64."""
    if not _is_numeric(y):
        raise DataError(
            f"dataset {name!r}: the forecast series of split {key!r} is text "
            f"(dtype {y.dtype}); forecasting needs numbers"
        )
    y = y[:, None] if y.ndim == 1 else y
    x = np.empty((len(y), 0)) if x is None else (x[:, None] if x.ndim == 1 else x)
    if y.ndim != 2 or x.ndim != 2 or len(x) != len(y) or x.dtype.kind not in "biuf":
        raise DataError(
            f"dataset {name!r}: a forecast takes the target series y (T,) or (T, k) and extra "
            f"numeric series X (T, F) of the same length; split {key!r} has X {x.shape} ({x.dtype}), "
            f"y {y.shape}"
        )
    y, x = y.astype(np.float64), x.astype(np.float64)
    _check_finite(y, name, f"the target series of split {key!r}")
    _check_finite(x, name, f"the extra series of split {key!r}")
    return y, x


def _segments(lengths: dict[str, int], shares: dict[str, float], name: str) -> dict[str, int]:
    """Lengths of the consecutive train, val, test segments (in time order).

    Missing segments are cut from the end of the train part, which precedes any given segment.
    """
    n_whole = sum(lengths.values())
    if "val" in lengths and "test" not in lengths and shares["test"] > 0:
        raise DataError(
            f"dataset {name!r}: a given 'val' segment with a test share would put "
            "test before val in time; give the 'test' segment too, or set test to 0"
        )
    wanted = {k: (shares[k] if k not in lengths else 0.0) for k in ("val", "test")}
    carved = _split_sizes(n_whole, wanted, name, unit="time steps")
    out = {"train": lengths["train"] - carved["val"] - carved["test"]}
    if out["train"] <= 0:
        raise DataError(
            f"dataset {name!r}: the split leaves no training segment ({lengths['train']}"
            f" steps to split, val {carved['val']}, test {carved['test']})"
        )
    for key in ("val", "test"):
        out[key] = lengths.get(key, carved[key])
    return out


def _window_starts(lo: int, hi: int, lookback: int, horizon: int) -> np.ndarray:
    """First-target steps t whose targets t..t+horizon-1 lie in [lo, hi) and inputs start >= 0."""
    return np.arange(max(lo, lookback), hi - horizon + 1)


def _all_window_starts(
    seg: dict[str, int], total: int, lookback: int, horizon: int, name: str
) -> dict[str, Tensor]:
    """Window start steps per segment; every asked-for segment must hold at least one window."""
    out, lo = {}, 0
    for key in SPLITS:
        hi = lo + seg[key]
        if key == "train" or hi > lo:
            starts = _window_starts(lo, hi, lookback, horizon)
            if len(starts) == 0:
                raise DataError(
                    f"dataset {name!r}: the {key} segment has {hi - lo} of {total} steps; "
                    f"lookback {lookback} + horizon {horizon} leaves no window in it; "
                    "lower data.lookback/data.horizon or change data.split"
                )
            out[key] = torch.from_numpy(starts)
        lo = hi
    return out


def _prepare_forecast(
    source: _Source, shares: dict[str, float], scaler: Scaler, lookback: int, horizon: int
) -> PreparedData:
    name = source.name
    order = [k for k in SPLITS if k in source.parts]
    pieces = {k: _series_part(*source.parts[k], name, k) for k in order}
    widths = {(y.shape[1], x.shape[1]) for y, x in pieces.values()}
    if len(widths) > 1:
        raise DataError(f"dataset {name!r}: the given segments have different numbers of series")
    target_series = np.concatenate([pieces[k][0] for k in order])
    inputs = np.concatenate([np.concatenate(pieces[k], axis=1) for k in order])  # targets first
    seg = _segments({k: len(pieces[k][0]) for k in order}, shares, name)

    starts = _all_window_starts(seg, len(inputs), lookback, horizon, name)
    train_end = seg["train"]
    scaler.fit(torch.from_numpy(inputs[:train_end]))  # the training segment only
    scaled = scaler.transform(torch.from_numpy(inputs.astype(np.float32)))
    series_y = torch.from_numpy(target_series.astype(np.float32))

    splits, indices = {}, {}
    for key, t in starts.items():
        x_idx = t[:, None] + torch.arange(-lookback, 0)  # inputs may reach into earlier segments
        y_idx = t[:, None] + torch.arange(horizon)  # targets stay inside this segment
        x_windows = scaled[x_idx].to(torch.float32).contiguous()
        y_windows = series_y[y_idx].reshape(len(t), -1).contiguous()
        splits[key], indices[key] = (x_windows, y_windows), t

    n_targets = target_series.shape[1]
    targets = source.target_names or _default_names("y", n_targets)
    extras = source.feature_names or _default_names("x", inputs.shape[1] - n_targets)
    return PreparedData(
        train=splits["train"],
        val=splits.get("val"),
        test=splits.get("test"),
        task="forecast",
        input_shape=(lookback, inputs.shape[1]),
        output_size=horizon * n_targets,
        num_classes=None,
        feature_names=[*targets, *extras],
        target_names=list(targets),
        class_names=None,
        scaler=scaler,
        target_stats=_target_stats(splits["train"][1]),
        name=name,
        indices=indices,
    )


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def prepare(
    dataset: str | os.PathLike[str],
    *,
    task: str | None = None,
    target: str | list[str] | None = None,
    features: list[str] | None = None,
    lookback: int | None = None,
    horizon: int = 1,
    split: dict[str, float] | None = None,
    scale: str | None = "standard",
    seed: int = 0,
    base_dir: str | os.PathLike[str] | None = None,
    classes: Sequence[Any] | None = None,
    args: Mapping[str, Any] | None = None,
) -> PreparedData:
    """Load, split, scale (and window) a data set into tensors.

    Args:
        dataset: a built-in name (:func:`names`), a ``.csv``/``.npz``/``.pt`` file, or
            ``"package.module:function"`` returning ``(X, y)`` or ``{"train": (X, y), ...}``.
        task: ``"classification"``, ``"regression"`` or ``"forecast"``. None: a built-in's own
            task; for other sources regression unless the targets are text.
        target: CSV target column(s); forecast: the series to predict.
        features: CSV input columns (default: every other column); forecast: extra input series
            (default: none).
        lookback: forecast window length in steps (required for forecasts).
        horizon: forecast steps predicted; each sample has ``horizon * n_targets`` outputs.
        split: shares of the whole data, e.g. ``{"val": 0.15, "test": 0.15}``; 0 or missing:
            no such split.
        scale: ``"standard"``, ``"minmax"`` or ``"none"``: input scaling fitted on train only.
        seed: seed of the split.
        base_dir: relative file paths resolve against it (the recipe's folder).
        classes: classification: keep only the samples of these classes (labels as the data
            names them, e.g. ``[5, 6, 7, 8, 9]``), numbered 0..k-1 in the order given.
        args: keyword arguments of a ``"package.module:Name"`` dataset (a function or a Dataset
            class). A name that gives a torch ``Dataset`` keeps it (:mod:`traincraft.user_datasets`):
            the splits are Datasets, not tensors.

    Returns:
        The splits as tensors with their metadata.

    Raises:
        DataError: missing files or columns, bad values, impossible splits or windows.
        UnknownNameError: an unknown data set, task or scaler name.
        TraincraftError: scikit-learn/statsmodels missing for a built-in.

    Example:
        >>> data = prepare("sunspots", lookback=9, split={"val": 0.15, "test": 0.15})
        >>> data.input_shape, data.output_size
        ((9, 1), 1)
    """
    scaler = Scaler(scale)  # validate the cheap arguments before loading anything
    shares = _check_shares(split)
    if task is not None and task not in TASKS:
        raise unknown_name("task", task, TASKS)
    if isinstance(dataset, str) and _FUNCTION_RE.fullmatch(dataset):
        from traincraft import user_datasets

        result = user_datasets.call(import_object(dataset, kind="dataset"), dataset, args)
        if user_datasets.is_dataset_result(result):
            return _prepare_user_dataset(result, dataset, task, shares, seed)
        source = _source_of_result(dataset, result)
        if target is not None or features is not None:
            raise DataError(f"dataset {dataset!r}: data.target and data.features choose CSV columns; "
                            "this source has no columns to choose from (leave them out)")
    elif args:
        raise DataError(f"data.args go to a dataset named 'package.module:Name', not to {dataset!r}")
    elif isinstance(dataset, Mapping) and "inputs" in dataset:
        if scaler.kind != "none":
            raise DataError("a memory-mapped data set is used as stored: set data.scale: none (scale the "
                            "arrays before saving them)")
        return _prepare_mapped(dataset, task, shares, seed, base_dir, classes)
    else:
        source = _load_source(dataset, task, target, features, base_dir)
    notes = [] if task is not None else _labels_read_as_numbers(source)
    task = _check_task(task, source)
    _check_windows(task, lookback, horizon, source.name)
    if classes is not None and task != "classification":
        raise DataError(f"dataset {source.name!r}: data.classes needs a classification task, not {task}")
    if task == "forecast":
        assert lookback is not None  # checked above
        prepared = _prepare_forecast(source, shares, scaler, lookback, horizon)
    else:
        prepared = _prepare_samples(source, task, shares, scaler, seed, classes)
    prepared.notes = notes
    return prepared


#: At most this many distinct whole-number targets look like class labels rather than values.
LABEL_LIKE = 20


def _labels_read_as_numbers(source: _Source) -> list[str]:
    """A warning when a source inferred as regression has targets that look like class labels
    (a few distinct whole numbers): the task was not given, and a guess must be said."""
    if source.fixed_task or source.task != "regression":
        return []
    y = source.parts["train"][1]
    if y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1) or not _is_numeric(y) or not len(y):
        return []
    values = np.unique(y)
    if len(values) > LABEL_LIKE or len(values) < 2 or not np.all(np.mod(values, 1) == 0):
        return []
    shown = ", ".join(str(int(v)) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    return [f"warning: {source.name}: the target holds {len(values)} distinct whole numbers ({shown}), read "
            "as regression values; if they are class labels, set data.task: classification"]
