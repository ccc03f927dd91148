"""Images per batch, on the device: uint8 pixels to floats, augmentation (training batches
only), normalisation.

Augmentations are kornia's (``kornia.augmentation``: batched, on any device), named in a list::

    augment: [{name: random_resized_crop, size: [28, 28], scale: [0.6, 1.0]},
              {name: horizontal_flip}, {name: color_jitter, brightness: 0.2, p: 0.5}]

Each entry's other keys are the kornia class's own arguments. The random draws come from torch's
generator, which the trainer seeds and checkpoints: a run is repeatable, and a resumed run draws
what the uninterrupted one drew.

Example:
    >>> transform = BatchTransform(augment=[{"name": "horizontal_flip"}], normalize="imagenet")
    >>> x = transform(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8), training=True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from traincraft.errors import TraincraftError, accepted_keys, check_keys
from traincraft.registry import Registry

#: name -> kornia.augmentation class name (loaded on first use: kornia takes ~1.5 s to import).
AUGMENTATIONS = {
    "random_resized_crop": "RandomResizedCrop",
    "random_crop": "RandomCrop",
    "center_crop": "CenterCrop",
    "horizontal_flip": "RandomHorizontalFlip",
    "vertical_flip": "RandomVerticalFlip",
    "rotation": "RandomRotation",
    "affine": "RandomAffine",
    "perspective": "RandomPerspective",
    "color_jitter": "ColorJitter",
    "grayscale": "RandomGrayscale",
    "gaussian_blur": "RandomGaussianBlur",
    "gaussian_noise": "RandomGaussianNoise",
    "erasing": "RandomErasing",
    "solarize": "RandomSolarize",
    "invert": "RandomInvert",
}
_NAMES = Registry("augmentation")
for _name, _cls in AUGMENTATIONS.items():
    _NAMES.add(_name, _cls, aliases=[_cls.lower()], doc=f"kornia.augmentation.{_cls}")

#: Per-channel statistics of ImageNet, in [0, 1] units (what pretrained torchvision/timm models expect).
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def names() -> list[str]:
    return _NAMES.names()


def build_augmentation(specs: Sequence[Any]) -> Any:
    """A ``kornia.augmentation.AugmentationSequential`` of the named augmentations."""
    try:
        import kornia.augmentation as K
    except ImportError:
        raise TraincraftError("data.augment needs kornia, which is not installed: pip install 'traincraft[images]'") from None
    made = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise TraincraftError(f"augment[{i}] must be a name or {{name: ..., ...}}, got {spec!r}")
        cls = getattr(K, _NAMES.entry(str(spec["name"])).factory)
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "name"}
        check_keys(f"augment[{i}] ({spec['name']})", kwargs, accepted_keys(cls))
        try:
            made.append(cls(**kwargs))
        except (TypeError, ValueError, AssertionError) as err:
            raise TraincraftError(f"augment[{i}] ({spec['name']}): {err}") from None
    return K.AugmentationSequential(*made)


def normalization(spec: Any) -> dict[str, list[float]] | None:
    """``None``, ``"imagenet"`` or ``{"mean": [...], "std": [...]}`` (per channel, [0, 1] units)."""
    if spec is None or spec == "none":
        return None
    if spec == "imagenet":
        return IMAGENET
    if isinstance(spec, Mapping) and {"mean", "std"} <= set(spec):
        mean, std = list(spec["mean"]), list(spec["std"])
        if len(mean) != len(std) or not all(s > 0 for s in std):
            raise TraincraftError(f"normalize: mean and std need one value per channel, std > 0; got {dict(spec)}")
        return {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    raise TraincraftError(f"normalize must be 'imagenet', {{mean: [...], std: [...]}} or none, got {spec!r}")


class BatchTransform:
    """What a batch of images goes through on the device before the model.

    uint8 pixels become floats in ``[0, 1]``; training batches are augmented; then each channel
    is normalised, ``(x - mean) / std``. Inputs that are not one tensor pass unchanged.
    """

    def __init__(self, augment: Sequence[Any] | None = None, normalize: Any = None):
        self.augmentation = build_augmentation(augment) if augment else None
        stats = normalization(normalize)
        self._stats = None if stats is None else (torch.tensor(stats["mean"]), torch.tensor(stats["std"]))
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, inputs: Any, training: bool) -> Any:
        if not isinstance(inputs, torch.Tensor):
            return inputs
        x = inputs.float().div_(255.0) if inputs.dtype == torch.uint8 else inputs
        if training and self.augmentation is not None:
            x = self.augmentation(x)
        if self._stats is not None:
            mean, std = self._device_stats(x)
            x = (x - mean) / std
        return x

    def _device_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        found = self._on.get(x.device)
        if found is None:
            assert self._stats is not None
            mean, std = (t.to(x.device).view(1, -1, *([1] * (x.ndim - 2))) for t in self._stats)
            if mean.shape[1] != x.shape[1]:
                raise TraincraftError(
                    f"normalize has {mean.shape[1]} channel statistics and the images {x.shape[1]} channels"
                )
            found = self._on[x.device] = (mean, std)
        return found


def build(augment: Any, normalize: Any) -> BatchTransform | None:
    """The transform the trainer's ``data={"augment", "normalize"}`` stand for (None: none)."""
    if not augment and normalization(normalize) is None:
        return None
    return BatchTransform(augment, normalize)


def previewable(split: Any) -> bool:
    """Whether :func:`preview` can draw ``split``: pixels in memory or on disk (not a Dataset)."""
    from traincraft.mapped import MappedSplit

    return isinstance(split, (tuple, MappedSplit))


def preview(transform: BatchTransform, split: Any, path: Any, *, count: int = 16, seed: int = 0) -> Any:
    """A PNG grid of ``count`` images of ``split`` (``(pixels, targets)`` in memory or a split on
    disk), spread across it (and so across the classes), as the augmentation makes them (before
    normalisation), drawn from a generator of its own: the run's random numbers are untouched."""
    from traincraft.datasets import split_size
    from traincraft.files import atomic_write
    from traincraft.image_grid import displayable, png, tile
    from traincraft.mapped import inputs_at

    size = split_size(split)
    picked = inputs_at(split, torch.linspace(0, size - 1, min(count, size)).long().numpy())
    x = picked.float() / 255.0 if picked.dtype == torch.uint8 else picked.float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if transform.augmentation is not None:
            x = transform.augmentation(x.cpu())
    data = png(tile(displayable(x)), min_side=640)  # small images drawn large enough to see
    return atomic_write(path, lambda handle: handle.write(data))
