"""What a run leaves behind in memory: one row of plain floats per epoch."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from traincraft.files import atomic_write

FIRST_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss")


class History:
    """The per-epoch figures of a run, returned by ``Trainer.fit``.

    Attributes:
        epochs: one dict per epoch: ``epoch`` (from 1), ``step``, ``lr``, ``train_loss``,
            ``val_loss``, ``train_<metric>``, ``val_<metric>``, ``seconds``, ...
        best: ``{"epoch", "monitor", "value"}`` of the best epoch, once ``fit`` has returned.
        stop_reason: why training ended.

    Example:
        >>> history = trainer.fit((X, y), val=(Xv, yv))
        >>> history.best
        {'epoch': 17, 'monitor': 'val_loss', 'value': 0.031}
        >>> history.as_dict()["val_loss"][:3]
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.best: dict[str, Any] | None = None
        self.stop_reason: str | None = None

    def append(self, row: dict[str, float]) -> None:
        self.epochs.append(dict(row))

    def __len__(self) -> int:
        return len(self.epochs)

    def __getitem__(self, index: int) -> dict[str, float]:
        return self.epochs[index]

    def __repr__(self) -> str:
        return f"History({len(self.epochs)} epochs, best={self.best}, stop_reason={self.stop_reason!r})"

    def columns(self) -> list[str]:
        """Every column name, the usual ones first, then in order of first appearance."""
        seen = {key: None for row in self.epochs for key in row}
        first = [c for c in FIRST_COLUMNS if c in seen]
        rest = [c for c in seen if c not in FIRST_COLUMNS and c != "seconds"]
        return first + rest + (["seconds"] if "seconds" in seen else [])

    def as_dict(self) -> dict[str, list[float]]:
        """Columns: ``{"train_loss": [...], ...}`` (NaN where an epoch lacks a value)."""
        return {c: [row.get(c, math.nan) for row in self.epochs] for c in self.columns()}

    def best_by(self, monitor: str, mode: str) -> dict[str, Any] | None:
        """The epoch with the best finite ``monitor`` value (the first one on ties)."""
        best: dict[str, Any] | None = None
        for row in self.epochs:
            value = row.get(monitor)
            if value is None or not math.isfinite(value):
                continue
            if best is None or (value < best["value"] if mode == "min" else value > best["value"]):
                best = {"epoch": int(row["epoch"]), "monitor": monitor, "value": value}
        return best

    def to_csv(self, path: str | Path, *, background: bool = False, at_most_every: float | None = None) -> Path:
        """Write the history as CSV (atomically; ``background``, ``at_most_every``: see
        :func:`traincraft.files.atomic_write`)."""
        rows, columns = [dict(row) for row in self.epochs], self.columns()  # as they are now

        def write(handle: Any) -> None:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({c: row.get(c, "") for c in columns})
            handle.write(buffer.getvalue().encode("utf-8"))

        return atomic_write(path, write, background=background, at_most_every=at_most_every)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": [dict(r) for r in self.epochs], "best": self.best, "stop_reason": self.stop_reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = [dict(r) for r in state["epochs"]]
        self.best, self.stop_reason = state.get("best"), state.get("stop_reason")

    def plot(self, metrics: list[str] | None = None) -> Any:
        """A matplotlib figure for notebooks: the loss, each metric (``metrics``, default every one
        recorded) and the gradient norm per epoch, with the best epoch and an early stop marked.

        The figure is a bare ``matplotlib.figure.Figure`` (no pyplot state): a notebook shows it
        inline; ``fig.savefig("curves.png")`` writes it.

        Example:
            >>> fig = history.plot(["accuracy"])
        """
        from traincraft.inline import inline
        from traincraft.report import history_figure

        return inline(history_figure(self.as_dict(), metrics, best=self.best, stop_reason=self.stop_reason))
