"""traincraft: train any PyTorch model with the right strategies.

Example:
    >>> import traincraft as tc
    >>> trainer = tc.Trainer(model, loss="cross_entropy", metrics=["accuracy"],
    ...                      callbacks=[tc.EarlyStopping(patience=5)], seed=0)
    >>> history = trainer.fit((X, y), val=(X_val, y_val))

Names are loaded on first use, so ``import traincraft`` (and ``traincraft --help``) stay cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Trainer": "traincraft.trainer",
    "TrainState": "traincraft.state",
    "History": "traincraft.history",
    "Callback": "traincraft.callbacks.base",
    "EarlyStopping": "traincraft.callbacks.early_stopping",
    "ProgressBar": "traincraft.callbacks.progress",
    "CSVLogger": "traincraft.loggers",
    "load_recipe": "traincraft.recipe",
    "Recipe": "traincraft.recipe",
    "load_model": "traincraft.run",
    "TraincraftError": "traincraft.errors",
    "Checkpoint": "traincraft.callbacks.checkpoint",
    "EMA": "traincraft.callbacks.ema",
    "SWA": "traincraft.callbacks.swa",
    "tune": "traincraft.tuning",
    "lr_find": "traincraft.lr_finder",
    "LRFindResult": "traincraft.lr_finder",
}
_MODULES = {"losses", "optim", "metrics", "data", "datasets", "models", "schedules", "finetune", "checkpoint",
            "files"}

__all__ = [
    "CSVLogger", "Callback", "Checkpoint", "EMA", "EarlyStopping", "History", "SWA", "LRFindResult", "lr_find", "ProgressBar", "Recipe", "TrainState",
    "TraincraftError", "Trainer", "__version__", "data", "datasets", "load_model", "load_recipe",
    "losses", "metrics", "models", "optim", "schedules", "tune",
]

if TYPE_CHECKING:
    from traincraft import data, datasets, losses, metrics, models, optim, schedules
    from traincraft.callbacks.base import Callback
    from traincraft.callbacks.checkpoint import Checkpoint
    from traincraft.callbacks.early_stopping import EarlyStopping
    from traincraft.callbacks.ema import EMA
    from traincraft.callbacks.progress import ProgressBar
    from traincraft.callbacks.swa import SWA
    from traincraft.errors import TraincraftError
    from traincraft.history import History
    from traincraft.loggers import CSVLogger
    from traincraft.lr_finder import LRFindResult, lr_find
    from traincraft.recipe import Recipe, load_recipe
    from traincraft.run import load_model
    from traincraft.state import TrainState
    from traincraft.trainer import Trainer
    from traincraft.tuning import tune


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"traincraft.{name}")
    else:
        raise AttributeError(f"module 'traincraft' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
