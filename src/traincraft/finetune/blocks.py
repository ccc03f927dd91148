"""A model's blocks, input to output, and the layer-wise learning-rate rules built on them."""

from __future__ import annotations

import glob
import math
import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from traincraft.errors import TraincraftError, expect_number
from traincraft.finetune.patterns import glob_hit as _glob_hit

# --------------------------------------------------------------------------------------------
# Blocks and layer-wise learning rates


def model_blocks(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The model's stages from input to output: ``(block name, parameter-name globs)``.

    * traincraft's built-in models: their ``block_names`` (``conv1``, ``conv2``, ..., ``head``);
      wrapped by a :class:`~traincraft.models.ScaledModel`, the globs carry its ``model.``
      prefix;
    * models with timm's ``group_matcher()`` (a dict of regular expressions): timm's own
      fine-grained grouping, as timm's layer decay uses it (parameters no expression matches,
      the head, form the last block);
    * ResNet-shaped models (``conv1``, ``bn1``, ``layer1``...``layer4``, ``fc``): ``stem``
      (everything before ``layer1``), ``layer1`` ... ``layer4``, ``fc``;
    * otherwise the top-level children that own parameters, in registration order, with a child
      named ``features`` split into its own children (torchvision's VGG, EfficientNet,
      MobileNet, DenseNet), and parameters held by the model itself as a first ``root`` block.

    Example:
        >>> model_blocks(models.build("mlp", input_shape=(4,), output_size=2))
        [('hidden1', ['hidden1.*']), ('hidden2', ['hidden2.*']), ('head', ['head.*'])]
    """
    return _blocks(model, "")


def _blocks(model: nn.Module, prefix: str) -> list[tuple[str, list[str]]]:
    from traincraft.models import BlockSequential, ScaledModel

    if isinstance(model, ScaledModel):
        return _blocks(model.model, f"{prefix}model.")
    if isinstance(model, BlockSequential):
        return [
            (name, [f"{prefix}{name}.*"])
            for name in model.block_names
            if _owns_params(model._modules[name])
        ]
    grouped = _timm_blocks(model, prefix)
    if grouped:
        return grouped
    return _child_blocks(model, prefix)


def _owns_params(module: nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters())


def _child_blocks(model: nn.Module, prefix: str) -> list[tuple[str, list[str]]]:
    children = list(model.named_children())
    names = [name for name, _ in children]
    blocks: list[tuple[str, list[str]]] = []
    root = [name for name, _ in model.named_parameters(recurse=False)]
    if root:
        blocks.append(("root", [glob.escape(prefix + name) for name in root]))
    resnet = {"conv1", "layer1"} <= set(names)
    if resnet:
        # torchvision's ResNet: conv1 and bn1 (with relu, maxpool) are one stem stage.
        stem = [n for n in names[: names.index("layer1")] if _owns_params(model._modules[n])]
        if stem:
            blocks.append(("stem", [f"{prefix}{n}.*" for n in stem]))
        children = children[names.index("layer1") :]
    for name, child in children:
        if name == "features" and not resnet and len(list(child.children())) > 1:
            for sub, grandchild in child.named_children():
                if _owns_params(grandchild):
                    blocks.append((f"{name}.{sub}", [f"{prefix}{name}.{sub}.*"]))
        elif _owns_params(child):
            blocks.append((name, [f"{prefix}{name}.*"]))
    return blocks


_MATCH_PREVIOUS = 99999.0  # timm's marker: "same group as the one before" (a final norm layer)


def _timm_blocks(model: nn.Module, prefix: str) -> list[tuple[str, list[str]]] | None:
    """timm's ``group_matcher(coarse=False)`` grouping, or None when the model has none we read."""
    matcher_fn = getattr(model, "group_matcher", None)
    if not callable(matcher_fn):
        return None
    try:
        matcher = matcher_fn(coarse=False)
        compiled = _compile_matcher(matcher)
    except (TypeError, ValueError, re.error):
        return None
    if compiled is None:
        return None
    # Each parameter gets an ordinal tuple: (group index, captured numbers..., suffix...).
    groups: dict[tuple[float, ...], list[str]] = {}
    labels: dict[tuple[float, ...], str] = {}
    for name, _ in model.named_parameters():
        key, label = _ordinal(name, compiled)
        groups.setdefault(key, []).append(name)
        labels.setdefault(key, label)
    blocks: list[tuple[str, list[str]]] = []
    for key in sorted(groups):
        names = [glob.escape(prefix + n) for n in groups[key]]
        if blocks and key[-1] == _MATCH_PREVIOUS:
            blocks[-1][1].extend(names)
        else:
            blocks.append((labels[key], names))
    return _unique_labels(blocks)


