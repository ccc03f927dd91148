"""Initial weights for fine-tuning: copy the tensors of a run folder or a weights file into a
model whose head may differ, and say in one line what was loaded and what was left alone."""

from __future__ import annotations

import fnmatch
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from traincraft.checkpoint import (
    CheckpointError,
    checkpoint_candidates,
    load_checkpoint,
    model_tensors,
    unwrap_key,
)
from traincraft.errors import did_you_mean, first_line
from traincraft.finetune.patterns import glob_hit as _glob_hit
from traincraft.finetune.patterns import listing as _listing

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")

# --------------------------------------------------------------------------------------------
# Initial weights


@dataclass
class LoadReport:
    """What :func:`load_initial_weights` did, key by key.

    Attributes:
        source: the file the tensors came from (a run folder's ``best.safetensors``, ...).
        loaded: model keys whose values were copied from the file.
        missing: model keys the file does not have (they keep their initial values).
        unexpected: file keys the model does not have (ignored).
        mismatched: ``(key, file_shape, model_shape)`` for keys in both with other shapes (a new
            head); those model tensors keep their initial values too.
        skipped: model keys matched by ``skip`` (kept their initial values on purpose).
        adapted: ``(key, file channels, model channels)`` for convolution kernels of 3-channel
            images loaded into a model for another channel count (see :func:`adapt_input_channels`).
        label: how :meth:`summary` names the operation.
        model_keys: every key of the model's state dict, in model order.

    Example:
        >>> report.summary()
        'init_from runs/x/best.safetensors: loaded 4 of 6 tensors; new (kept their initial ...'
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    adapted: list[tuple[str, int, int]] = field(default_factory=list)  # (key, file channels, model channels)
    label: str = "init_from"
    model_keys: list[str] = field(default_factory=list, repr=False)

    @property
    def total(self) -> int:
        """The number of tensors in the model's state dict."""
        return len(self.loaded) + len(self.missing) + len(self.mismatched) + len(self.skipped)

    @property
    def complete(self) -> bool:
        """True when every model tensor not skipped was loaded and the file had nothing else."""
        return not (self.missing or self.unexpected or self.mismatched)

    def left_as_built(self) -> set[str]:
        """The model keys this load did not fill (missing, of another shape, skipped): a new head."""
        return {*self.missing, *(key for key, _, _ in self.mismatched), *self.skipped}

    def summary(self) -> str:
        """One line: the tensors loaded, the new ones, those of another shape, those ignored."""
        parts = [f"{self.label} {self.source}: loaded {len(self.loaded)} of {self.total} tensors"]
        # In model order, the missing and mismatched keys together are the tensors left as built.
        left = {*self.missing, *(key for key, _, _ in self.mismatched)}
        order = self.model_keys or [*self.missing, *(key for key, _, _ in self.mismatched)]
        new = [key for key in order if key in left]
        if new:
            parts.append(f"new (kept their initial values): {_listing(new)}")
        if self.mismatched:
            shapes = [
                f"{key} {_shape(file_shape)} in file vs {_shape(model_shape)} in model"
                for key, file_shape, model_shape in self.mismatched
            ]
            parts.append(f"shape differs: {_listing(shapes)}")
        if self.adapted:
            shown = [f"{key} ({a} -> {b} input channels)" for key, a, b in self.adapted]
            parts.append(f"adapted to the images' channels: {_listing(shown)}")
        if self.skipped:
            parts.append(f"skipped (kept their initial values): {_listing(self.skipped)}")
        if self.unexpected:
            parts.append(f"unexpected (ignored): {_listing(self.unexpected)}")
        return "; ".join(parts)


