"""Optimizers by name, and the parameter groups they train.

Every optimizer class of ``torch.optim`` has a snake_case name (``"adamw"`` is
``torch.optim.AdamW``). :func:`build` turns a name, a ``{"name": ..., **kwargs}`` dict or a
callable into an optimizer over a model's trainable parameters, split into groups:

* parameters with ``requires_grad=False`` are left out;
* biases, normalisation-layer parameters and other parameters with ``ndim <= 1`` get no weight
  decay (``decay_exclude="auto"``);
* rules in ``param_groups`` give parts of the model their own learning rate or settings.

Example:
    >>> from traincraft import optim
    >>> opt = optim.build("adamw", model, lr=3e-4, weight_decay=0.05)
    >>> [g["name"] for g in opt.param_groups]
    ['default', 'default/no_decay']
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from traincraft.errors import (
    TraincraftError,
    UnknownNameError,
    closest,
    did_you_mean,
    expect_number,
)
from traincraft.registry import Registry, check_numbers, import_object, split_spec

__all__ = ["OPTIMIZERS", "added_groups", "build", "names", "param_groups"]

OptimizerSpec = str | Mapping[str, Any] | type | Callable[[list[dict[str, Any]]], Any]

# name -> class name in torch.optim. Written out rather than derived from the class names because
# a mechanical conversion gives "adam_w", "rm_sprop" and "n_adam". A class that a newer torch
# adds is caught by the test that walks torch.optim, not silently given a guessed name.
_TORCH_CLASSES: dict[str, str] = {
    "sgd": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "rmsprop": "RMSprop",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "adamax": "Adamax",
    "nadam": "NAdam",
    "radam": "RAdam",
    "asgd": "ASGD",
    "rprop": "Rprop",
    "sparse_adam": "SparseAdam",
    "lbfgs": "LBFGS",
    "adafactor": "Adafactor",  # torch >= 2.5
    "muon": "Muon",  # torch >= 2.9
}

# Lower-cased torch class names that differ from our name, so "SparseAdam" also resolves.
_ALIASES: dict[str, list[str]] = {"sparse_adam": ["sparseadam"]}

OPTIMIZERS = Registry("optimizer")
for _name, _class_name in _TORCH_CLASSES.items():
    _cls = getattr(torch.optim, _class_name, None)
    if _cls is not None:  # older torch releases lack the newest classes
        OPTIMIZERS.add(
            _name, _cls, aliases=_ALIASES.get(_name, ()), doc=f"torch.optim.{_class_name}"
        )
del _name, _class_name, _cls

# Group keys that traincraft itself reads; everything else in a rule goes to the optimizer.
_RULE_KEYS = frozenset({"params", "name", "lr", "lr_mult", "weight_decay"})
# Keys that build() or param_groups() set and a rule must not.
_RESERVED_KEYS = frozenset({"param_names", "initial_lr"})

# Parameters owned directly by these modules never decay under decay_exclude="auto".
_NORM_TYPES: tuple[type, ...] = tuple(
    cls
    for cls in (
        getattr(nn.modules.batchnorm, "_NormBase", None),  # BatchNorm*, InstanceNorm*, SyncBN
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),  # torch >= 2.4
    )
    if cls is not None
)

# Dtypes the fused kernels take (torch's `_fused_doc`); float8 types count as floating point for
# torch.is_floating_point but have no fused kernel.
_FUSED_DTYPES = frozenset({torch.float64, torch.float32, torch.float16, torch.bfloat16})


def names() -> list[str]:
    """Every optimizer name, sorted.

    Example:
        >>> "adamw" in optim.names()
        True
    """
    return OPTIMIZERS.names()


def build(
    spec: OptimizerSpec,
    model: nn.Module,
    *,
    lr: float = 1e-3,
    weight_decay: float | None = None,
    decay_exclude: str | Sequence[str] | None = "auto",
    param_groups: Sequence[Mapping[str, Any]] | None = None,
) -> torch.optim.Optimizer:
    """Build an optimizer over ``model``'s trainable parameters.

    Args:
        spec: a name (``"adamw"``), a dict ``{"name": "sgd", "momentum": 0.9}`` whose other keys go
            to the class (``lr`` and ``weight_decay`` there override the arguments below), an
            ``Optimizer`` subclass or ``"package.module:Class"``, or a callable that takes the
            list of parameter-group dicts and returns an ``Optimizer``.
        model: the module whose parameters are trained; frozen parameters are left out.
        lr: base learning rate of every group (rules may scale or replace it).
        weight_decay: decay of the decaying groups; ``None`` keeps the class's own default.
        decay_exclude: ``"auto"`` (biases, normalisation layers, ``ndim <= 1``), a glob pattern or
            a list of them on parameter names (``"auto"`` may be one of them), or ``None``.
        param_groups: rules ``{"params": glob | [globs], "lr_mult" | "lr" | "weight_decay" | ...}``;
            the first rule that matches a parameter wins.

    Returns:
        The optimizer. Its groups carry ``name``, ``param_names``, ``lr``, ``initial_lr``,
        ``lr_mult`` and ``weight_decay``. ``fused=True`` is chosen where torch supports it.

    Raises:
        UnknownNameError: an unknown optimizer name.
        TraincraftError: a wrong keyword, a rule that matches nothing, ``lbfgs``, a model with
            nothing to train.

    Example:
        >>> opt = optim.build({"name": "sgd", "momentum": 0.9}, model, lr=0.1,
        ...                   param_groups=[{"params": "backbone.*", "lr_mult": 0.1}])
    """
    if callable(spec) and not isinstance(spec, type):
        return _build_from_callable(
            spec, model, lr, weight_decay, decay_exclude=decay_exclude, param_groups=param_groups
        )
    cls, label, kwargs = _resolve(spec)
    muon = getattr(torch.optim, "Muon", None)
    if muon is not None and issubclass(cls, muon) and kwargs.get("others", "adamw") is not None:
        return _muon_with_adamw(cls, label, kwargs, model, lr, weight_decay, decay_exclude, param_groups)
    kwargs.pop("others", None)
    _check_kwargs(cls, label, kwargs)
    check_numbers(f"optimizer {label!r}", {k: p.default for k, p in (_class_arguments(cls) or {}).items()}, kwargs)
    lr = kwargs.pop("lr", lr)
    weight_decay = _class_weight_decay(cls, label, kwargs.pop("weight_decay", weight_decay))
    _check_rule_keys(cls, label, param_groups)
    groups = _param_groups(model, lr, weight_decay, decay_exclude, param_groups)
    _check_muon(cls, label, groups)
    _check_sparse(cls, label, model, groups)
    kwargs = _with_fused(cls, kwargs, model, groups)
    if _accepts(cls, "weight_decay"):
        # The constructor's defaults serve groups added later (unfreezing) without these keys.
        kwargs["weight_decay"] = weight_decay
    if _accepts(cls, "lr"):
        kwargs["lr"] = lr
    try:
        return cls(groups, **kwargs)
    except (ValueError, TypeError) as err:
        raise TraincraftError(f"optimizer {label!r}: {err}") from err


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float | None,
    decay_exclude: str | Sequence[str] | None = "auto",
    param_groups: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into optimizer groups.

    Groups are (rule, decay / no-decay) pairs in rule order, the default rule last; empty ones are
    dropped. Every trainable parameter is in exactly one group.

    Args:
        model: the module; parameters with ``requires_grad=False`` are left out.
        lr: base learning rate; a rule's ``lr`` replaces it, its ``lr_mult`` scales it.
        weight_decay: decay of the decaying groups. ``None`` leaves the key out of them so that
            the optimizer's own default applies; no-decay groups always get ``0.0``.
        decay_exclude: ``"auto"``, glob patterns on parameter names, or ``None`` / ``[]``.
        param_groups: rules ``{"params": glob | [globs], ...}``; see :func:`build`.

    Returns:
        Dicts with ``params``, ``param_names``, ``name``, ``lr``, ``initial_lr``, ``lr_mult``,
        ``weight_decay`` and any other key a rule set.

    Example:
        >>> groups = optim.param_groups(model, lr=1e-3, weight_decay=0.01,
        ...                             param_groups=[{"params": "head.*", "lr": 1e-2}])
        >>> [g["name"] for g in groups]
        ['head.*', 'head.*/no_decay', 'default', 'default/no_decay']
    """
    return _param_groups(model, lr, weight_decay, decay_exclude, param_groups)


