"""A recipe's own ``Dataset``: ``dataset: "mypkg.data:Faces"`` with ``data.args``.

The name is a ``Dataset`` class, or a function returning one (or ``{"train": ..., "val": ...,
"test": ...}`` of them). It is called with ``data.args`` as keyword arguments; one that takes a
``split`` argument is called for ``"train"``, ``"val"`` and ``"test"`` and may return None for a
split it has not. Missing validation and test splits are carved out of train by ``data.split``
(seeded). Samples are ``(inputs, target)`` pairs or dicts (the target under ``labels``), loaded in
the trainer's seeded order by ``data.num_workers`` worker processes.

The model is sized from the first sample: its inputs' shape, and for classification the number
of classes, from the Dataset's ``classes`` (a list, as torchvision's have) or ``num_classes``,
else from its ``targets``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from traincraft.errors import DataError

SPLITS = ("train", "val", "test")


def is_dataset_result(result: Any) -> bool:
    """Whether what a recipe's function returned is a Dataset (or a dict of them)."""
    if isinstance(result, Dataset):
        return True
    return isinstance(result, Mapping) and any(isinstance(v, Dataset) for v in result.values())


def call(obj: Any, name: str, args: Mapping[str, Any] | None) -> Any:
    """``obj(**args)``, per split when it takes ``split``; errors name the recipe's dataset."""
    args = dict(args or {})
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        params = {}
    try:
        if "split" in params:
            made = {split: obj(split=split, **args) for split in SPLITS}
            return {k: v for k, v in made.items() if v is not None}
        return obj(**args)
    except TypeError as err:
        raise DataError(f"dataset {name!r} with data.args {args}: {err}") from None


def splits_of(result: Any, name: str, shares: Mapping[str, float], seed: int) -> dict[str, Dataset]:
    """The train/val/test Datasets: as given, the missing ones carved out of train (seeded)."""
    parts = dict(result) if isinstance(result, Mapping) else {"train": result}
    unknown = [k for k in parts if k not in SPLITS]
    if unknown or "train" not in parts:
        raise DataError(f"dataset {name!r}: give a train Dataset (and val, test); got keys {sorted(parts)}")
    for key, part in parts.items():
        if not isinstance(part, Dataset) or not hasattr(part, "__len__"):
            raise DataError(f"dataset {name!r}: split {key!r} is {type(part).__name__}, not a map-style Dataset")
        if len(part) == 0:
            raise DataError(f"dataset {name!r}: split {key!r} is empty")
    train = parts["train"]
    missing = {k: shares.get(k, 0.0) for k in ("val", "test") if k not in parts and shares.get(k, 0.0) > 0}
    if missing:
        n = len(train)
        order = np.random.default_rng(seed).permutation(n)
        sizes = {k: round(n * share) for k, share in missing.items()}
        if sum(sizes.values()) >= n or 0 in sizes.values():
            raise DataError(f"dataset {name!r}: data.split {dict(missing)} of {n} samples leaves a split or train empty")
        start = 0
        for key, size in sizes.items():
            parts[key] = Subset(train, np.sort(order[start:start + size]).tolist())
            start += size
        parts["train"] = Subset(train, np.sort(order[start:]).tolist())
    return parts


def describe_first(train: Dataset, name: str, task: str | None, target_key: str = "labels") -> dict[str, Any]:
    """What a model needs from the first sample: input shape, task, outputs, class names."""
    from traincraft.data import first_tensor, split_batch

    sample = train[0]
    inputs, target = split_batch(sample, target_key)
    tensor = first_tensor(_as_tensors(inputs))
    if tensor is None:
        raise DataError(f"dataset {name!r}: the first sample's inputs hold no tensor or array")
    target_t = torch.as_tensor(np.asarray(target)) if target is not None else None
    if task is None:
        task = "classification" if target_t is not None and not target_t.is_floating_point() else "regression"
    out: dict[str, Any] = {"input_shape": tuple(tensor.shape), "task": task, "class_names": None}
    if task == "classification":
        base = train.dataset if isinstance(train, Subset) else train
        classes = getattr(base, "classes", None)
        count = len(classes) if classes is not None else getattr(base, "num_classes", None)
        if count is None and getattr(base, "targets", None) is not None:
            count = int(torch.as_tensor(np.asarray(base.targets)).max()) + 1
        if count is None:
            raise DataError(
                f"dataset {name!r}: classification needs the number of classes: give the Dataset a "
                "`classes` list (as torchvision's have), `num_classes`, or a `targets` list"
            )
        out["class_names"] = [str(c) for c in classes] if classes is not None else [str(i) for i in range(count)]
        out["output_size"] = int(count)
    else:
        out["output_size"] = int(target_t.numel()) if target_t is not None else 1
    return out


def _as_tensors(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _as_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return tuple(_as_tensors(v) for v in obj)
    return obj if isinstance(obj, torch.Tensor) else torch.as_tensor(np.asarray(obj))