def load_initial_weights(
    model: nn.Module,
    source: str | Path,
    *,
    strict: bool = False,
    skip: str | Sequence[str] = (),
    label: str = "init_from",
) -> LoadReport:
    """Copy the tensors of ``source`` whose name and shape match into ``model``, in place.

    Keys lose their ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes on both
    sides. A tensor is loaded when the model has the same key with the same shape; the model's
    other tensors keep their values (a new head), file tensors the model lacks are ignored.
    Values are copied into the existing parameters under ``torch.no_grad()``: an optimizer built
    before still points at them, and they keep the model's dtype and device.

    Args:
        model: the model to initialise.
        source: a run folder (its ``best.safetensors``, else its newest checkpoint), a
            ``.safetensors`` file, a traincraft ``.ckpt`` (its ``model`` entry), or a torch state
            dict saved as ``.pt``/``.pth``/``.bin`` (also wrapped as ``{"state_dict": ...}`` or
            ``{"model": ...}``). Loading never runs pickled code (``weights_only=True``).
        strict: raise unless every model tensor is loaded and the file has nothing else
            (keys matched by ``skip`` excepted).
        skip: globs on keys not to load (``"head.*"``): those model tensors keep their values.
        label: how messages name the operation (a recipe key, say).

    Returns:
        A :class:`LoadReport`; ``report.summary()`` is one line for the log.

    Raises:
        CheckpointError: the source does not exist or cannot be read, no tensor matches the model
            at all (whatever ``strict``: that is always a wrong file or a wrong model), or
            ``strict`` and some tensor does not match.

    Example:
        >>> model = models.build({"name": "cnn", "num_classes": 5}, input_shape=(1, 8, 8),
        ...                      output_size=5)
        >>> print(load_initial_weights(model, "runs/digits/20261121-101500").summary())
        init_from runs/digits/20261121-101500/best.safetensors: loaded 10 of 12 tensors; new ...
    """
    source, rename = _source_spec(source, label)
    path, tensors = _read_tensors(Path(source), label)
    tensors, renamed = _renamed(tensors, model, rename, label)
    skip_globs = _skip_patterns(skip, label)
    report = _match(model, tensors, f"{path}{renamed}", label, skip_globs)
    _check_skip_used(skip_globs, tensors, report, label)
    if not report.loaded:
        raise CheckpointError(_nothing_loaded(report, tensors, model))
    if strict and not report.complete:
        raise CheckpointError(f"{report.summary()} (strict: every tensor must match)")
    _copy(model, tensors, report.loaded)
    _NOT_LOADED[model] = report.left_as_built()
    return report


#: Per model, the tensors its last load of pretrained weights did not fill (a new head): a
#: freeze pattern leaves them trainable (Finetuning reads it).
_NOT_LOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def not_loaded(model: nn.Module) -> set[str]:
    """The tensors of ``model`` that its pretrained weights (init_from, a model's ``weights:``)
    left as built; empty when no weights were loaded into it."""
    return set(_NOT_LOADED.get(model, ()))


def _source_spec(source: Any, label: str) -> tuple[Any, dict[str, str] | None]:
    """``init_from`` as a path, or ``{path, prefix, map}``: the path, and the explicit renaming
    (``prefix``: stripped from the file's keys; ``map``: ``{file prefix: model prefix}``)."""
    if not isinstance(source, Mapping):
        return source, None
    unknown = set(source) - {"path", "prefix", "map"}
    if unknown or "path" not in source:
        raise CheckpointError(f"{label}: give a path, or {{path, prefix, map}}; got keys {sorted(source)}")
    rename: dict[str, str] = {}
    if source.get("prefix"):
        rename[str(source["prefix"])] = ""
    mapping = source.get("map") or {}
    if not isinstance(mapping, Mapping):
        raise CheckpointError(f"{label}.map must be {{file prefix: model prefix}}, got {mapping!r}")
    rename.update({str(k): str(v) for k, v in mapping.items()})
    return source["path"], rename


def _renamed(tensors: dict[str, torch.Tensor], model: nn.Module, rename: dict[str, str] | None,
             label: str) -> tuple[dict[str, torch.Tensor], str]:
    """The file's keys renamed: as asked (``rename``), or, when few of them match the model,
    by the one common prefix that makes the most match (a Lightning checkpoint's ``model.``,
    a backbone saved alone). Returns the tensors and a note for the report."""
    own = set(model_tensors(model))
    if rename is not None:
        out = {}
        for key, value in tensors.items():
            for old, new in rename.items():
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
            out[key] = value
        return out, f" (renamed: {', '.join(f'{o!r} -> {n!r}' for o, n in rename.items())})"
    matches = sum(key in own for key in tensors)
    if matches * 2 >= min(len(own), len(tensors)):
        return tensors, ""
    best = (matches, None, None)
    prefixes = {k.split(".", 1)[0] + "." for k in tensors if "." in k}
    for prefix in prefixes:  # the file has a prefix the model lacks
        count = sum(k[len(prefix):] in own for k in tensors if k.startswith(prefix))
        if count > best[0]:
            best = (count, prefix, "")
    for prefix in {k.split(".", 1)[0] + "." for k in own if "." in k}:  # the model has one the file lacks
        count = sum(prefix + k in own for k in tensors)
        if count > best[0]:
            best = (count, "", prefix)
    _, old, new = best
    if old is None:
        return tensors, ""
    out = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in tensors.items()}
    what = f"without {old!r}" if old else f"under {new!r}"
    return out, f" (its keys {what})"


