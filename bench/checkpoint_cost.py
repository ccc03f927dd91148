"""What a traincraft checkpoint costs against a plain ``torch.save`` of the same state dicts.

    python bench/checkpoint_cost.py [--repeats 15] [--width 1024]

Both write the same content (model, optimizer, schedule, callbacks, counters, history, RNG) to
the same folder; ours adds the atomic write (temporary file, flush, fsync, rename). Two rows for
ours: the whole durable write, and what the training loop waits for (the ``Checkpoint``
callback's ``background=True``: the state is serialized into memory, and the file is created,
fsynced and renamed on the writer thread; the next write or the end of ``fit`` waits for it,
timed here before the next repeat). Interleaved repeats, medians.
Writes bench/results/checkpoint_cost.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import traincraft as tc
from traincraft import files
from traincraft.checkpoint import save_checkpoint

RESULTS = Path(__file__).parent / "results"


def trained(width: int) -> tc.Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    X, y = torch.randn(256, 64), torch.randint(0, 10, (256,))
    trainer = tc.Trainer(model, loss="cross_entropy", metrics=["accuracy"], max_epochs=1, batch_size=64,
                         schedule={"name": "cosine", "warmup": "10%"}, progress=False, seed=0,
                         callbacks=[tc.EarlyStopping(verbose=False)])
    trainer.fit((X, y), val=(X, y))
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--width", type=int, default=1024)
    args = parser.parse_args()
    trainer = trained(args.width)
    ours, plain, loop = [], [], []
    with tempfile.TemporaryDirectory(dir=".") as folder:
        for _ in range(args.repeats):
            started = time.perf_counter()
            torch.save(trainer.state_dict(), Path(folder) / "plain.ckpt")
            plain.append(time.perf_counter() - started)
            started = time.perf_counter()
            save_checkpoint(trainer.state_dict(), Path(folder) / "ours.ckpt")
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            save_checkpoint(trainer.state_dict(), Path(folder) / "loop.ckpt", background=True)
            loop.append(time.perf_counter() - started)
            files.wait()
        size = (Path(folder) / "ours.ckpt").stat().st_size / 2**20
    a, b, c = statistics.median(ours), statistics.median(plain), statistics.median(loop)
    text = (
        f"| checkpoint ({size:.1f} MiB) | median ms | ratio |\n|---|---:|---:|\n"
        f"| plain torch.save | {b * 1e3:.1f} | 1.00 |\n"
        f"| traincraft save_checkpoint (atomic: temp file, flush, fsync, rename) | {a * 1e3:.1f} | {a / b:.2f} |\n"
        f"| … what the training loop waits for (serialized into memory; the file written on the writer thread) | {c * 1e3:.1f} | {c / b:.2f} |\n\n"
        f"budget: 1.2x; {args.repeats} interleaved repeats"
    )
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "checkpoint_cost.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
