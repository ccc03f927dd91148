"""Built-in models (``linear``, ``mlp``, ``cnn``, ``lstm``, ``gru``) and the user's own model class.

A model spec is a name, a ``{"name": ..., **kwargs}`` dict, ``"package.module:Class"``, or a
model of torchvision or timm: ``"torchvision:resnet18"``, ``"timm:resnet18"`` (the ``vision``
extra; never downloaded: ``weights: PATH`` loads a local file).
:func:`build` turns it into an ``nn.Module`` for one sample's ``input_shape`` and ``output_size``;
with ``target_stats`` the model ends in a fixed affine layer that maps standardised outputs back to
the data's units.

Every built-in model is an ``nn.Sequential`` whose top-level children are named
(``hidden1``, ``conv1``, ``head``, ...) and whose trainable stages are listed, input to output, in
``model.blocks``, so that fine-tuning can give earlier blocks a smaller learning rate.

Example:
    >>> from traincraft import models
    >>> net = models.build({"name": "mlp", "hidden_sizes": [32]}, input_shape=(10,), output_size=3)
    >>> net(torch.randn(4, 10)).shape
    torch.Size([4, 3])
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from traincraft.errors import (
    ModelError,
    ShapeError,
    TraincraftError,
    UnknownNameError,
    did_you_mean,
)
from traincraft.registry import Registry, import_object, split_spec

__all__ = [
    "ACTIVATIONS",
    "MODELS",
    "CNN",
    "MLP",
    "BlockSequential",
    "LinearModel",
    "OutputScale",
    "Recurrent",
    "ScaledModel",
    "activation",
    "build",
    "names",
]

# Keys that every built-in model accepts on top of its own arguments: new heads for fine-tuning
# (``num_classes``/``out_features``) and an input size that differs from the data's.
_OUTPUT_KEYS = ("num_classes", "out_features")
_INPUT_KEYS = ("in_features", "input_size")

ACTIVATIONS = Registry("activation")
ACTIVATIONS.add("relu", nn.ReLU)
ACTIVATIONS.add("gelu", nn.GELU)
ACTIVATIONS.add("silu", nn.SiLU, aliases=["swish"])
ACTIVATIONS.add("tanh", nn.Tanh)
ACTIVATIONS.add("leaky_relu", nn.LeakyReLU)
ACTIVATIONS.add("elu", nn.ELU)
ACTIVATIONS.add("sigmoid", nn.Sigmoid)


def activation(spec: str | Mapping[str, Any]) -> nn.Module:
    """A fresh activation module from a name or ``{"name": ..., **kwargs}``.

    Example:
        >>> activation({"name": "leaky_relu", "negative_slope": 0.1})
        LeakyReLU(negative_slope=0.1)
    """
    return ACTIVATIONS.create(spec)


# --------------------------------------------------------------------------------------------
# Building blocks


class BlockSequential(nn.Sequential):
    """An ``nn.Sequential`` with named children whose trainable stages are listed in ``blocks``.

    Args:
        layers: the children in forward order, by name.
        block_names: the names of the children that are blocks (they hold the parameters);
            reshaping layers and the output scaling are not blocks.

    Example:
        >>> net = BlockSequential(OrderedDict(flatten=nn.Flatten(), head=nn.Linear(4, 2)), ["head"])
        >>> net.blocks
        [Linear(in_features=4, out_features=2, bias=True)]
    """

    def __init__(self, layers: Mapping[str, nn.Module], block_names: Sequence[str]):
        super().__init__(OrderedDict(layers))
        missing = [name for name in block_names if name not in self._modules]
        if missing:
            raise ValueError(f"blocks {missing} are not children of the model")
        self.block_names: tuple[str, ...] = tuple(block_names)

    @property
    def blocks(self) -> list[nn.Module]:
        """The trainable stages, from input to output (the head is last)."""
        return [self._modules[name] for name in self.block_names]

    def __getitem__(self, idx: int | slice) -> Any:
        # nn.Sequential slices by calling ``type(self)(OrderedDict)``, which our subclasses'
        # constructors do not take: a slice (``model[:-1]``, the body without its head) is a
        # plain ``nn.Sequential`` of the same children instead.
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)


class Unsqueeze(nn.Module):
    """Insert a dimension of size one: ``(N, T) -> (N, T, 1)`` or ``(N, H, W) -> (N, 1, H, W)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LastHidden(nn.Module):
    """Run an ``nn.LSTM``/``nn.GRU`` and return the last layer's final hidden state.

    With ``bidirectional=True`` the forward direction's state after the last step and the backward
    direction's state after the first step are concatenated: ``(N, 2 * hidden_size)``.
    """

    def __init__(self, rnn: nn.LSTM | nn.GRU):
        super().__init__()
        self.rnn = rnn
        self.directions = 2 if rnn.bidirectional else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_n = self.rnn(x)
        if isinstance(h_n, tuple):  # LSTM returns (h_n, c_n)
            h_n = h_n[0]
        # h_n: (layers * directions, N, H); the last layer's directions are the last entries.
        if self.directions == 1:
            return h_n[-1]
        return torch.cat((h_n[-2], h_n[-1]), dim=-1)


