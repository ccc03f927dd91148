"""Where traincraft's overhead on the MLP benchmark goes: one default switched on at a time.

    python bench/attribution.py [--repeats 7]

The MLP of ``bench/overhead.py`` (32-64-1, batch 64, fused Adam, 16,384 samples, 4 epochs, one
thread), tensors given to ``fit``. Cases, interleaved, medians over the repeats after a warm-up:

* hand-written tensor loop (index slicing, the epoch's loss summed on the device, validation in
  batches under ``inference_mode``);
* traincraft, bare: no metric, no callback, no progress bar, no run folder;
* + a progress bar (to a null stream that says it is a terminal, so that it renders);
  + ``metrics=["mae"]``; + ``EarlyStopping``; + a run folder (checkpoint, best weights and
  ``metrics.csv`` each epoch);
* all of them: what ``bench/overhead.py`` times as "traincraft, tensors".

Prints µs per optimizer step and the ratio to the hand-written loop; writes
``bench/results/attribution.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

RESULTS = Path(__file__).parent / "results"


class Terminal(io.StringIO):
    """Drops what is written, and says it is a terminal so that progress bars render."""

    def write(self, text: str) -> int:
        return len(text)

    def isatty(self) -> bool:
        return True
STEPS = 4 * 16384 // 64


def data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20480, 32, generator=g)
    y = x[:, :1] * 2 + 0.1 * torch.randn(20480, 1, generator=g)
    return (x[:16384], y[:16384]), (x[16384:], y[16384:])


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))


def hand(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor]) -> float:
    net = model()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for _ in range(4):
        total = torch.zeros((), dtype=torch.float64)
        order = torch.randperm(len(train[0]), generator=gen)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            xb, yb = train[0].index_select(0, idx), train[1].index_select(0, idx)
            loss = nn.functional.mse_loss(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(xb)
        with torch.inference_mode():
            val_total = torch.zeros((), dtype=torch.float64)
            for i in range(0, len(val[0]), 64):
                val_total += nn.functional.mse_loss(net(val[0][i : i + 64]), val[1][i : i + 64]) * 64
        float(total), float(val_total)
    return time.perf_counter() - started


def traincraft(train: Any, val: Any, **kwargs: Any) -> float:
    from traincraft import Trainer

    args: dict[str, Any] = dict(loss="mse", optimizer="adam", max_epochs=4, batch_size=64, seed=0,
                                device="cpu", progress=False)
    args.update(kwargs)
    if args.get("run_dir") is not None:
        shutil.rmtree(args["run_dir"], ignore_errors=True)
    trainer = Trainer(model(), **args)
    started = time.perf_counter()
    trainer.fit(train, val=val)
    return time.perf_counter() - started


def main() -> None:
    from traincraft import EarlyStopping

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train, val = data()
    root = Path(tempfile.mkdtemp())
    cases: dict[str, Callable[[], float]] = {
        "hand-written tensor loop": lambda: hand(train, val),
        "traincraft, bare": lambda: traincraft(train, val),
        "+ progress bar": lambda: traincraft(train, val, progress=True),
        "+ metrics=['mae']": lambda: traincraft(train, val, metrics=["mae"]),
        "+ EarlyStopping": lambda: traincraft(train, val, callbacks=[EarlyStopping(patience=4)]),
        "+ run folder": lambda: traincraft(train, val, run_dir=root / "run"),
        "all of them": lambda: traincraft(train, val, progress=True, metrics=["mae"],
                                          callbacks=[EarlyStopping(patience=4)], run_dir=root / "all"),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    with contextlib.redirect_stderr(Terminal()):
        for round_ in range(args.repeats + 1):
            for name, case in cases.items():
                gc.collect()  # what an earlier case left is not collected inside this one
                seconds = case()
                if round_:  # the first round warms up
                    times[name].append(seconds / STEPS * 1e6)
    shutil.rmtree(root, ignore_errors=True)
    hand_us = statistics.median(times["hand-written tensor loop"])
    lines = ["| MLP, tensors, one default at a time | µs/step | × hand-written |", "|---|---:|---:|"]
    for name, values in times.items():
        us = statistics.median(values)
        lines.append(f"| {name} | {us:.1f} | {us / hand_us:.3f} |")
    text = "\n".join(lines) + f"\n\n{args.repeats} interleaved repeats after a warm-up, medians.\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attribution.md").write_text(text)


if __name__ == "__main__":
    main()
