"""``traincraft predict``: a CSV of inputs or a ``.npy``/``.npz`` array (the run's scaling applied),
or a folder of images (decoded as the run's were) in, a CSV of predictions out.

Every row of the output says which input it is: ``path`` for images; else ``id`` when the CSV
input has an ``id`` column (passed through as written), otherwise ``row``, the input's row number
counted from 0 (the first data row of a CSV, the first sample of an array). A forecast's row is
the last input row of its window. Figures keep float32's full precision (9 significant digits;
float64 outputs: 17), so that what is written reads back as the value the model gave.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch

from traincraft.errors import DataError, did_you_mean
from traincraft.files import atomic_write_text


def read_columns(path: Path, names: list[str]) -> torch.Tensor:
    """The named columns of a CSV file as a float tensor (rows × columns), with clear errors."""
    if not path.is_file():
        raise DataError(f"input file {path} not found")
    try:
        return _read_columns(path, names)
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}): save the CSV as UTF-8") from None


def _read_columns(path: Path, names: list[str]) -> torch.Tensor:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [n for n in names if n not in header]
        if missing:
            hint = did_you_mean(missing[0], header)
            raise DataError(f"{path}: column {missing[0]!r} is missing{hint}; the model needs {', '.join(names)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            values = []
            for name in names:
                try:
                    value = float(row[name])
                except (TypeError, ValueError):
                    raise DataError(f"{path}, line {line}, column {name!r}: {row[name]!r} is not a number") from None
                if value != value:
                    raise DataError(f"{path}, line {line}, column {name!r}: missing value (NaN)")
                if value in (float("inf"), float("-inf")):
                    raise DataError(f"{path}, line {line}, column {name!r}: {row[name]!r} is not a finite number")
                values.append(value)
            rows.append(values)
    if not rows:
        raise DataError(f"{path}: no data rows")
    return torch.tensor(rows, dtype=torch.float32)


def predict_file(trainer: Any, info: dict[str, Any], recipe: Any, source: Path, target: Path | None) -> int:
    """Predict ``source`` into the CSV ``target`` (None: stdout): a ``.npy``/``.npz`` array of
    inputs; for a run on images, a folder of them (searched recursively) or one image file; else
    a CSV; returns rows written."""
    if source.suffix.lower() in (".npy", ".npz"):
        return predict_rows(trainer, info, read_array(source, info), target)
    dataset = recipe.data.dataset
    if isinstance(dataset, dict) and "images" in dataset:
        return predict_images(trainer, info, dataset, source, target)
    return predict_csv(trainer, info, recipe, source, target)


def read_array(path: Path, info: dict[str, Any]) -> torch.Tensor:
    """The inputs held by a ``.npy`` file, or by a ``.npz`` under ``X``/``x``/``inputs``: one
    row per sample, shaped as the run's inputs (or flat), or for a forecast the series (time,
    series)."""
    import numpy as np

    if not path.is_file():
        raise DataError(f"input file {path} not found")
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as archive:
                key = next((k for k in ("X", "x", "inputs") if k in archive.files), None)
                if key is None:
                    raise DataError(f"{path}: holds no array X (or x, inputs); found: {', '.join(archive.files) or 'nothing'}")
                array = archive[key]
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable {path.suffix} file of plain arrays ({err})") from None
    if array.dtype.kind not in "biuf" or array.ndim < 1:
        raise DataError(f"{path}: need a numeric array, got {array.dtype} {array.shape}")
    if array.dtype != np.uint8:  # as the training data was read (pixels stay bytes)
        array = array.astype(np.float32)
    shape = tuple(info["input_shape"])
    if info["task"] == "forecast":
        array = array.reshape(len(array), -1) if array.ndim != 2 else array
        if array.shape[1] != len(info["feature_names"]):
            raise DataError(f"{path}: a forecast reads the series (time, {len(info['feature_names'])}); "
                            f"got {tuple(array.shape)}")
        return torch.from_numpy(np.ascontiguousarray(array))
    if tuple(array.shape[1:]) != shape and (array.ndim < 2 or int(np.prod(array.shape[1:])) != int(np.prod(shape))):
        raise DataError(f"{path}: inputs of shape {tuple(array.shape)}; the model takes (samples, "
                        f"{', '.join(map(str, shape))})")
    return torch.from_numpy(np.ascontiguousarray(array)).reshape(len(array), *shape)


def predict_images(trainer: Any, info: dict[str, Any], dataset: dict[str, Any], source: Path,
                   target: Path | None) -> int:
    """One row per image file of ``source``: its path, the predicted class and each class's
    probability. Images are decoded at the run's size and channels and normalised as in training."""
    import numpy as np

    from traincraft.images import SUFFIXES, ImageSpec, decode

    if not source.exists():
        raise DataError(f"input {source} not found")
    files = [source] if source.is_file() else sorted(
        p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise DataError(f"input folder {source} holds no image ({', '.join(SUFFIXES[:4])}, ...)")
    spec = ImageSpec(**{k: v for k, v in dataset.items() if k in ("images", "image_size", "channels", "resize")})
    pixels = torch.from_numpy(np.stack([decode(f, spec) for f in files]))
    probs = trainer.predict(pixels).softmax(dim=1)
    names = info.get("class_names") or [str(i) for i in range(probs.shape[1])]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "prediction", *[f"prob_{n}" for n in names]])
    text = figure_text(probs)
    for file, label, row in zip(files, probs.argmax(dim=1).tolist(), probs.tolist()):
        writer.writerow([str(file), names[label], *map(text, row)])
    write_output(target, buffer.getvalue())
    return len(files)


