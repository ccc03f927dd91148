"""Choosing the device."""

from __future__ import annotations

import torch

from traincraft.errors import TraincraftError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise TraincraftError(f"device {device!r} is not a device torch knows ({err})") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise TraincraftError(f"device {device!r} asked for, but torch sees no CUDA device here")
    return resolved