def added_groups(
    model: nn.Module,
    named: Sequence[tuple[str, nn.Parameter]],
    *,
    lr: float,
    weight_decay: float | None,
    decay_exclude: str | Sequence[str] | None = "auto",
    param_groups: Sequence[Mapping[str, Any]] | None = None,
    lr_mult: float | None = None,
    prefix: str = "added",
) -> list[dict[str, Any]]:
    """Groups for parameters that join a live optimizer (unfreezing), split by the same rules as
    :func:`param_groups`: the first rule that matches a parameter gives its LR multiplier and
    settings, and no-decay parameters get ``weight_decay=0``. Rules that match none of ``named``
    are passed over. ``lr_mult``, when given, replaces the rules' multipliers. Group names are
    ``"<prefix>/<rule name>"``.

    Example:
        >>> groups = optim.added_groups(model, [("conv1.0.weight", w)], lr=1e-3,
        ...                             weight_decay=0.01, lr_mult=0.1, prefix="unfreeze[0]")
        >>> groups[0]["lr"]
        0.0001
    """
    base_lr = expect_number(lr, "lr")
    named = list(named)
    no_decay = _no_decay(model, named, decay_exclude, strict=False)
    rules = [_Rule(i, raw) for i, raw in enumerate(param_groups or [])]
    default = _Rule(len(rules), {"params": "*", "name": "default"})
    members: dict[int, list[tuple[str, nn.Parameter]]] = {i: [] for i in range(len(rules) + 1)}
    for name, p in named:
        members[next((i for i, rule in enumerate(rules) if rule.matches(name)), len(rules))].append((name, p))
    groups: list[dict[str, Any]] = []
    for i, rule in enumerate([*rules, default]):
        decaying = [(n, p) for n, p in members[i] if n not in no_decay]
        fixed = [(n, p) for n, p in members[i] if n in no_decay]
        groups += _rule_groups(rule, decaying, fixed, base_lr, weight_decay)
    for group in groups:
        group["name"] = f"{prefix}/{group['name']}"
        if lr_mult is not None:
            mult = expect_number(lr_mult, f"{prefix} lr_mult")
            group.update(lr=base_lr * mult, initial_lr=base_lr * mult, lr_mult=mult)
    return groups


