"""Loggers: where the figures of each epoch go besides the history.

``CSVLogger`` is always on when a run folder is given: ``metrics.csv``, one row per epoch,
rewritten atomically at the end of each epoch (so it is complete and readable at any instant).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from traincraft.callbacks.base import Callback

if TYPE_CHECKING:
    from traincraft.trainer import Trainer


class CSVLogger(Callback):
    """Writes ``metrics.csv`` in ``folder`` at every epoch end."""

    def __init__(self, folder: str | Path, filename: str = "metrics.csv"):
        self.path = Path(folder) / filename

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.is_main_process:
            trainer.history.to_csv(self.path)
