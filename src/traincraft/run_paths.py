"""Where the relative paths of a run folder's recipe resolve, so that a run folder that moved
still finds its data, or says where it looked.

A recipe's relative paths (``data.dataset: data/train.csv``, an image folder) resolve against
the folder of the recipe file. A run folder's ``recipe.yaml`` records that folder in its first
line, twice::

    _base_dir: {from_run: ../../.., recorded: /home/me/project}

``from_run`` is relative to the run folder, ``recorded`` is where it was when the run started.
Read back, the places tried are, in order: ``from_run`` (the project moved, runs and data
together), ``recorded`` (the run folder alone moved), and the run folder itself (data carried
inside it). The first that holds every relative path the recipe's data names is taken. An older
run folder's ``_base_dir: /abs/path`` is read as ``recorded``.

Nothing here imports the recipe machinery: :func:`traincraft.recipe.read_raw` calls
:func:`run_base_dir` for a run folder's recipe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: File suffixes that a ``data.dataset`` string names a file by (else: a built-in or a function).
DATA_SUFFIXES = (".csv", ".npz", ".pt", ".npy")


def base_dir_line(base: str | os.PathLike[str], run_dir: str | os.PathLike[str]) -> str:
    """The first line of a run folder's ``recipe.yaml``: where its relative paths resolve."""
    recorded = Path(base).resolve()
    entry = {"recorded": str(recorded)}
    try:
        entry = {"from_run": Path(os.path.relpath(recorded, Path(run_dir).resolve())).as_posix(), **entry}
    except ValueError:  # another drive
        pass
    inner = ", ".join(f"{key}: {json.dumps(value)}" for key, value in entry.items())
    return f"_base_dir: {{{inner}}}  # where relative paths resolve: from this folder, else where they were\n"


def places(run_dir: str | os.PathLike[str], entry: Any) -> list[Path]:
    """The folders tried for a run folder's relative paths, in order, without repeats."""
    run_dir = Path(run_dir)
    if isinstance(entry, Mapping):
        found = [run_dir / str(entry["from_run"]) if entry.get("from_run") is not None else None,
                 Path(str(entry["recorded"])) if entry.get("recorded") is not None else None]
    else:  # an older run folder: the absolute folder alone
        found = [Path(str(entry))] if entry else []
    found.append(run_dir)
    unique: list[Path] = []
    for place in found:
        if place is None:
            continue
        place = Path(os.path.normpath(place.absolute()))
        if place not in unique:
            unique.append(place)
    return unique


def data_paths(dataset: Any) -> list[str]:
    """The relative file and folder paths that a recipe's ``data.dataset`` names."""
    named: list[str] = []
    if isinstance(dataset, str):
        if dataset.lower().endswith(DATA_SUFFIXES) or "/" in dataset or os.sep in dataset:
            named.append(dataset)
    elif isinstance(dataset, Mapping):
        for key in ("images", "inputs", "targets"):
            value = dataset.get(key)
            if isinstance(value, Mapping):
                named.extend(str(v) for v in value.values() if isinstance(v, (str, os.PathLike)))
            elif isinstance(value, (str, os.PathLike)):
                named.append(str(value))
    return [p for p in named if not Path(p).expanduser().is_absolute()]


def _dataset(raw: Mapping[str, Any]) -> Any:
    data = raw.get("data")
    return data.get("dataset") if isinstance(data, Mapping) else None


def run_base_dir(run_dir: str | os.PathLike[str], entry: Any, raw: Mapping[str, Any]) -> str:
    """The folder that a run folder's relative paths resolve against (see the module's text):
    the first place that holds every relative path of ``raw``'s data, else the first place
    that exists, else the first place."""
    tried = places(run_dir, entry)
    needed = data_paths(_dataset(raw))
    if needed:
        for place in tried:
            if all((place / p).exists() for p in needed):
                return str(place)
    return str(next((place for place in tried if place.is_dir()), tried[0]))


def missing_data(run_dir: str | os.PathLike[str]) -> str | None:
    """When the data that a run folder's recipe names by relative paths is in none of the
    places tried: one line naming the paths and the places; else None."""
    import yaml

    from traincraft.errors import TraincraftError
    from traincraft.recipe_yaml import load_yaml

    run_dir = Path(run_dir)
    try:
        raw = load_yaml((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError, TraincraftError):
        return None  # the recipe's own loading says what is wrong
    if not isinstance(raw, dict) or "_base_dir" not in raw:
        return None
    needed = data_paths(_dataset(raw))
    tried = places(run_dir, raw["_base_dir"])
    if not needed or any(all((place / p).exists() for p in needed) for place in tried):
        return None
    return (f"{run_dir}: the run's data ({', '.join(needed)}) is not found relative to any of "
            f"{', '.join(str(p) for p in tried)}; put it (or a link to it) under one of them")
