"""L1/L2 penalties added to the loss: ``l1·Σ|w| + l2·Σw²`` over weights only.

Biases and normalisation parameters are excluded by default: penalising them pulls batch-norm
scales to zero and shifts outputs without regularising anything (the tutorials' ``for p in
model.parameters()`` gets this wrong).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from traincraft.errors import TraincraftError
from traincraft.optim import exempt_names


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
        skip = exempt_names(model, exclude) if (self.l1 or self.l2) else set()
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
