"""Saving and loading weights: atomic writes, safe reads, unwrapped keys."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from traincraft.files import atomic_write

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_key(key: str) -> str:
    """Strip the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes from a key."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with wrapper prefixes removed, contiguous, on the CPU."""
    return {
        unwrap_key(k): v.detach().to("cpu").contiguous()
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor)
    }


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write the model's weights as ``.safetensors``, atomically."""
    from safetensors.torch import save

    tensors = plain_state_dict(model)
    # safetensors refuses tensors that share memory; clone those (tied weights).
    seen: dict[int, str] = {}
    for key, value in tensors.items():
        pointer = value.untyped_storage().data_ptr()
        if pointer in seen and value.numel():
            tensors[key] = value.clone()
        seen.setdefault(pointer, key)
    data = save(tensors)
    return atomic_write(path, lambda handle: handle.write(data))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from ``.safetensors``."""
    from safetensors.torch import load_file

    return load_file(str(path))
