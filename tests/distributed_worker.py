"""Two-process runs for tests/test_distributed.py and tests/test_distributed_failures.py:

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py suite OUT RECIPE
    RANK=r WORLD_SIZE=2 MASTER_ADDR=... MASTER_PORT=... python tests/distributed_worker.py hang OUT

Each process writes ``OUT/rank-<r>.json`` with what it saw; rank 0 also saves the final weights of
the equivalence runs (``OUT/<case>.pt``). The suite's phases, in one process group:

1. equivalence: 2 processes × batch 16 (tensors, then a Dataset) and 2 × batch 8 × accumulate 2,
   each compared by the test with 1 process × batch 32. A callback hashes the parameters after
   every step; a metric counts the samples; a DDP comm hook counts the gradient all-reduces.
   Then the metrics over each process's uneven shard, reduced (and gathered) as the trainer does.
2. losses that are not a per-sample mean (:data:`SUMMED_LOSSES`: class weights, an
   ``ignore_index`` hit unevenly across the processes, a dice over the batch, a list of terms):
   one SGD step of 2 processes × 20 samples (and 2 × 10 × accumulate 2), then ``evaluate`` in
   batches of 7; rank 0 saves the weights and figures (``OUT/summed-<case>.pt``), which the test
   compares with torch on the 40 samples as one batch.
3. the command line under torchrun: ``traincraft fit RECIPE`` (no --run-dir: rank 0 names the
   folder) counting the files each process writes, then the same recipe with
   ``STOP_AT_FORWARD`` set, which sends SIGINT to rank 0 alone in the middle of an epoch.

``hang``: rank 1 sleeps past ``dist_timeout`` inside a step; rank 0 must stop with a clear error.
The timeout is the process group's, set when the Trainer creates it: hence a process group of
its own, without torchrun (which would stop rank 1 as soon as rank 0 fails).

The models are importable by recipes as ``distributed_worker:StopMLP`` and
``distributed_worker:DyingMLP`` (with ``tests/`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn

import traincraft as tc
from traincraft import files
from traincraft.cli import main as cli_main
from traincraft.metrics import Metric

GLOBAL_BATCH = 32
EPOCHS = 3

#: Losses whose batch value is not a per-sample mean: (loss spec, which targets).
SUMMED_LOSSES = {
    "class_weights": ({"name": "cross_entropy", "class_weight": [1.0, 4.0, 0.25]}, "skewed"),
    "ignore_index": ({"name": "cross_entropy", "ignore_index": -100}, "ignored"),
    "dice": ("dice", "skewed"),
    "terms": ([{"name": "cross_entropy", "class_weight": [1.0, 4.0, 0.25]}, {"name": "dice", "weight": 0.5}],
              "skewed"),
}


class StopMLP(nn.Module):
    """An MLP with dropout; rank 0 sends itself SIGINT at training forward ``STOP_AT_FORWARD``.
    ``StopMLP.latest.calls``: the training forwards of the latest one built (its steps)."""

    latest: StopMLP | None = None

    def __init__(self, input_shape: tuple[int, ...], output_size: int, hidden: int = 16):
        super().__init__()
        StopMLP.latest = self
        self.net = nn.Sequential(nn.Linear(input_shape[0], hidden), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(hidden, output_size))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if os.environ.get("RANK") == "0" and str(self.calls) == os.environ.get("STOP_AT_FORWARD"):
                os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C reached this process only
        return self.net(x)


class DyingMLP(nn.Module):
    """An MLP whose rank-1 process kills itself (SIGKILL) at its 5th training forward."""

    def __init__(self, input_shape: tuple[int, ...], output_size: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_shape[0], 8), nn.Tanh(), nn.Linear(8, output_size))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if os.environ.get("RANK") == "1" and self.calls == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.net(x)


class Count(Metric):
    """Samples seen: exact counting, no padding duplicates."""

    name = "count"

    def batch_sums(self, pred, target):
        return (int(target.shape[0]),)

    def finalize(self, sums):
        return float(sums[0])


class ParameterTrace(tc.Callback):
    """A hash of every parameter's bytes after each optimizer step."""

    def __init__(self) -> None:
        self.hashes: list[str] = []

    def on_step_end(self, trainer) -> None:
        digest = hashlib.sha256()
        for p in trainer.model.parameters():
            digest.update(p.detach().cpu().numpy().tobytes())
        self.hashes.append(digest.hexdigest())