def labelled_images(recipe: Any, info: dict[str, Any], folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A new labelled folder of images (one subfolder per class, named as the run's classes) as
    ``(pixels, class indices)``, decoded as the run's images were, for ``evaluate``."""
    import numpy as np

    from traincraft.images import ImageSpec, read_images

    dataset = recipe.data.dataset
    if not (isinstance(dataset, dict) and "images" in dataset):
        raise DataError("evaluate --data reads a folder of images, for a run trained on images; this run's "
                        "data is not images: evaluate its splits with --split")
    spec = ImageSpec(**{**{k: v for k, v in dataset.items() if k != "images"}, "images": str(folder)})
    pixels, labels = read_images(spec, min_classes=1)["train"]  # one class is a fine test set
    names = list(info.get("class_names") or [])
    unknown = sorted(set(labels.tolist()) - set(names))
    if unknown:
        raise DataError(f"{folder}: class folders {', '.join(unknown)} are not classes of the run ({', '.join(names)})")
    codes = torch.tensor([names.index(label) for label in labels.tolist()])
    return torch.from_numpy(np.ascontiguousarray(pixels)), codes


def labelled_data(recipe: Any, info: dict[str, Any], path: Path) -> tuple[Any, torch.Tensor]:
    """New labelled data for ``evaluate --data``: a folder of images for a run on images, else a
    file read as the run's data was (a CSV with its feature and target columns, ``.npz``,
    ``.pt``), scaled with the run's scaler and labelled with the run's classes."""
    dataset = recipe.data.dataset
    if isinstance(dataset, dict) and "images" in dataset:
        return labelled_images(recipe, info, path)
    import numpy as np

    from traincraft.datasets import Scaler, _label_name, _load_source

    if info["task"] == "forecast":
        raise DataError("evaluate --data takes samples, not series: a forecast run is evaluated on its splits")
    if not path.is_file():
        raise DataError(f"evaluate --data {path}: not found")
    d = recipe.data
    target, features = d.target, d.features
    if path.suffix.lower() == ".csv":
        features = list(info["feature_names"])  # the run's inputs, by name
        if target is None:  # a built-in's data: the one column that is not an input
            with path.open(encoding="utf-8", newline="") as handle:
                header = next(csv.reader(handle), [])
            extra = [c for c in header if c not in features]
            if len(extra) != 1:
                raise DataError(f"{path}: give the run's input columns and one target column; the columns "
                                f"besides the inputs are {extra or 'none'}")
            target = extra[0]
    source = _load_source(str(path), info["task"], target, features, None)
    x, y = source.parts["train"]
    if x is None:
        raise DataError(f"{path}: holds no inputs")
    inputs = Scaler.from_dict(info["scaler"]).transform(torch.from_numpy(np.asarray(x, dtype=np.float32)))
    inputs = inputs.reshape(len(inputs), *info["input_shape"])
    if info["task"] == "classification":
        names = list(info.get("class_names") or [])
        labels = [_label_name(v) for v in np.asarray(y).reshape(len(y)).tolist()]
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise DataError(f"{path}: labels {', '.join(unknown[:5])} are not classes of the run ({', '.join(names)})")
        return inputs, torch.tensor([names.index(label) for label in labels])
    return inputs, torch.from_numpy(np.asarray(y, dtype=np.float32).reshape(len(y), -1))


def predict_csv(trainer: Any, info: dict[str, Any], recipe: Any, source: Path, target: Path | None) -> int:
    """Predict every row (or, for forecasts, every window) of ``source``; returns rows written.
    An ``id`` column of ``source`` is passed through to the output."""
    raw = read_columns(source, list(info["feature_names"]))
    if info["task"] != "forecast":
        raw = raw.reshape(len(raw), *info["input_shape"])
    return predict_rows(trainer, info, raw, target, source=source, ids=read_ids(source))


def read_ids(path: Path) -> list[str] | None:
    """The ``id`` column of a CSV file, as written; None when it has none."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if ID not in (reader.fieldnames or []):
            return None
        return [row[ID] for row in reader]


#: The column of the input passed through to the predictions, when the input has it.
ID = "id"


def predict_rows(trainer: Any, info: dict[str, Any], raw: torch.Tensor, target: Path | None, *,
                 source: Any = "input", ids: list[str] | None = None) -> int:
    """Predict each sample of ``raw`` (unscaled inputs; a forecast: the series, every window of
    ``lookback`` rows) into the CSV ``target`` (None: stdout), each row led by its ``id`` (from
    ``ids``, one per input row) or its ``row`` number; returns rows written."""
    from traincraft.datasets import Scaler

    scaler = Scaler.from_dict(info["scaler"])
    task, shape = info["task"], tuple(info["input_shape"])
    first = 0  # the input row of the first prediction's window end
    if task == "forecast":
        series = scaler.transform(raw)
        lookback = shape[0]
        if len(series) < lookback:
            raise DataError(f"{source}: {len(series)} rows, but a forecast needs at least lookback={lookback}")
        inputs = series.unfold(0, lookback, 1).transpose(1, 2).contiguous()
        first = lookback - 1
    else:
        pixels = raw.dtype == torch.uint8 and scaler.kind == "none"  # images: normalised per batch
        inputs = raw if pixels else scaler.transform(raw)
    outputs = trainer.predict(inputs)
    keys = [ids[first + i] for i in range(len(outputs))] if ids is not None else \
        [str(first + i) for i in range(len(outputs))]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    key = ID if ids is not None else "row"
    if task == "classification":
        names = info.get("class_names") or [str(i) for i in range(outputs.shape[1])]
        probs = outputs.softmax(dim=1)
        text = figure_text(probs)
        writer.writerow([key, "prediction", *[f"prob_{n}" for n in names]])
        for name, label, row in zip(keys, probs.argmax(dim=1).tolist(), probs.tolist()):
            writer.writerow([name, names[label], *map(text, row)])
    else:
        outputs = outputs.reshape(len(outputs), -1)
        text = figure_text(outputs)
        writer.writerow([key, *_output_columns(info, outputs.shape[1])])
        for name, row in zip(keys, outputs.tolist()):
            writer.writerow([name, *map(text, row)])
    write_output(target, buffer.getvalue())
    return len(outputs)


def figure_text(values: torch.Tensor) -> Any:
    """How to write the figures of ``values`` so that they read back as they were: 9 significant
    digits for float32 (and narrower), 17 for float64."""
    digits = 17 if values.dtype == torch.float64 else 9
    return lambda value: f"{value:.{digits}g}"


def write_output(target: Path | None, text: str) -> None:
    """The CSV into ``target`` (atomically), or onto stdout when ``target`` is None."""
    if target is None:
        import sys

        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(target, text)


def _output_columns(info: dict[str, Any], width: int) -> list[str]:
    names = list(info.get("target_names") or [])
    if len(names) == width:
        return names
    if names and width % len(names) == 0:
        steps = width // len(names)
        return [f"{n}_t+{h + 1}" for h in range(steps) for n in names]
    return [f"output_{i}" for i in range(width)]