def _read_tensors(source: Path, label: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """The file actually read, and its tensors by unwrapped key."""
    from traincraft import files

    files.wait()  # a run this process has just written is complete
    if source.is_dir():
        return _read_run_folder(source, label)
    if not source.is_file():
        raise CheckpointError(f"{label}: {source} not found (from {Path.cwd()}){_train_first(source)}")
    suffix = source.suffix.lower()
    if suffix == ".safetensors":
        raw: Any = _read_safetensors(source, label)
    elif suffix == ".ckpt":
        raw = _checkpoint_weights(source, label)
    elif suffix in _TORCH_SUFFIXES:
        raw = _unwrap_container(_torch_load(source, label))
    else:
        raise CheckpointError(
            f"{label}: {source} is not a weights file; give a run folder, a .safetensors, a "
            f".ckpt, or a torch state dict ({', '.join(_TORCH_SUFFIXES)})"
        )
    return source, _tensor_dict(raw, source, label)


def _read_run_folder(folder: Path, label: str) -> tuple[Path, dict[str, torch.Tensor]]:
    runs = _newest_run(folder)
    if runs is not None:  # runs/NAME: the newest of its runs
        folder = runs
    best = folder / "best.safetensors"
    if best.is_file():
        return best, _tensor_dict(_read_safetensors(best, label), best, label)
    candidates = checkpoint_candidates(folder)
    if not candidates:
        raise CheckpointError(
            f"{label}: {folder} holds neither best.safetensors nor a checkpoint; give a run "
            f"folder (runs/NAME/TIMESTAMP) or a weights file{_train_first(folder)}"
        )
    problems = []
    for path in candidates:  # newest first; a damaged one falls back to the next kept one
        try:
            state = _load_checkpoint(path, label)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        return path, _tensor_dict(_checkpoint_model(path, state, label), path, label)
    raise CheckpointError(f"{label}: no usable checkpoint in {folder}: {'; '.join(problems)}")


def _read_safetensors(path: Path, label: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{label}: {path} is not a readable .safetensors file ({first_line(err)})"
        ) from None


def _load_checkpoint(path: Path, label: str) -> dict[str, Any]:
    try:
        return load_checkpoint(path)
    except CheckpointError as err:  # torch's own messages run over several lines
        raise CheckpointError(f"{label}: {first_line(err)}") from None
    except Exception as err:  # garbled bytes can fail anywhere inside the unpickler
        raise CheckpointError(
            f"{label}: {path} is damaged (truncated or garbled): {first_line(err)}"
        ) from None


def _checkpoint_weights(path: Path, label: str) -> Any:
    """A traincraft checkpoint's ``model``; another library's ``.ckpt`` (a Lightning one, whose
    weights are under ``state_dict``) is read like a torch state dict."""
    try:
        return _checkpoint_model(path, _load_checkpoint(path, label), label)
    except CheckpointError as err:
        if "not a traincraft training checkpoint" not in str(err):
            raise
    return _unwrap_container(_torch_load(path, label))


def _checkpoint_model(path: Path, state: Mapping[str, Any], label: str) -> Any:
    if not isinstance(state.get("model"), Mapping):
        raise CheckpointError(f"{label}: {path} is a checkpoint without model weights")
    return state["model"]


def _torch_load(path: Path, label: str) -> Any:
    from traincraft.checkpoint import torch_load_safely

    return torch_load_safely(path, f"{label}: ")


_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "weights", "params")