class SampleDataset(torch.utils.data.Dataset):
    """A map-style Dataset over tensors (batched by a DataLoader, not sliced)."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor):
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.X[i], self.y[i]


def regression_data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """101 training samples (uneven over 2 processes and over batches) and 5 validation ones."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(101, 4, generator=g)
    y = X @ torch.tensor([[1.0], [-1.0], [0.5], [2.0]]) + 0.1 * torch.randn(101, 1, generator=g)
    Xv = torch.randn(5, 4, generator=g)
    return (X, y), (Xv, Xv.sum(1, keepdim=True))


def summed_loss_data(targets: str) -> tuple[torch.Tensor, torch.Tensor]:
    """40 samples of 3 classes. Unshuffled, process 0 of 2 takes the even samples: "skewed"
    gives it most of class 1 (weight 4), "ignored" 7 of its 20 targets ignored against 1 of the
    other process's."""
    g = torch.Generator().manual_seed(5)
    X = torch.randn(40, 4, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    if targets == "skewed":
        y[0:24:2] = 1
    else:
        y[[0, 2, 4, 6, 8, 10, 12, 1]] = -100
    return X, y


def summed_loss_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def summed_loss_trainer(spec, batch_size: int, accumulate: int = 1) -> tc.Trainer:
    """One SGD step over 40 samples in batches of ``batch_size`` (per process), in order."""
    return tc.Trainer(summed_loss_model(), loss=spec, optimizer="sgd", lr=0.5, batch_size=batch_size,
                      step={"accumulate": accumulate}, max_epochs=1, seed=0, data={"shuffle": False},
                      progress=False)


def summed_losses(out: Path, rank: int, world_size: int) -> None:
    for case, (spec, targets) in SUMMED_LOSSES.items():
        data = summed_loss_data(targets)
        runs = {"step": (40 // world_size, 1), "accumulate": (40 // world_size // 2, 2)}
        saved = {}
        for name, (batch_size, accumulate) in runs.items():
            trainer = summed_loss_trainer(spec, batch_size, accumulate)
            history = trainer.fit(data)
            saved[name] = {"weights": trainer.model.state_dict(), "train_loss": history.epochs[0]["train_loss"],
                           "evaluate": trainer.evaluate(data)["loss"]}
            trainer.batch_size = 7
            saved[name]["evaluate_7"] = trainer.evaluate(data)["loss"]
        if rank == 0:
            torch.save(saved, out / f"summed-{case}.pt")


def equivalence_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def equivalence_trainer(batch_size: int, accumulate: int, **kwargs) -> tc.Trainer:
    return tc.Trainer(
        equivalence_model(), loss="mse", optimizer="adamw", lr=1e-2, batch_size=batch_size,
        accumulate=accumulate, max_epochs=EPOCHS, metrics=["mae", Count()], seed=0, **kwargs,
    )


def plain_rows(history) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history.epochs]


def equivalence(out: Path, rank: int) -> dict:
    train, val = regression_data()
    seen: dict = {}
    trace = ParameterTrace()
    trainer = equivalence_trainer(16, 1, callbacks=[trace])
    seen["tensors"] = {"rows": plain_rows(trainer.fit(train, val=val)), "hashes": trace.hashes}
    if rank == 0:
        torch.save(trainer.model.state_dict(), out / "tensors.pt")

    trainer = equivalence_trainer(16, 1, progress=False)
    trainer.fit(SampleDataset(*train), val=SampleDataset(*val))
    if rank == 0:
        torch.save(trainer.model.state_dict(), out / "dataset.pt")

    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    calls = []

    def counting_hook(state, bucket):
        calls.append(bucket.index())
        return allreduce_hook(state, bucket)

    trainer = equivalence_trainer(8, 2, progress=False)
    trainer.ddp.register_comm_hook(None, counting_hook)
    history = trainer.fit(train, val=val)
    seen["accumulate"] = {"rows": plain_rows(history), "allreduce_calls": len(calls),
                          "buckets": len(set(calls)), "steps": trainer.state.step}
    if rank == 0:
        torch.save(trainer.model.state_dict(), out / "accumulate.pt")
    return seen


#: The metrics whose figures over two processes' uneven shards are checked against scikit-learn.
CLASS_METRICS = ["auroc", "average_precision", "mcc", "balanced_accuracy", "confusion_matrix", "per_class"]
REGRESSION_METRICS = ["mape", "smape", "explained_variance", "r2"]


def metric_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """203 samples of 4-class logits (with tied scores) and labels; of 2-column regression."""
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(203, 4, generator=g, dtype=torch.float64) * 2).round() / 2
    target = torch.randint(0, 4, (203,), generator=g)
    y = torch.randn(203, 2, generator=g, dtype=torch.float64) + 40.0
    return logits, target, y + torch.randn(203, 2, generator=g, dtype=torch.float64) + 0.5, y


def metric_shards(rank: int) -> dict:
    """Each process its own uneven shard (90 and 113 samples) in uneven batches; the figures and
    tables after the trainer's reduction (SUM for sums, a gather for the ranking metrics)."""
    from traincraft import distributed
    from traincraft.metrics import MetricSet, RunningMeans

    logits, target, pred, y = metric_data()
    rows = torch.arange(90) if rank == 0 else torch.arange(90, 203)
    seen = {}
    for kind, specs, p, t in (("classification", CLASS_METRICS, logits, target),
                              ("regression", REGRESSION_METRICS, pred, y)):
        ms = MetricSet(specs)
        start = 0
        for size in [1, 7, 13, 2, 29, 5] * 10:
            batch = rows[start:start + size]
            if len(batch):
                ms.update(p[batch], t[batch])
            start += size
        distributed.reduce_figures(RunningMeans(torch.device("cpu")), ms)
        seen[kind] = {"figures": ms.compute(), "tables": ms.tables()}
    return seen


def command_line(out: Path, recipe: str, rank: int) -> dict:
    os.chdir(out)
    made: list[str] = []
    original = files._temporary

    def counted(path):
        made.append(str(path))
        return original(path)

    files._temporary = counted  # every atomic write of traincraft goes through it
    try:
        full = cli_main(["fit", recipe, "--no-progress"])
    finally:
        files._temporary = original
    os.environ["STOP_AT_FORWARD"] = "11"
    try:
        part = cli_main(["fit", recipe, "--run-dir", "interrupted", "--no-progress"])
    finally:
        del os.environ["STOP_AT_FORWARD"]
    folders = sorted(str(p) for p in Path("runs").glob("*/*"))
    return {"full_exit": full, "files_written": len(made), "folders": folders, "interrupted_exit": part,
            "stopped_at": recipe_model().latest.calls}


def recipe_model() -> type:
    """The StopMLP class the recipe imported (this script runs as ``__main__``: another module)."""
    import distributed_worker

    return distributed_worker.StopMLP


class Sleeper(tc.Callback):
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.asleep: float | None = None

    def on_step_end(self, trainer) -> None:
        if trainer.rank == 1 and trainer.state.step == 2:
            self.asleep = time.monotonic()  # the system's clock: comparable between processes
            time.sleep(self.seconds)


def hang(timeout: float, sleeper: tc.Callback | None = None) -> dict:
    """Rank 1 sleeps past ``timeout`` (in step 2, or where ``sleeper`` does): rank 0 must fail
    within about the timeout, never wait for ever."""
    train, _ = regression_data()
    sleeper = sleeper or Sleeper(timeout + 3)
    trainer = equivalence_trainer(8, 1, progress=False, dist_timeout=timeout, callbacks=[sleeper])
    try:
        trainer.fit(train)
    except tc.TraincraftError as err:
        # Rank 0 waits from about when rank 1 fell asleep.
        return {"error": str(err), "type": type(err).__name__, "failed": time.monotonic(), "asleep": sleeper.asleep}
    return {"error": None, "asleep": sleeper.asleep, "failed": time.monotonic()}


class SleepAtEnd(tc.Callback):
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.asleep: float | None = None

    def on_fit_end(self, trainer) -> None:
        if trainer.rank == 1:
            self.asleep = time.monotonic()
            time.sleep(self.seconds)


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2]).resolve()
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    if mode == "suite":
        recipe = str(Path(sys.argv[3]).resolve())
        seen = {"rank": rank, "equivalence": equivalence(out, rank), "metrics": metric_shards(rank)}
        summed_losses(out, rank, int(os.environ["WORLD_SIZE"]))
        seen["cli"] = command_line(out, recipe, rank)
    elif mode == "hang-end":
        seen = {"rank": rank, "hang": hang(timeout=2.0, sleeper=SleepAtEnd(2.0 + 3))}  # after the last collective
    else:
        seen = {"rank": rank, "hang": hang(timeout=2.0)}
    (out / f"rank-{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