# --------------------------------------------------------------------------- spec resolution


def _resolve(spec: OptimizerSpec) -> tuple[type, str, dict[str, Any]]:
    """The class, the label used in messages, and the keyword arguments of a non-callable spec."""
    if isinstance(spec, type):
        return _optimizer_class(spec, spec.__name__), spec.__name__, {}
    name, kwargs = split_spec(spec, "optimizer")  # type: ignore[arg-type]
    if isinstance(spec, Mapping) and isinstance(spec["name"], type):
        return _optimizer_class(spec["name"], spec["name"].__name__), spec["name"].__name__, kwargs
    if ":" in name:
        return _optimizer_class(import_object(name, "optimizer"), name), name, kwargs
    canonical = _canonical(name)
    entry = OPTIMIZERS.entry(canonical)
    return entry.factory, canonical, {**entry.defaults, **kwargs}  # type: ignore[return-value]


def _canonical(name: str) -> str:
    """The registered name, or an UnknownNameError whose suggestions share the name's start."""
    try:
        return OPTIMIZERS.canonical(name)
    except UnknownNameError:
        choices = [*OPTIMIZERS.names(), *OPTIMIZERS.aliases()]
        close = closest(str(name), choices)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise UnknownNameError(
            f"unknown optimizer {name!r}{hint or '; valid names: ' + ', '.join(names())}"
        ) from None


def _optimizer_class(obj: Any, label: str) -> type:
    if not (isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)):
        raise TraincraftError(
            f"optimizer {label!r} is not a torch.optim.Optimizer subclass; give a name from "
            f"optim.names(), an Optimizer class, or a callable that returns an optimizer"
        )
    return obj