class OutputScale(nn.Module):
    """A fixed affine output layer ``y = y * std + mean``, one pair per output.

    ``mean`` and ``std`` are buffers: saved in the state dict, moved by ``.to()``, never trained.
    A zero ``std`` is treated as 1 (a constant target has nothing to scale).

    Example:
        >>> scale = OutputScale([10.0], [2.0])
        >>> scale(torch.tensor([[1.0]]))
        tensor([[12.]])
    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1).clone()
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1).clone()
        if mean_t.numel() != std_t.numel():
            raise TraincraftError(
                f"target_stats: mean has {mean_t.numel()} values but std has {std_t.numel()}; "
                "give one mean and one std per output"
            )
        if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all()):
            raise TraincraftError("target_stats: mean and std must be finite numbers")
        std_t = torch.where(std_t == 0, torch.ones_like(std_t), std_t)
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(y, torch.Tensor):
            raise ModelError(
                f"target_stats needs the model to return one tensor, got {type(y).__name__}"
            )
        return y * self.std + self.mean

    def extra_repr(self) -> str:
        return f"outputs={self.mean.numel()}"


class ScaledModel(nn.Module):
    """A user's model followed by an :class:`OutputScale`; children ``model`` and ``scale``.

    The state dict's keys gain the prefix ``model.``; ``blocks`` are the model's own ``blocks``
    when it has them, else the model as one block.
    """

    def __init__(self, model: nn.Module, scale: OutputScale):
        super().__init__()
        self.model = model
        self.scale = scale

    @property
    def blocks(self) -> list[nn.Module]:
        return list(getattr(self.model, "blocks", [self.model]))

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.scale(self.model(*args, **kwargs))


# --------------------------------------------------------------------------------------------
# Built-in models. Each takes plain keyword arguments (sizes, not shapes, where it can).


class LinearModel(BlockSequential):
    """Flatten, then one ``nn.Linear``: logistic/softmax or linear regression.

    Example:
        >>> LinearModel(64, 10)(torch.randn(2, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__(
            {"flatten": nn.Flatten(), "head": nn.Linear(in_features, out_features)}, ["head"]
        )


class MLP(BlockSequential):
    """Flatten, hidden layers ``Linear -> (BatchNorm1d) -> activation -> (Dropout)``, a linear head.

    The hidden layers are children ``hidden1``, ``hidden2``, ...; the output layer is ``head``.
    With batch normalisation the hidden ``Linear`` layers have no bias (the norm's shift replaces
    it).

    Example:
        >>> MLP(10, 3, hidden_sizes=[32, 16], dropout=0.1)(torch.randn(4, 10)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str | Mapping[str, Any] = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
        width = in_features
        for i, size in enumerate(hidden_sizes, start=1):
            layers[f"hidden{i}"] = _dense(width, size, activation, dropout, batch_norm)
            width = size
        layers["head"] = nn.Linear(width, out_features)
        super().__init__(layers, [name for name in layers if name != "flatten"])


class CNN(BlockSequential):
    """A small convolutional network for images ``(C, H, W)``.

    Per entry of ``channels``: ``Conv2d(padding="same") -> (BatchNorm2d) -> activation ->
    MaxPool2d(2)`` (the pooling is left out once the image is smaller than 2×2), then global
    average pooling, ``Linear(hidden) -> activation -> (Dropout)`` and a linear head.
    Inputs ``(H, W)`` get one channel; inputs ``(L,)`` with a square length (64 -> 8×8) are
    reshaped to one-channel square images.

    Children: ``reshape`` (when needed), ``conv1``, ``conv2``, ..., ``pool``, ``hidden`` (unless
    ``hidden`` is 0 or None), ``head``.

    Example:
        >>> CNN((1, 8, 8), 10)(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 3,
        hidden: int | None = 128,
        dropout: float = 0.25,
        batch_norm: bool = True,
        activation: str | Mapping[str, Any] = "relu",
    ):
        layers: dict[str, nn.Module] = {}
        reshape, (in_channels, height, width) = _image_layout(tuple(input_shape))
        if reshape is not None:
            layers["reshape"] = reshape
        for i, out_channels in enumerate(channels, start=1):
            pool = height >= 2 and width >= 2
            layers[f"conv{i}"] = _conv(
                in_channels, out_channels, kernel_size, activation, batch_norm, pool
            )
            in_channels = out_channels
            if pool:
                height, width = height // 2, width // 2
        # Global average pooling: fewer weights than flattening and translation invariant; on
        # 8×8 digits it generalises at least as well.
        layers["pool"] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        if hidden:
            layers["hidden"] = _dense(in_channels, hidden, activation, dropout, batch_norm=False)
            in_channels = hidden
        layers["head"] = nn.Linear(in_channels, out_features)
        super().__init__(layers, [n for n in layers if n not in ("reshape", "pool")])


class Recurrent(BlockSequential):
    """An LSTM or GRU over ``(N, T, F)`` whose last hidden state feeds a linear head.

    Children: ``reshape`` (for ``(T,)`` inputs, one feature per step), ``rnn`` (the recurrent
    layers, one block), ``norm`` (with ``batch_norm=True``: ``BatchNorm1d`` over the final
    hidden state, a block of its own between ``rnn`` and ``head``, so that the head stays a
    plain ``nn.Linear`` that fine-tuning can replace), ``dropout`` (when ``dropout > 0``, applied
    to the final hidden state after the norm), ``head``. Dropout between recurrent layers is
    used as well when ``num_layers > 1``.

    Example:
        >>> Recurrent(3, 1, cell="gru", hidden_size=8)(torch.randn(2, 24, 3)).shape
        torch.Size([2, 1])
        >>> Recurrent(3, 1, hidden_size=8, batch_norm=True, dropout=0.2).block_names
        ('rnn', 'norm', 'head')
    """

    def __init__(
        self,
        input_size: int,
        out_features: int,
        cell: str = "lstm",
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
        add_feature_dim: bool = False,
        batch_norm: bool = False,
    ):
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        rnn_class = nn.LSTM if cell == "lstm" else nn.GRU
        rnn = rnn_class(
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            # torch warns when dropout is set on a single layer: it would never be applied.
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        layers: dict[str, nn.Module] = {}
        if add_feature_dim:
            layers["reshape"] = Unsqueeze(-1)
        layers["rnn"] = LastHidden(rnn)
        state_size = hidden_size * (2 if bidirectional else 1)
        if batch_norm:
            layers["norm"] = nn.BatchNorm1d(state_size)
        if dropout > 0:
            layers["dropout"] = nn.Dropout(dropout)
        layers["head"] = nn.Linear(state_size, out_features)
        super().__init__(layers, ["rnn", *(["norm"] if batch_norm else []), "head"])


def _dense(
    in_features: int,
    out_features: int,
    act: str | Mapping[str, Any],
    dropout: float,
    batch_norm: bool,
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_features, out_features, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(out_features))
    layers.append(activation(act))
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    act: str | Mapping[str, Any],
    batch_norm: bool,
    pool: bool,
) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding="same", bias=not batch_norm)
    layers: list[nn.Module] = [conv]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(activation(act))
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _image_layout(shape: tuple[int, ...]) -> tuple[nn.Module | None, tuple[int, int, int]]:
    """The layer that makes ``(N, *shape)`` a batch of images, and the images' ``(C, H, W)``."""
    if len(shape) == 3:
        return None, (shape[0], shape[1], shape[2])
    if len(shape) == 2:
        return Unsqueeze(1), (1, shape[0], shape[1])
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side == shape[0]:
            return nn.Unflatten(1, (1, side, side)), (1, side, side)
        raise ShapeError(
            f"model 'cnn': input of {shape[0]} features is not a square image; give images as "
            "(C, H, W) (or (H, W), or (L,) with L a perfect square)"
        )
    raise ShapeError(
        f"model 'cnn': expects one sample of shape (C, H, W), got {shape}; reshape the data to "
        "(N, C, H, W)"
    )


# --------------------------------------------------------------------------------------------
# Builders: ``(input_shape, output_size, in_size, **kwargs) -> model``. ``in_size`` is the
# ``in_features``/``input_size`` override, or None to infer it from ``input_shape``.


def _flat_size(shape: tuple[int, ...], in_size: int | None) -> int:
    return in_size if in_size is not None else math.prod(shape)


def _build_linear(shape: tuple[int, ...], out: int, in_size: int | None) -> nn.Module:
    return LinearModel(_flat_size(shape, in_size), out)


def _build_mlp(
    shape: tuple[int, ...],
    out: int,
    in_size: int | None,
    hidden_sizes: Sequence[int] = (64, 64),
    activation: str | Mapping[str, Any] = "relu",
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> nn.Module:
    _check_sizes("mlp", "hidden_sizes", hidden_sizes)
    _check_dropout("mlp", dropout)
    _check_activation("mlp", activation)
    return MLP(_flat_size(shape, in_size), out, list(hidden_sizes), activation, dropout, batch_norm)


def _build_cnn(
    shape: tuple[int, ...],
    out: int,
    in_size: int | None,
    channels: Sequence[int] = (32, 64),
    kernel_size: int = 3,
    hidden: int | None = 128,
    dropout: float = 0.25,
    batch_norm: bool = True,
    activation: str | Mapping[str, Any] = "relu",
) -> nn.Module:
    if in_size is not None:
        raise TraincraftError(
            "model 'cnn': 'in_features'/'input_size' do not apply to images; the input shape "
            "(C, H, W) comes from the data"
        )
    _check_sizes("cnn", "channels", channels)
    _check_sizes("cnn", "kernel_size", [kernel_size])
    if hidden:
        _check_sizes("cnn", "hidden", [hidden])
    _check_dropout("cnn", dropout)
    _check_activation("cnn", activation)
    return CNN(shape, out, list(channels), kernel_size, hidden, dropout, batch_norm, activation)


def _recurrent_builder(cell: str) -> Callable[..., nn.Module]:
    def build_recurrent(
        shape: tuple[int, ...],
        out: int,
        in_size: int | None,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
        batch_norm: bool = False,
    ) -> nn.Module:
        if len(shape) not in (1, 2):
            raise ShapeError(
                f"model {cell!r}: expects one sample of shape (T, F) (time steps, features), got "
                f"{shape}; reshape the data to (N, T, F)"
            )
        _check_sizes(cell, "hidden_size", [hidden_size])
        _check_sizes(cell, "num_layers", [num_layers])
        _check_dropout(cell, dropout)
        features = 1 if len(shape) == 1 else shape[1]
        return Recurrent(
            in_size if in_size is not None else features,
            out,
            cell,
            hidden_size,
            num_layers,
            dropout,
            bidirectional,
            add_feature_dim=len(shape) == 1,
            batch_norm=bool(batch_norm),
        )

    return build_recurrent


def _check_sizes(model: str, key: str, sizes: Any) -> None:
    ok = isinstance(sizes, Sequence) and not isinstance(sizes, str)
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)
    if not ok:
        raise TraincraftError(f"model {model!r}: {key!r} must be positive integers, got {sizes!r}")


def _check_activation(model: str, spec: Any) -> None:
    try:
        name, _ = split_spec(spec, "activation")
        ACTIVATIONS.canonical(name)
    except UnknownNameError as err:
        raise UnknownNameError(f"model {model!r}: {err}") from err
    except TraincraftError as err:
        raise TraincraftError(f"model {model!r}: 'activation': {err}") from err


def _check_dropout(model: str, dropout: Any) -> None:
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise TraincraftError(f"model {model!r}: 'dropout' must be in [0, 1), got {dropout!r}")


MODELS = Registry("model")
MODELS.add("linear", _build_linear, doc="Flatten + Linear")
MODELS.add("mlp", _build_mlp, doc="multi-layer perceptron")
MODELS.add("cnn", _build_cnn, doc="small convolutional network for images (C, H, W)")
MODELS.add("lstm", _recurrent_builder("lstm"), doc="LSTM over (T, F), last state -> Linear")
MODELS.add("gru", _recurrent_builder("gru"), doc="GRU over (T, F), last state -> Linear")


# --------------------------------------------------------------------------------------------
# Public entry points


def names() -> list[str]:
    """The built-in model names, sorted.

    Example:
        >>> names()
        ['cnn', 'gru', 'linear', 'lstm', 'mlp']
    """
    return MODELS.names()


def build(
    spec: str | Mapping[str, Any] | type[nn.Module] | Callable[..., nn.Module] | nn.Module,
    *,
    input_shape: Sequence[int],
    output_size: int,
    target_stats: tuple[Sequence[float], Sequence[float]] | None = None,
    init_weights: bool = True,
    log: Callable[[str], None] | None = None,
) -> nn.Module:
    """Build a model for samples of ``input_shape`` and ``output_size`` outputs.

    Args:
        spec: a built-in name (:func:`names`), ``{"name": ..., **kwargs}``,
            ``"package.module:Class"`` (called with the spec's other keys, plus ``input_shape``
            and ``output_size`` when its signature has parameters of those names), a class or
            factory (the same), a ready ``nn.Module`` (returned as it is), or
            ``"torchvision:NAME"`` / ``"timm:NAME"``: built with ``weights=None`` /
            ``pretrained=False`` and ``num_classes=output_size`` (timm also gets
            ``in_chans`` when the images do not have 3 channels); the spec's other keys go to
            ``torchvision.models.get_model`` / ``timm.create_model``, and ``weights: PATH``
            loads a local weights file into it (see
            :func:`traincraft.finetune.load_initial_weights`; a new head is expected).
        input_shape: one sample's input shape: ``(C, H, W)`` images, ``(F,)`` tables,
            ``(T, F)`` sequences.
        output_size: classes for classification, outputs otherwise. For built-in, torchvision
            and timm models ``num_classes`` or ``out_features`` in the spec override it (a new
            head of another size); for built-in models ``in_features`` or ``input_size``
            override the input size inferred from ``input_shape``.
        target_stats: ``(mean, std)`` per output: the model then ends with a fixed
            :class:`OutputScale` so that it learns in standardised units and predicts in the
            data's units.
        init_weights: load the spec's ``weights`` file (False when trained weights are loaded
            right after, as when a run's model is rebuilt).
        log: where the one-line report of loading ``weights`` goes; by default standard error
            (of the main process only).

    Returns:
        The model, an ``nn.Module``.

    Raises:
        UnknownNameError: an unknown model or activation name (with the closest names).
        TraincraftError: bad arguments, an import failure, or a shape the model cannot take.

    Example:
        >>> net = build("cnn", input_shape=(1, 8, 8), output_size=10)
        >>> net = build({"name": "lstm", "hidden_size": 32}, input_shape=(24, 1), output_size=1,
        ...             target_stats=([50.0], [40.0]))
    """
    shape = _check_shape(input_shape)
    if isinstance(spec, nn.Module):
        model = spec
    else:
        model = _resolve(spec, shape, output_size, init_weights, log)
    if target_stats is not None:
        model = _with_output_scale(model, target_stats, _output_count(model, output_size))
    return model


def _resolve(
    spec: Any,
    shape: tuple[int, ...],
    output_size: int,
    init_weights: bool = True,
    log: Callable[[str], None] | None = None,
) -> nn.Module:
    """Build from a name, a dict, an import path, or a class (also as a dict's ``name``)."""
    if callable(spec):  # a class or factory from Python, rather than its path
        spec = {"name": spec}
    if isinstance(spec, Mapping) and callable(spec.get("name")):
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        factory = spec["name"]
        path = getattr(factory, "__qualname__", repr(factory))
        return _build_user(factory, path, kwargs, shape, output_size)
    name, kwargs = split_spec(spec, "model")
    library, sep, arch = name.partition(":")
    if sep and library.strip().lower() in _LIBRARIES:
        return _build_external(
            library.strip().lower(), arch.strip(), kwargs, shape, output_size, init_weights, log
        )
    if ":" in name or "." in name:
        return _build_user(import_object(name, "model"), name, kwargs, shape, output_size)
    return _build_builtin(name, kwargs, shape, output_size)


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    if isinstance(input_shape, int) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise ShapeError(
            f"model input_shape must be one sample's shape, a tuple of positive integers such as "
            f"(1, 8, 8); got {input_shape!r}"
        )
    return shape


def _build_builtin(
    name: str, kwargs: dict[str, Any], shape: tuple[int, ...], output_size: int
) -> nn.Module:
    canonical = MODELS.canonical(name)
    builder = MODELS.entry(canonical).factory
    params = list(inspect.signature(builder).parameters)[3:]  # after (shape, out, in_size)
    valid = [*params, *_OUTPUT_KEYS, *_INPUT_KEYS]
    for key in kwargs:
        if key not in valid:
            hint = did_you_mean(key, valid) or f"; valid: {', '.join(valid)}"
            raise TraincraftError(f"model {canonical!r}: unknown argument {key!r}{hint}")
    kwargs = dict(kwargs)
    out = _pop_override(canonical, kwargs, _OUTPUT_KEYS, output_size)
    in_size = _pop_override(canonical, kwargs, _INPUT_KEYS, None)
    _check_sizes(canonical, "output_size", [out])
    if in_size is not None:
        _check_sizes(canonical, "in_features", [in_size])
    return builder(shape, out, in_size, **kwargs)


def _pop_override(model: str, kwargs: dict[str, Any], keys: Sequence[str], default: Any) -> Any:
    given = {key: kwargs.pop(key) for key in keys if key in kwargs}
    if len(set(given.values())) > 1:
        raise TraincraftError(
            f"model {model!r}: {' and '.join(given)} disagree ({given}); give one"
        )
    return next(iter(given.values()), default)


def _build_user(
    factory: Any, path: str, kwargs: dict[str, Any], shape: tuple[int, ...], output_size: int
) -> nn.Module:
    """Call the user's class or factory with the spec's keys (and shapes when it asks for them)."""
    if not callable(factory):
        raise TraincraftError(f"model {path!r} is a {type(factory).__name__}, not a class")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: pass the keys as they are
        signature = None
    kwargs = dict(kwargs)
    if signature is not None:
        params = signature.parameters
        # Only parameters with these exact names receive them; the spec's own keys win.
        if "input_shape" in params:
            kwargs.setdefault("input_shape", shape)
        if "output_size" in params:
            kwargs.setdefault("output_size", output_size)
        _check_bind(path, signature, kwargs)
    try:
        model = factory(**kwargs)
    except (TypeError, ValueError) as err:
        raise TraincraftError(f"model {path!r}: construction failed: {err}") from err
    if not isinstance(model, nn.Module):
        raise TraincraftError(
            f"model {path!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _check_bind(path: str, signature: inspect.Signature, kwargs: dict[str, Any]) -> None:
    params = signature.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not takes_any:
        for key in kwargs:
            if key not in named:
                hint = did_you_mean(key, named) or f"; it takes: {', '.join(named) or 'nothing'}"
                raise TraincraftError(f"model {path!r}: unknown argument {key!r}{hint}")
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise TraincraftError(f"model {path!r}: {err}") from err


# --------------------------------------------------------------------------------------------
# torchvision and timm models. Imported only when a spec names them; never downloaded.

_VISION_HINT = "pip install 'traincraft[vision]'"
# Arguments that would make the library download weights; ``weights: PATH`` replaces them.
_DOWNLOAD_KEYS = {
    "torchvision": ("pretrained", "weights_backbone"),
    "timm": ("pretrained",),
}


def _build_external(
    library: str,
    arch: str,
    kwargs: dict[str, Any],
    shape: tuple[int, ...],
    output_size: int,
    init_weights: bool,
    log: Callable[[str], None] | None,
) -> nn.Module:
    label = f"{library}:{arch}"
    kwargs = dict(kwargs)
    weights = kwargs.pop("weights", None)
    _refuse_downloads(label, library, kwargs, weights)
    out = _pop_override(label, kwargs, _OUTPUT_KEYS, output_size)
    _check_sizes(label, "num_classes", [out])
    model = _LIBRARIES[library](arch, label, kwargs, shape, out)
    if weights is not None and init_weights:
        from traincraft.finetune.weights import load_initial_weights

        report = load_initial_weights(model, weights, label=f"model {label!r} weights")
        (log or _log_main)(report.summary())
    return model


def _refuse_downloads(label: str, library: str, kwargs: dict[str, Any], weights: Any) -> None:
    for key in _DOWNLOAD_KEYS[library]:
        if kwargs.get(key) not in (None, False, ""):
            raise TraincraftError(
                f"model {label!r}: {key!r} would download weights and traincraft never "
                "downloads; give a local weights file as 'weights: PATH'"
            )
        kwargs.pop(key, None)
    if kwargs.get("checkpoint_path"):
        # timm loads it strictly, so a new head fails; ours reports the head instead.
        raise TraincraftError(
            f"model {label!r}: give the weights file as 'weights: PATH' rather than "
            "'checkpoint_path' (it loads everything but a new head)"
        )
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise TraincraftError(
            f"model {label!r}: 'weights' must be the path of a local weights file, got {weights!r}"
        )
    # "DEFAULT" or "IMAGENET1K_V1" are torchvision's names for weights it would download.
    looks_named = re.fullmatch(r"(\w+_Weights\.)?[A-Z][A-Z0-9_]*", str(weights))
    if looks_named and not os.path.exists(weights):
        raise TraincraftError(
            f"model {label!r}: weights {weights!r} names weights to download, and traincraft "
            "never downloads; save them once to a file (.safetensors, .pt) and give its path"
        )


def _log_main(message: str) -> None:
    # Under torchrun every process builds the model; only the first one reports.
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)


def _import_vision(module: str, package: str, label: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TraincraftError(f"model {label!r} needs {package}: {_VISION_HINT}") from None


def _unknown_external(
    label: str, library: str, arch: str, names: Sequence[str]
) -> UnknownNameError:
    hint = did_you_mean(arch, names)
    if not hint:
        lister = {"torchvision": "torchvision.models.list_models()", "timm": "timm.list_models()"}[
            library
        ]
        hint = f"; {lister} lists the names"
    return UnknownNameError(f"model {label!r}: unknown {library} model {arch!r}{hint}")


def _torchvision_model(
    arch: str, label: str, kwargs: dict[str, Any], shape: tuple[int, ...], out: int
) -> nn.Module:
    tv_models = _import_vision("torchvision.models", "torchvision", label)
    key = arch.lower()  # torchvision looks names up in lower case
    names = list(tv_models.list_models())
    if key not in names:
        raise _unknown_external(label, "torchvision", arch, names)
    config: dict[str, Any] = {"weights": None, "num_classes": out, **kwargs}
    get_builder = getattr(tv_models, "get_model_builder", None)
    if get_builder is not None:
        # Detection and segmentation builders download a backbone by default.
        if "weights_backbone" in inspect.signature(get_builder(key)).parameters:
            config["weights_backbone"] = None
    model = _construct(label, lambda: tv_models.get_model(key, **config))
    if len(shape) == 3 and shape[0] != 3:
        _first_conv_for(model, shape[0], label, shape)
    return model


def _first_conv_for(model: nn.Module, channels: int, label: str, shape: tuple[int, ...]) -> None:
    """Replace the model's first 3-channel ``Conv2d`` by one for ``channels`` input channels, as
    timm's ``in_chans`` does; pretrained 3-channel kernels are then adapted when loaded
    (:func:`traincraft.finetune.weights.adapt_input_channels`)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            replacement = nn.Conv2d(
                channels, module.out_channels, module.kernel_size, stride=module.stride,
                padding=module.padding, dilation=module.dilation, groups=module.groups,
                bias=module.bias is not None, padding_mode=module.padding_mode,
            )
            setattr(parent, name.rpartition(".")[2], replacement)
            return
    raise ShapeError(
        f"model {label!r} has no 3-channel first convolution to adapt to the data's {channels} "
        f"channel(s) {shape}; repeat the channel to 3"
    )


def _timm_model(
    arch: str, label: str, kwargs: dict[str, Any], shape: tuple[int, ...], out: int
) -> nn.Module:
    if ":" in arch or arch.lower().startswith(("hf-hub", "hf_hub")):
        raise TraincraftError(
            f"model {label!r}: models from the Hugging Face Hub would be downloaded; give a timm "
            "architecture name (timm.list_models()) and a local file as 'weights: PATH'"
        )
    timm = _import_vision("timm", "timm", label)
    base = arch.split(".", 1)[0]  # "resnet50.a1_in1k": the architecture and a weights tag
    names = list(timm.list_models())
    if base not in names:
        raise _unknown_external(label, "timm", base, names)
    config: dict[str, Any] = {"pretrained": False, "num_classes": out}
    if len(shape) == 3 and shape[0] != 3:
        config["in_chans"] = shape[0]
    config.update(kwargs)  # the spec's own keys win (an explicit in_chans, drop_rate, ...)
    return _construct(label, lambda: timm.create_model(arch, **config))


def _construct(label: str, make: Callable[[], Any]) -> nn.Module:
    try:
        model = make()
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TraincraftError(f"model {label!r}: construction failed: {text}") from err
    if not isinstance(model, nn.Module):
        raise TraincraftError(
            f"model {label!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


_LIBRARIES: dict[str, Callable[..., nn.Module]] = {
    "torchvision": _torchvision_model,
    "timm": _timm_model,
}


def _output_count(model: nn.Module, output_size: int) -> int:
    head = getattr(model, "head", None)
    if isinstance(model, BlockSequential) and isinstance(head, nn.Linear):
        return head.out_features
    return output_size


def _with_output_scale(
    model: nn.Module, target_stats: tuple[Sequence[float], Sequence[float]], outputs: int
) -> nn.Module:
    if not (isinstance(target_stats, Sequence) and len(target_stats) == 2):
        raise TraincraftError("target_stats must be a pair (mean, std), one value each per output")
    scale = OutputScale(*target_stats)
    if scale.mean.numel() not in (1, outputs):
        raise TraincraftError(
            f"target_stats has {scale.mean.numel()} values per statistic but the model has "
            f"{outputs} outputs; give one mean and one std per output"
        )
    if isinstance(model, BlockSequential):
        # Appended, not wrapped, so that the state dict keeps the model's own keys.
        model.add_module("scale", scale)
        return model
    return ScaledModel(model, scale)