def _compile_matcher(
    matcher: Any,
) -> list[tuple[re.Pattern[str], int, tuple[float, ...], str]] | None:
    if not isinstance(matcher, Mapping):
        return None  # a callable matcher: use the generic grouping
    compiled = []
    for index, (group, spec) in enumerate(matcher.items()):
        if spec is None:
            continue
        entries = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        for regex, suffix in entries:
            compiled.append(
                (re.compile(regex), index, tuple(float(s) for s in (suffix or ())), str(group))
            )
    return compiled


def _ordinal(
    name: str, compiled: list[tuple[re.Pattern[str], int, tuple[float, ...], str]]
) -> tuple[tuple[float, ...], str]:
    for regex, index, suffix, group in compiled:
        found = regex.match(name)
        if found:
            numbers = [g for g in found.groups() if g is not None]
            label = ".".join([group, *numbers])
            return (float(index), *(float(n) for n in numbers), *suffix), label
    return (math.inf,), "head"  # unmatched: the head and what follows the blocks


def _unique_labels(blocks: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    seen: dict[str, int] = {}
    unique = []
    for label, names in blocks:
        seen[label] = seen.get(label, 0) + 1
        unique.append((label if seen[label] == 1 else f"{label}#{seen[label]}", names))
    return unique


def layer_decay_rules(
    model: nn.Module, decay: float, *, base_mult: float = 1.0, skip_frozen: bool = False
) -> list[dict[str, Any]]:
    """``param_groups`` rules that shrink the learning rate block by block towards the input.

    With blocks ``b_0 ... b_{n-1}`` from :func:`model_blocks`, block ``i`` gets
    ``lr_mult = base_mult * decay ** (n - 1 - i)``: the last block (the head) trains at
    ``base_mult`` times the learning rate, each earlier block at ``decay`` times the next.

    Args:
        model: the model (the same object the optimizer is built for).
        decay: the factor between neighbouring blocks, in (0, 1].
        base_mult: the last block's multiplier.
        skip_frozen: leave out the rules of blocks whose parameters are all frozen (the
            optimizer refuses rules that match only frozen parameters); the others keep their
            multipliers.

    Returns:
        Rules ``{"params": [globs], "lr_mult": x, "name": "layer_decay/BLOCK"}``, input first,
        for :func:`traincraft.optim.build`'s ``param_groups``.

    Example:
        >>> net = models.build("mlp", input_shape=(4,), output_size=2)
        >>> [r["lr_mult"] for r in layer_decay_rules(net, 0.5)]
        [0.25, 0.5, 1.0]
    """
    decay = expect_number(decay, "layer_decay")
    base_mult = expect_number(base_mult, "layer_decay base_mult")
    if not 0 < decay <= 1:
        raise TraincraftError(f"layer_decay must be in (0, 1], got {decay}")
    if base_mult <= 0:
        raise TraincraftError(f"layer_decay base_mult must be positive, got {base_mult}")
    blocks = model_blocks(model)
    if not blocks:
        raise TraincraftError(f"layer_decay: model {type(model).__name__} has no parameters")
    n = len(blocks)
    rules = [
        {
            "params": globs,
            "lr_mult": base_mult * decay ** (n - 1 - i),
            "name": f"layer_decay/{name}",
        }
        for i, (name, globs) in enumerate(blocks)
    ]
    if skip_frozen:
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        rules = [r for r in rules if any(_glob_hit(n, r["params"]) for n in trainable)]
    return rules


def lr_mult_rules(mapping: Mapping[str, float]) -> list[dict[str, Any]]:
    """``param_groups`` rules from ``{glob: multiplier}``, in the mapping's order.

    The optimizer gives a parameter to the first rule that matches it: put specific globs before
    general ones, and these rules before :func:`layer_decay_rules` to override a block.

    Example:
        >>> lr_mult_rules({"conv*": 0.1})
        [{'params': ['conv*'], 'lr_mult': 0.1, 'name': 'lr_mult/conv*'}]
    """
    if not isinstance(mapping, Mapping):
        raise TraincraftError(
            f"lr_mult must be a mapping from parameter globs to multipliers, such as "
            f"{{'conv*': 0.1}}, got {mapping!r}"
        )
    rules = []
    for pattern, value in mapping.items():
        if not isinstance(pattern, str) or not pattern:
            raise TraincraftError(
                f"lr_mult: keys must be globs on parameter names, got {pattern!r}"
            )
        mult = expect_number(value, f"lr_mult[{pattern!r}]")
        if mult < 0 or not math.isfinite(mult):
            raise TraincraftError(f"lr_mult[{pattern!r}] must be a finite number >= 0, got {mult}")
        rules.append({"params": [pattern], "lr_mult": mult, "name": f"lr_mult/{pattern}"})
    return rules