def needs_closure(optimizer: Any) -> bool:
    """Whether ``optimizer.step`` must be given a closure that re-evaluates the loss (L-BFGS):
    its ``closure`` argument has no default."""
    step = getattr(type(optimizer), "step", None)
    try:
        closure = inspect.signature(step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


def _class_arguments(cls: type) -> dict[str, inspect.Parameter] | None:
    """The constructor's keyword arguments (without ``params``), or None if it takes **kwargs."""
    parameters = dict(inspect.signature(cls.__init__).parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return {
        key: p
        for key, p in parameters.items()
        if key not in ("self", "params") and p.kind is not inspect.Parameter.VAR_POSITIONAL
    }


def _accepts(cls: type, key: str) -> bool:
    arguments = _class_arguments(cls)
    return arguments is None or key in arguments


def _check_kwargs(cls: type, label: str, kwargs: Mapping[str, Any]) -> None:
    arguments = _class_arguments(cls)
    if arguments is None:
        return
    for key in kwargs:
        if key not in arguments:
            raise TraincraftError(_unknown_argument(label, key, arguments))


def _unknown_argument(label: str, key: str, arguments: Iterable[str]) -> str:
    arguments = sorted(arguments)
    hint = did_you_mean(key, arguments) or f"; its arguments are: {', '.join(arguments)}"
    return f"optimizer {label!r} has no argument {key!r}{hint}"


def _check_rule_keys(cls: type, label: str, rules: Sequence[Mapping[str, Any]] | None) -> None:
    """A rule's extra keys must be arguments of the class: torch would ignore them silently."""
    arguments = _class_arguments(cls)
    if arguments is None or not rules:
        return
    for rule in rules:
        if not isinstance(rule, Mapping):
            continue  # reported with its position by _parse_rules
        if rule.get("weight_decay") and "weight_decay" not in arguments:
            raise TraincraftError(
                f"param_groups rule {rule.get('params')!r}: optimizer {label!r} has no weight "
                "decay; drop the rule's weight_decay"
            )
        for key in rule:
            if key not in _RULE_KEYS and key not in _RESERVED_KEYS and key not in arguments:
                choices = [*arguments, *sorted(_RULE_KEYS)]
                raise TraincraftError(
                    f"param_groups rule {rule.get('params')!r}: "
                    + _unknown_argument(label, key, choices)
                )


def _class_weight_decay(cls: type, label: str, weight_decay: float | None) -> float:
    """``weight_decay`` itself, or the class's default when None (0.0 if it has none)."""
    arguments = _class_arguments(cls)
    if arguments is not None and "weight_decay" not in arguments:
        if weight_decay:
            raise TraincraftError(
                f"optimizer {label!r} has no weight decay; drop weight_decay={weight_decay!r} "
                "or pick an optimizer that has one (e.g. 'adamw')"
            )
        return 0.0
    if weight_decay is not None:
        return expect_number(weight_decay, "weight_decay")
    default = arguments["weight_decay"].default if arguments is not None else 0.0
    return 0.0 if default is inspect.Parameter.empty else float(default)


def _muon_with_adamw(
    cls: type, label: str, kwargs: dict[str, Any], model: nn.Module, lr: float, weight_decay: float | None,
    decay_exclude: str | Sequence[str] | None, param_groups: Sequence[Mapping[str, Any]] | None,
) -> torch.optim.Optimizer:
    """``muon``: Muon for the hidden weight matrices, AdamW for the rest (see traincraft.muon)."""
    from traincraft.muon import ADAMW_KEYS, MuonAdamW, hidden_matrices, split_groups

    kwargs = dict(kwargs)
    others = kwargs.pop("others", "adamw")
    if others != "adamw":
        raise TraincraftError(f"optimizer {label!r}: others must be 'adamw' (or null for plain Muon), got {others!r}")
    adamw_kwargs = {key: kwargs.pop(f"adamw_{key}") for key in ADAMW_KEYS if f"adamw_{key}" in kwargs}
    kwargs.setdefault("adjust_lr_fn", "match_rms_adamw")  # one LR for both halves
    _check_kwargs(cls, label, kwargs)
    check_numbers(f"optimizer {label!r}", {k: p.default for k, p in (_class_arguments(cls) or {}).items()}, kwargs)
    lr = kwargs.pop("lr", lr)
    weight_decay = _class_weight_decay(cls, label, kwargs.pop("weight_decay", weight_decay))
    _check_rule_keys(cls, label, param_groups)
    groups = _param_groups(model, lr, weight_decay, decay_exclude, param_groups)
    matrices, rest = split_groups(groups, hidden_matrices(model))
    try:
        muon = cls(matrices, lr=lr, weight_decay=weight_decay, **kwargs) if matrices else None
        adamw_kwargs = _with_fused(torch.optim.AdamW, adamw_kwargs, model, rest)
        adamw = torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay, **adamw_kwargs) if rest else None
    except (ValueError, TypeError) as err:
        raise TraincraftError(f"optimizer {label!r}: {err}") from err
    return MuonAdamW(muon, adamw)


def _check_muon(cls: type, label: str, groups: list[dict[str, Any]]) -> None:
    # Muon orthogonalises 2-D updates only; torch's own error names no parameter.
    muon = getattr(torch.optim, "Muon", None)
    if muon is None or not issubclass(cls, muon):
        return
    for group in groups:
        for name, p in zip(group["param_names"], group["params"]):
            if p.ndim != 2:
                raise TraincraftError(
                    f"optimizer {label!r} trains 2-D weight matrices only, but {name!r} has "
                    f"shape {tuple(p.shape)}; freeze the other parameters or use 'adamw'"
                )


def _check_sparse(cls: type, label: str, model: nn.Module, groups: list[dict[str, Any]]) -> None:
    # SparseAdam takes sparse gradients only, which only sparse embeddings produce; torch would
    # fail at the first step, naming no parameter.
    if not issubclass(cls, torch.optim.SparseAdam):
        return
    sparse = {id(p) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
              and m.sparse for p in m.parameters()}
    for group in groups:
        for name, p in zip(group["param_names"], group["params"]):
            if id(p) not in sparse:
                raise TraincraftError(
                    f"optimizer {label!r} needs sparse gradients, which only nn.Embedding(sparse=True) "
                    f"gives, but {name!r} gets dense ones; use 'adam' (or freeze it, or give the "
                    "optimizer a callable that pairs SparseAdam with Adam)"
                )


def _build_from_callable(
    factory: Callable[[list[dict[str, Any]]], Any],
    model: nn.Module,
    lr: float,
    weight_decay: float | None,
    *,
    decay_exclude: str | Sequence[str] | None,
    param_groups: Sequence[Mapping[str, Any]] | None,
) -> torch.optim.Optimizer:
    groups = _param_groups(model, lr, weight_decay, decay_exclude, param_groups)
    optimizer = factory(groups)
    label = getattr(factory, "__name__", type(factory).__name__)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TraincraftError(
            f"optimizer callable {label!r} returned {type(optimizer).__name__}, not a "
            "torch.optim.Optimizer; it is called with the list of parameter groups"
        )
    return optimizer


# --------------------------------------------------------------------------- fused kernels


def _fused_devices(cls: type) -> frozenset[str]:
    """Device types where ``cls`` has a fused kernel (torch's own list); empty if none."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a private torch function; without it keep torch's default
        return frozenset()
    devices = frozenset(_get_fused_kernels_supported_devices())
    if cls is torch.optim.Adagrad:
        return devices & {"cpu", "cuda"}  # Adagrad's fused kernel exists for these two only
    if cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        return devices
    return frozenset()  # subclasses and other classes: their own step may not take fused


def _with_fused(
    cls: type, kwargs: dict[str, Any], model: nn.Module, groups: list[dict[str, Any]]
) -> dict[str, Any]:
    """``kwargs`` plus ``fused=True`` when every parameter can take the fused kernel."""
    user_chose = any(key in kwargs or key in g for key in ("fused", "foreach") for g in groups)
    if user_chose or kwargs.get("differentiable") or not _accepts(cls, "fused"):
        return kwargs
    devices = _fused_devices(cls)
    if not devices or _has_sparse_gradients(model):
        return kwargs
    if all(_fusable(p, devices) for g in groups for p in g["params"]):
        return {**kwargs, "fused": True}
    return kwargs


def _fusable(p: torch.Tensor, devices: frozenset[str]) -> bool:
    # Same test as torch's _default_to_fused_or_foreach: plain tensors (no subclasses such as
    # DTensor) of a floating dtype on a device with the kernel.
    return (
        type(p) in (torch.Tensor, nn.Parameter)
        and p.device.type in devices
        and p.dtype in _FUSED_DTYPES
    )


def _has_sparse_gradients(model: nn.Module) -> bool:
    # Embedding(sparse=True) / EmbeddingBag(sparse=True): fused kernels reject sparse gradients.
    return any(getattr(m, "sparse", False) is True for m in model.modules())


# --------------------------------------------------------------------------- parameter groups


class _Rule:
    """One ``param_groups`` entry: patterns, the group's name and its settings."""

    def __init__(self, index: int, raw: Any):
        if not isinstance(raw, Mapping) or "params" not in raw:
            raise TraincraftError(
                f"param_groups[{index}] must be a dict with a 'params' key (a glob or a list of "
                f"globs on parameter names), got {raw!r}"
            )
        reserved = _RESERVED_KEYS & set(raw)
        if reserved:
            raise TraincraftError(
                f"param_groups[{index}]: {sorted(reserved)} are set by traincraft; set 'lr' or "
                "'lr_mult' instead"
            )
        if "lr" in raw and "lr_mult" in raw:
            raise TraincraftError(
                f"param_groups[{index}] sets both 'lr' and 'lr_mult'; give one of them"
            )
        self.patterns = _patterns(raw["params"], f"param_groups[{index}].params")
        self.name = str(raw.get("name", ",".join(self.patterns)))
        self.options = {k: v for k, v in raw.items() if k not in ("params", "name")}

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)


