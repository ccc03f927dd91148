"""L1/L2 penalties added to the loss: ``l1·Σ|w| + l2·Σw²`` over weights only.

Biases and normalisation parameters are excluded by default: penalising them pulls batch-norm
scales to zero and shifts outputs without regularising anything (the tutorials' ``for p in
model.parameters()`` gets this wrong).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from traincraft.errors import TraincraftError

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def auto_exempt_names(model: nn.Module) -> set[str]:
    """Names of biases, normalisation-layer parameters and every other parameter with ndim <= 1."""
    exempt = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, NORM_LAYERS) or param_name == "bias" or param.ndim <= 1:
                exempt.add(name)
    return exempt


def exempt_names(model: nn.Module, exclude: str | Sequence[str] | None) -> set[str]:
    """Parameter names matched by ``exclude``: "auto", glob patterns, or None for none."""
    if exclude is None:
        return set()
    if exclude == "auto":
        return auto_exempt_names(model)
    patterns = [exclude] if isinstance(exclude, str) else list(exclude)
    names = [name for name, _ in model.named_parameters()]
    return {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


class Penalty:
    """``l1·Σ|w| + l2·Σw²`` over the trainable parameters not excluded.

    Example:
        >>> penalty = Penalty(model, l1=1e-5, l2=1e-4)
        >>> loss = loss_fn(model(x), y) + penalty()
    """

    def __init__(
        self, model: nn.Module, *, l1: float = 0.0, l2: float = 0.0,
        exclude: str | Sequence[str] | None = "auto",
    ):
        for name, value in (("l1", l1), ("l2", l2)):
            if value < 0:
                raise TraincraftError(f"{name} must be >= 0, got {value}")
        self.l1, self.l2 = float(l1), float(l2)
        skip = exempt_names(model, exclude)
        self.params = [p for n, p in model.named_parameters() if p.requires_grad and n not in skip]
        self.names = [n for n, p in model.named_parameters() if p.requires_grad and n not in skip]

    def __bool__(self) -> bool:
        return bool(self.params) and (self.l1 > 0 or self.l2 > 0)

    def __call__(self) -> torch.Tensor:
        # One fused kernel per norm instead of a Python loop over parameters.
        total = torch.zeros((), device=self.params[0].device)
        if self.l1:
            total = total + self.l1 * torch.stack(torch._foreach_norm(self.params, 1)).sum()
        if self.l2:
            total = total + self.l2 * torch.stack(torch._foreach_norm(self.params, 2)).square().sum()
        return total
