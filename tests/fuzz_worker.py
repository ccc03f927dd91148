"""A small training run for the kill-and-resume fuzz: run it, interrupt it anywhere, resume it.

    python tests/fuzz_worker.py CONFIG RUN_DIR [--resume] [--pause SECONDS] [--die-after-step K]
                                [--flush-before-die] [--overwrite]

CONFIG is one of :data:`CONFIGS` (tiny model and data, seeded, one thread, < 3 s uninterrupted).
``--pause`` sleeps that long before every optimizer step (so that a signal lands between steps or
while a checkpoint is being written); ``--die-after-step K`` SIGKILLs the process itself in
``on_step_end`` of optimizer step K, after every other callback of that step; with
``--flush-before-die`` it first waits for the files already handed to the writer thread
(``traincraft.files.wait()``), so that the kill point, and the checkpoint a resume finds, do not
depend on how far that thread got. ``--overwrite`` starts afresh in a folder that a killed run
left without any checkpoint (``fit(overwrite=True)``, where the library has that argument).

A completed fit writes RUN_DIR/final.pt (the model's state dict and ``trainer.state_dict()``,
wall-clock fields removed) and RUN_DIR/history.json. A fit stopped by SIGINT/SIGTERM (stop
reason "interrupted"/"terminated"), or aborted by a second Ctrl-C, exits 130 and writes neither.
On stdout: ``started`` at ``on_fit_start`` (a driver may time its signal from there), then
``done at step N``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import traincraft as tc

CONFIGS = ("tensors", "tensors-steps", "dataset", "loader", "loader-aug", "ema", "swa", "plateau")
WALL_CLOCK_KEYS = ("seconds",)


class Points(Dataset):
    """A map-style dataset (not a TensorDataset); module level so DataLoader workers can pickle it."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor):
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X[i], self.y[i]


class NoisyPoints(Points):
    """Augmentation drawn where the item is loaded (in the DataLoader's worker processes)."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.X[i] + 0.05 * torch.randn(self.X.shape[1]), self.y[i]


class FuzzHooks(tc.Callback):
    """Announces the start, pauses before every step, dies after step K (put it last)."""

    def __init__(self, pause: float, die_after_step: int | None, flush_before_die: bool = False):
        self.pause, self.die_after_step, self.flush_before_die = pause, die_after_step, flush_before_die

    def on_fit_start(self, trainer: tc.Trainer) -> None:
        print("started", flush=True)

    def on_before_step(self, trainer: tc.Trainer) -> None:
        if self.pause:
            time.sleep(self.pause)

    def on_step_end(self, trainer: tc.Trainer) -> None:
        if self.die_after_step is not None and trainer.state.step == self.die_after_step:
            if self.flush_before_die:
                from traincraft import files

                files.wait()
            os.kill(os.getpid(), signal.SIGKILL)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(120, 4, generator=g)
    y = X @ torch.tensor([[1.0], [-1.0], [0.5], [2.0]]) + 0.1 * torch.randn(120, 1, generator=g)
    return X, y


def build(config: str, run_dir: Path, pause: float = 0.0, die_after_step: int | None = None,
          flush_before_die: bool = False) -> tuple[tc.Trainer, Any, Any]:
    """The trainer and the (train, val) data of a configuration."""
    if config not in CONFIGS:
        raise SystemExit(f"unknown config {config!r}; one of {', '.join(CONFIGS)}")
    X, y = data()
    train: Any = (X[:96], y[:96])
    val: Any = (X[96:], y[96:])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))
    kwargs: dict[str, Any] = dict(
        loss="mse", optimizer="adamw", lr=1e-2, batch_size=8, accumulate=2, shuffle=True,
        schedule={"name": "cosine", "warmup": "10%"}, max_epochs=5,
        checkpoint={"keep_last": 3},
    )
    callbacks: list[tc.Callback] = [tc.EarlyStopping(patience=100, verbose=False)]
    if config == "tensors-steps":
        kwargs["checkpoint"] = {"every_n_steps": 3, "keep_last": 3}
    elif config == "dataset":
        train = Points(X[:96], y[:96])
        kwargs.update(batch_size=16, accumulate=1, checkpoint={"every_n_steps": 4, "keep_last": 3})
    elif config in ("loader", "loader-aug"):
        dataset = (NoisyPoints if config == "loader-aug" else Points)(X[:96], y[:96])
        train = DataLoader(dataset, batch_size=8, shuffle=True, num_workers=2)
        kwargs.update(max_epochs=4, checkpoint={"every_n_steps": 4, "keep_last": 3})
    elif config == "ema":
        kwargs.update(ema=0.9, checkpoint={"every_n_steps": 2, "keep_last": 3})
    elif config == "swa":
        kwargs.update(swa={"start": "50%", "lr": 0.01})
        callbacks = []  # SWA chooses the final weights: no restore_best
    elif config == "plateau":
        kwargs["schedule"] = {"name": "plateau", "patience": 1, "factor": 0.5}
    callbacks.append(FuzzHooks(pause, die_after_step, flush_before_die))  # last: dies after every other callback ran
    trainer = tc.Trainer(model, callbacks=callbacks, run_dir=run_dir, seed=0, progress=False, **kwargs)
    return trainer, train, val


def strip_wall_clock(obj: Any) -> Any:
    """``obj`` without the keys that hold wall-clock time (history rows' ``seconds``)."""
    if isinstance(obj, dict):
        return {k: strip_wall_clock(v) for k, v in obj.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(obj, list):
        return [strip_wall_clock(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(strip_wall_clock(v) for v in obj)
    return obj


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", choices=CONFIGS)
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--die-after-step", type=int, default=None)
    parser.add_argument("--flush-before-die", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run_dir = Path(args.run_dir)
    trainer, train, val = build(args.config, run_dir, args.pause, args.die_after_step, args.flush_before_die)
    extra = {"overwrite": True} if args.overwrite and "overwrite" in inspect.signature(trainer.fit).parameters else {}
    try:
        history = trainer.fit(train, val=val, resume=run_dir if args.resume else None, **extra)
    except KeyboardInterrupt:  # a second Ctrl-C: aborted at once
        print("aborted", file=sys.stderr, flush=True)
        sys.exit(130)
    if history.stop_reason in ("interrupted", "terminated"):
        print(f"stopped: {history.stop_reason} at step {trainer.state.step}", file=sys.stderr, flush=True)
        sys.exit(130)
    model = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    torch.save({"model": model, "trainer": strip_wall_clock(trainer.state_dict())}, run_dir / "final.pt")
    rows = strip_wall_clock([dict(row) for row in history.epochs])
    (run_dir / "history.json").write_text(
        json.dumps({"rows": rows, "stop_reason": history.stop_reason, "best": history.best}, indent=1)
    )
    print(f"done at step {trainer.state.step}", flush=True)


if __name__ == "__main__":
    main()