def _patterns(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise TraincraftError(
        f"{where} must be a glob on parameter names or a list of them, got {value!r}"
    )


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    if not isinstance(model, nn.Module):
        raise TraincraftError(f"the optimizer needs a torch.nn.Module, got {type(model).__name__}")
    # named_parameters() yields a shared (tied) parameter once, under its first name.
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise TraincraftError(
            f"model {type(model).__name__} has no trainable parameter (all frozen or none); "
            "unfreeze some with requires_grad_(True)"
        )
    return trainable


def _norm_owned(model: nn.Module) -> set[str]:
    """Qualified names of parameters held directly by a normalisation layer."""
    owned = set()
    for prefix, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            for local, _ in module.named_parameters(recurse=False):
                owned.add(f"{prefix}.{local}" if prefix else local)
    return owned


def exempt_names(model: nn.Module, exclude: str | Sequence[str] | None) -> set[str]:
    """Names of the trainable parameters matched by ``exclude``: ``"auto"`` (biases, normalisation
    parameters, every parameter with ndim <= 1), glob patterns, or None (none). Weight decay and
    the L1/L2 penalties both use this rule."""
    return _no_decay(model, _trainable(model), exclude, what="exclude")


def _no_decay(
    model: nn.Module,
    trainable: list[tuple[str, nn.Parameter]],
    decay_exclude: str | Sequence[str] | None,
    what: str = "decay_exclude",
    strict: bool = True,
) -> set[str]:
    """Names of the trainable parameters that get ``weight_decay=0.0``; ``strict``: a pattern that
    matches none of them is an error."""
    if decay_exclude is None:
        return set()
    items = [decay_exclude] if isinstance(decay_exclude, str) else list(decay_exclude)
    if not all(isinstance(item, str) for item in items):
        raise TraincraftError(
            f"decay_exclude must be 'auto', a glob or a list of globs, got {decay_exclude!r}"
        )
    excluded: set[str] = set()
    if "auto" in items:
        norm = _norm_owned(model)
        excluded |= {
            n for n, p in trainable if n.rsplit(".", 1)[-1] == "bias" or p.ndim <= 1 or n in norm
        }
    for pattern in (item for item in items if item != "auto"):
        hits = {n for n, _ in trainable if fnmatch.fnmatchcase(n, pattern)}
        if not hits and strict:
            raise _no_match(what, pattern, model, trainable)
        excluded |= hits
    return excluded


def _no_match(
    where: str, pattern: str, model: nn.Module, trainable: list[tuple[str, nn.Parameter]]
) -> TraincraftError:
    names = [n for n, _ in trainable]
    frozen = [n for n, p in model.named_parameters() if fnmatch.fnmatchcase(n, pattern)]
    if frozen:
        return TraincraftError(
            f"{where} pattern {pattern!r} matches only frozen parameters ({', '.join(frozen[:3])}"
            f"{', ...' if len(frozen) > 3 else ''}); unfreeze them or drop the pattern"
        )
    # Offer module prefixes ("backbone.*") as well as full names: typos are usually in those.
    candidates = sorted({f"{n.rsplit('.', 1)[0]}.*" for n in names if "." in n} | set(names))
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return TraincraftError(
        f"{where} pattern {pattern!r} matches no trainable parameter"
        f"{did_you_mean(pattern, candidates)}; parameter names look like: {shown}"
    )


def _param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float | None,
    decay_exclude: str | Sequence[str] | None,
    rules_spec: Sequence[Mapping[str, Any]] | None,
) -> list[dict[str, Any]]:
    base_lr = expect_number(lr, "lr")
    if weight_decay is not None:
        weight_decay = expect_number(weight_decay, "weight_decay")
    trainable = _trainable(model)
    no_decay = _no_decay(model, trainable, decay_exclude)
    if weight_decay == 0.0 and not rules_spec:
        # Nothing decays: one group instead of a decay/no-decay pair (one fused kernel, not two).
        no_decay = set()
    rules = [_Rule(i, raw) for i, raw in enumerate(rules_spec or [])]
    default = _Rule(len(rules), {"params": "*", "name": "default"})

    # The first rule that matches a parameter takes it; the default rule takes the rest.
    members: dict[int, list[tuple[str, nn.Parameter]]] = {i: [] for i in range(len(rules) + 1)}
    for name, p in trainable:
        index = next((i for i, rule in enumerate(rules) if rule.matches(name)), len(rules))
        members[index].append((name, p))
    for i, rule in enumerate(rules):
        if not members[i]:
            raise _no_match(f"param_groups[{i}]", ",".join(rule.patterns), model, trainable)

    seen_names: set[str] = set()
    groups: list[dict[str, Any]] = []
    for i, rule in enumerate([*rules, default]):
        if rule.name in seen_names:
            raise TraincraftError(
                f"param_groups: two groups are named {rule.name!r}; give each rule its own 'name'"
            )
        seen_names.add(rule.name)
        decaying = [(n, p) for n, p in members[i] if n not in no_decay]
        fixed = [(n, p) for n, p in members[i] if n in no_decay]
        groups += _rule_groups(rule, decaying, fixed, base_lr, weight_decay)
    return groups


