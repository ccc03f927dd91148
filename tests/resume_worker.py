"""A training run for the resume tests: run it, SIGKILL it anywhere, resume it.

    python tests/resume_worker.py RUN_DIR [--resume] [--every-n-steps N] [--max-epochs N]

Dropout, shuffling, warm-up plus cosine, early stopping and accumulation 2 are all on. Every
optimizer step appends ``step,lr`` to RUN_DIR/lrs.txt (flushed), the end writes final.safetensors
and history.json.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

import traincraft as tc
from traincraft.checkpoint import save_weights


class Trace(tc.Callback):
    def __init__(self, path: Path, pause: float):
        self.path, self.pause = path, pause

    def on_before_step(self, trainer):
        with self.path.open("a") as handle:
            handle.write(f"{trainer.state.step + 1},{trainer.optimizer.param_groups[0]['lr']!r}\n")
        time.sleep(self.pause)  # gives the test time to kill between steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--every-n-steps", type=int, default=None)
    parser.add_argument("--max-epochs", type=int, default=6)
    parser.add_argument("--pause", type=float, default=0.02)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run_dir = Path(args.run_dir)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(120, 4, generator=g)
    y = X @ torch.tensor([[1.0], [-1.0], [0.5], [2.0]]) + 0.1 * torch.randn(120, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 1))
    trainer = tc.Trainer(
        model, loss="mse", optimizer="adamw", lr=1e-2, batch_size=8, accumulate=2,
        schedule={"name": "cosine", "warmup": "10%"}, max_epochs=args.max_epochs,
        callbacks=[tc.EarlyStopping(patience=4, verbose=False), Trace(run_dir / "lrs.txt", args.pause)],
        checkpoint={"every_n_steps": args.every_n_steps, "keep_last": 3},
        run_dir=run_dir, seed=0, progress=False,
    )
    history = trainer.fit((X[:96], y[:96]), val=(X[96:], y[96:]), resume=run_dir if args.resume else None)
    save_weights(trainer.model, run_dir / "final.safetensors")
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in history.epochs]
    (run_dir / "history.json").write_text(json.dumps({"rows": rows, "stop": history.stop_reason}))
    print(f"done at step {trainer.state.step}", file=sys.stderr)


if __name__ == "__main__":
    main()