def _unwrap_container(obj: Any) -> Any:
    """``{"state_dict": sd}``, ``{"model_state_dict": sd, "optimizer_state_dict": ...}`` (the
    PyTorch tutorials' format), ``{"model": sd}``, ... (nested too) -> ``sd``."""
    for _ in range(4):
        if not isinstance(obj, Mapping) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next(
            (obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None
        )
        if inner is None:
            return obj
        obj = inner
    return obj


def _tensor_dict(raw: Any, path: Path, label: str) -> dict[str, torch.Tensor]:
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"{label}: {path} holds a {type(raw).__name__}, not a state dict (names -> tensors)"
        )
    tensors = {unwrap_key(str(k)): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{label}: {path} holds no tensors")
    return tensors


def _match(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    source: str,
    label: str,
    skip: Sequence[str] = (),
) -> LoadReport:
    report = LoadReport(source=source, label=label)
    own = model_tensors(model)
    for key, target in own.items():
        if _glob_hit(key, skip):
            report.skipped.append(key)
        elif key not in tensors:
            report.missing.append(key)
        elif tuple(tensors[key].shape) != tuple(target.shape):
            adapted = adapt_input_channels(tensors[key], tuple(target.shape))
            if adapted is None:
                report.mismatched.append((key, tuple(tensors[key].shape), tuple(target.shape)))
            else:  # a first convolution for images of another channel count
                report.adapted.append((key, int(tensors[key].shape[1]), int(target.shape[1])))
                tensors[key] = adapted  # type: ignore[index]
                report.loaded.append(key)
        else:
            report.loaded.append(key)
    report.unexpected = [key for key in tensors if key not in own and not _glob_hit(key, skip)]
    report.model_keys = list(own)
    return report


def adapt_input_channels(weight: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """A convolution kernel trained on 3-channel images, for ``shape``'s channel count, as timm's
    ``adapt_input_conv`` does: one channel gets the sum over the three (a grey image is the sum
    of equal R, G and B); ``c`` channels get the three repeated and scaled by 3/c (the same
    activation for an image whose channels all equal one of RGB's). None when ``weight`` is not
    such a kernel (another difference than the input channels, or not 3 of them)."""
    if weight.ndim < 3 or len(shape) != weight.ndim or weight.shape[1] != 3 or shape[1] == 3:
        return None
    if weight.shape[0] != shape[0] or tuple(weight.shape[2:]) != tuple(shape[2:]):
        return None
    channels = shape[1]
    source = weight.float()
    if channels == 1:
        adapted = source.sum(dim=1, keepdim=True)
    else:
        repeats = -(-channels // 3)
        adapted = source.repeat(1, repeats, *([1] * (weight.ndim - 2)))[:, :channels] * (3 / channels)
    return adapted.to(weight.dtype)


def _skip_patterns(skip: Any, label: str) -> list[str]:
    if isinstance(skip, str):
        skip = [skip]
    if not isinstance(skip, Sequence) or not all(isinstance(p, str) and p for p in skip):
        raise CheckpointError(
            f"{label}: skip must be a glob or a list of globs on weight names, got {skip!r}"
        )
    return list(skip)


def _check_skip_used(
    skip: Sequence[str], tensors: Mapping[str, torch.Tensor], report: LoadReport, label: str
) -> None:
    keys = [*report.model_keys, *tensors]
    for pattern in skip:
        if not any(fnmatch.fnmatchcase(key, pattern) for key in keys):
            raise CheckpointError(
                f"{label}: skip pattern {pattern!r} matches no weight name"
                f"{did_you_mean(pattern, keys)}; names look like: "
                f"{_listing(report.model_keys, more=False)}"
            )


def _copy(model: nn.Module, tensors: Mapping[str, torch.Tensor], keys: Iterable[str]) -> None:
    own = model_tensors(model)
    with torch.no_grad():
        for key in keys:
            # copy_ keeps the target's identity, dtype and device (optimizers still point at it).
            own[key].copy_(tensors[key])


def _nothing_loaded(
    report: LoadReport, tensors: Mapping[str, torch.Tensor], model: nn.Module
) -> str:
    if report.mismatched:
        return f"{report.summary()}: no tensor could be loaded; is this the right model?"
    model_keys = list(model_tensors(model))
    return (
        f"{report.label} {report.source}: no tensor name matches the model; first file keys: "
        f"{_listing(list(tensors), more=False)}; first model keys: "
        f"{_listing(model_keys, more=False)}"
    )


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _newest_run(folder: Path) -> Path | None:
    from traincraft.runfolder import newest_run

    return newest_run(folder)


def _train_first(path: Path) -> str:
    """A hint when ``path`` names the runs of a recipe (``runs/NAME``) that has not run yet."""
    parts = path.parts
    if "runs" in parts[:-1] and parts.index("runs") == len(parts) - 2:
        return f"; train that run first: `traincraft fit` of a recipe with name: {parts[-1]} writes it"
    return ""