def _rule_groups(
    rule: _Rule,
    decaying: list[tuple[str, nn.Parameter]],
    fixed: list[tuple[str, nn.Parameter]],
    base_lr: float,
    weight_decay: float | None,
) -> list[dict[str, Any]]:
    """The rule's decay and no-decay groups, empty ones dropped."""
    options = dict(rule.options)
    if "lr" in options:
        group_lr = expect_number(options.pop("lr"), f"param_groups rule {rule.name!r} lr")
        # Keep lr == base lr × lr_mult true for every group, whatever the rule gave.
        lr_mult = group_lr / base_lr if base_lr else 1.0
    else:
        lr_mult = expect_number(options.pop("lr_mult", 1.0), f"param_groups rule {rule.name!r} lr_mult")
        group_lr = base_lr * lr_mult
    decay = options.pop("weight_decay", weight_decay)
    if decay is not None:
        decay = expect_number(decay, f"param_groups rule {rule.name!r} weight_decay")

    groups = []
    for suffix, members, wd in (("", decaying, decay), ("/no_decay", fixed, 0.0)):
        if not members:
            continue
        group: dict[str, Any] = {
            "params": [p for _, p in members],
            "param_names": [n for n, _ in members],
            "name": rule.name + suffix,
            "lr": group_lr,
            "initial_lr": group_lr,
            "lr_mult": lr_mult,
        }
        if wd is not None:  # None: the optimizer's own default fills the key in
            group["weight_decay"] = wd
        groups.append({**group, **options})
    return groups
