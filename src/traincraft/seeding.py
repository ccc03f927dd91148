"""Seeding and determinism."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def new_seed() -> int:
    """A fresh random seed (recorded by the trainer so that the run can be repeated)."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Turn torch's deterministic algorithms on (or off), with the cuBLAS setting they need."""
    if enabled:
        # cuBLAS needs a fixed workspace for reproducible results (torch's docs, "Reproducibility").
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = enabled


def rng_state() -> dict:
    """Every random generator's state, as tensors and plain types (safe to checkpoint)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        # python's 625 words as one tensor: a tuple of ints would be pickled number by number
        "python": (version, torch.from_numpy(np.array(internal, dtype=np.int64)), gauss),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    words = internal.tolist() if isinstance(internal, torch.Tensor) else internal  # older checkpoints: a tuple
    random.setstate((version, tuple(words), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
