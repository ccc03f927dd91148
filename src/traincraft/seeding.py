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
