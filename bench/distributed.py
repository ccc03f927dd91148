"""Several processes: steps per second with 1 and 2 processes, the share of a step spent in the
gradient all-reduce, and what the stop vote costs.

    python bench/distributed.py [--repeats 3] [--steps-per-epoch 256] [--hidden 64] [--output FILE]

One workload: an MLP 32-HIDDEN-HIDDEN-1 on synthetic regression data, global batch 64 (1 process
× 64, or 2 processes × 32: the same optimizer steps), SGD, MSE, no validation, no files, no
progress bar, one thread per process (``OMP_NUM_THREADS=1``). Cases:

* ``1 process``: no process group.
* ``2 processes``: DDP under gloo, as ``traincraft fit --nproc 2`` runs it (the stop vote spaced
  by its agreed interval).
* ``2, vote every step``: the stop vote at every optimizer step (as before the interval).
* ``2, no all-reduce``: DDP with a communication hook that returns the gradients unreduced: the
  difference to ``2 processes`` is the time of the gradient all-reduce.

Each case runs under torchrun (``torch.distributed.run --standalone``) for 3 epochs; the first
is a warm-up, the time is that of the last two (the ``seconds`` of their history rows, read on
rank 0). The table gives the median over the repeats (the cases interleaved) and is written to
``bench/results/distributed.md``. On a machine with 2 cores, 2 processes share the cores with
everything else: read the 2-process figures as the cost of the communication, not as a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = {
    "1 process": (1, "normal"),
    "2 processes": (2, "normal"),
    "2, vote every step": (2, "vote-every-step"),
    "2, no all-reduce": (2, "no-allreduce"),
}


def worker(variant: str, steps_per_epoch: int, hidden: int, out: Path) -> None:
    """One process of a case (run by torchrun): train, write rank 0's steps per second."""
    import torch
    from torch import nn

    import traincraft as tc
    from traincraft import distributed

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    global_batch = 64
    g = torch.Generator().manual_seed(0)
    X = torch.randn(steps_per_epoch * global_batch, 32, generator=g)
    y = X[:, :1] * 2 - X[:, 1:2] + 0.1 * torch.randn(len(X), 1, generator=g)
    if variant == "vote-every-step":
        distributed.StopVote.max_interval = 1
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    trainer = tc.Trainer(model, loss="mse", optimizer="sgd", lr=0.01, batch_size=global_batch // world,
                         max_epochs=3, progress=False, seed=0, checkpoint=False)
    if variant == "no-allreduce":
        def unreduced(state, bucket):
            future = torch.futures.Future()
            future.set_result(bucket.buffer())
            return future

        trainer.ddp.register_comm_hook(None, unreduced)
    history = trainer.fit((X, y))
    if trainer.is_main_process:
        seconds = sum(row["seconds"] for row in history.epochs[1:])
        (out / "result.json").write_text(json.dumps({"steps_per_s": 2 * steps_per_epoch / seconds}))


def run_case(name: str, steps_per_epoch: int, hidden: int) -> float:
    nproc, variant = CASES[name]
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")]))}
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                str(Path(__file__).resolve()), "--worker", variant, "--steps-per-epoch", str(steps_per_epoch),
                "--hidden", str(hidden), "--out", folder]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        return json.loads((Path(folder) / "result.json").read_text())["steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "distributed.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps_per_epoch, args.hidden, args.out)
        return
    rates: dict[str, list[float]] = {name: [] for name in CASES}
    for repeat in range(args.repeats):
        for name in CASES:
            rates[name].append(run_case(name, args.steps_per_epoch, args.hidden))
            print(f"round {repeat + 1}: {name}: {rates[name][-1]:.0f} steps/s", file=sys.stderr)
    median = {name: statistics.median(values) for name, values in rates.items()}
    step_ms = {name: 1000 / rate for name, rate in median.items()}
    allreduce = step_ms["2 processes"] - step_ms["2, no all-reduce"]
    vote = step_ms["2, vote every step"] - step_ms["2 processes"]
    import torch

    lines = [
        "# Several processes: steps per second, all-reduce, stop vote",
        "",
        f"`python bench/distributed.py --repeats {args.repeats} --steps-per-epoch {args.steps_per_epoch} "
        f"--hidden {args.hidden}`; torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cores, gloo on the CPU, one thread per process.",
        "",
        f"MLP 32-{args.hidden}-{args.hidden}-1, global batch 64 (1 × 64 or 2 × 32), SGD; the median of "
        f"{args.repeats} runs of 2 timed epochs ({2 * args.steps_per_epoch} optimizer steps) each.",
        "",
        "| case | steps/s | ms per step |",
        "|---|---:|---:|",
        *[f"| {name} | {median[name]:.0f} | {step_ms[name]:.3f} |" for name in CASES],
        "",
        f"- Gradient all-reduce: {allreduce:.3f} ms per step, "
        f"{100 * allreduce / step_ms['2 processes']:.0f}% of a 2-process step.",
        f"- Stop vote at every step instead of at the agreed interval: {vote:+.3f} ms per step "
        f"({100 * vote / step_ms['2 processes']:+.0f}%).",
        f"- 2 processes against 1: {median['2 processes'] / median['1 process']:.2f}× the steps per second.",
        "",
        "Caveat: this machine has 2 cores, shared with other work. Two processes of one thread each take",
        "both of them, so they also compete with gloo's own threads and with everything else running:",
        "the 2-process figures measure what the communication costs on one machine, not the speed-up",
        "that several GPUs or machines give. Steps this small (well under a millisecond of compute) make",
        "the fixed cost of each collective look large; a real model's step hides most of it.",
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
