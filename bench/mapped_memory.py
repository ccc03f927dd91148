"""Training on a memory-mapped data set larger than the memory budget: peak resident memory.

    python bench/mapped_memory.py [--gib 4] [--epochs 1]

Writes ``--gib`` GiB of float32 inputs (1024 features per sample) and their class labels as
``.npy`` files in a temporary folder, then trains an MLP for one epoch on them through a recipe
(``dataset: {inputs, targets}``, batch 512) in a child process, and reports that process's peak
resident memory (``VmHWM`` of ``/proc/self/status``) against the budget of 1.5 GiB. The table
goes to ``bench/results/mapped_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FEATURES = 1024
CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
import torch
torch.set_num_threads(1)
import traincraft as tc
recipe = {"name": "mapped", "seed": 0,
          "data": {"dataset": {"inputs": sys.argv[1] + "/x.npy", "targets": sys.argv[1] + "/y.npy"},
                   "task": "classification", "scale": "none", "split": {"val": 0.01, "test": 0.0},
                   "batch_size": 512},
          "model": {"name": "mlp", "hidden_sizes": [64]}, "train": {"max_epochs": int(sys.argv[2])}}
started = time.perf_counter()
trainer = tc.Trainer.from_recipe(recipe, progress=False)
trainer.fit()
print(json.dumps({"seconds": time.perf_counter() - started, "steps": trainer.state.step,
                  # VmHWM: this process's own peak. ru_maxrss would also count, across exec, what
                  # the parent held when it started this process (the file it just wrote).
                  "maxrss_kib": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]),
                  "val_loss": trainer.history.epochs[-1]["val_loss"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    samples = int(args.gib * 2**30 / (FEATURES * 4))
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        started = time.perf_counter()
        x = np.lib.format.open_memmap(f"{tmp}/x.npy", mode="w+", dtype=np.float32, shape=(samples, FEATURES))
        rng = np.random.default_rng(0)
        labels = np.empty(samples, dtype=np.int64)
        for start in range(0, samples, 65536):  # written in chunks: this process stays small too
            part = rng.normal(size=(min(65536, samples - start), FEATURES)).astype(np.float32)
            x[start:start + len(part)] = part
            labels[start:start + len(part)] = (part[:, :8].sum(1) > 0)
        x.flush()
        del x
        np.save(f"{tmp}/y.npy", labels)
        written = time.perf_counter() - started
        src = str(Path(__file__).parents[1] / "src")
        done = subprocess.run([sys.executable, "-c", CHILD, tmp, str(args.epochs), src], capture_output=True,
                              text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    peak = result["maxrss_kib"] / 2**20
    size = samples * FEATURES * 4 / 2**30
    lines = [
        "# Training on a memory-mapped data set",
        "",
        f"`python bench/mapped_memory.py --gib {args.gib:g} --epochs {args.epochs}`: {samples:,} samples × {FEATURES} "
        f"float32 = {size:.2f} GiB of inputs (written in {written:.0f} s), an MLP (hidden 64), batch 512, "
        f"{result['steps']:,} steps in {result['seconds']:.0f} s.",
        "",
        f"Peak resident memory of the training process: **{peak:.2f} GiB** (budget < 1.5 GiB: "
        f"{'ok' if peak < 1.5 else 'over budget'}); val_loss {result['val_loss']:.4f}.",
    ]
    out = Path(__file__).parent / "results" / "mapped_memory.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
