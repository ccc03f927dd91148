"""Two-process runs for tests/test_distributed_edges.py (gloo, CPU, tiny models):

    torchrun --standalone --nproc-per-node 2 tests/distributed_edges_worker.py shards OUT
    torchrun --nnodes 2 --node-rank R --nproc-per-node 1 --master-addr 127.0.0.1 --master-port P \\
        tests/distributed_edges_worker.py nodes OUT

Each process writes ``OUT/<mode>-rank-<r>.json`` with what it saw.

``shards``: each process loads its own share (rank 0: 40 samples, rank 1: 25). Without
``data={"sharded": True}`` both stop with one line; with it, both train, and rank 0 saves its
weights and figures for the test to compare with one process that sees the same global batches.
Then rank 1 leaves and rank 0 calls ``evaluate`` alone: a clear line, and ``local=True`` works.

``nodes``: two "machines" on this one (``--nnodes 2``). A run in a folder both see, then a
``resume="auto"`` where the second machine's folder is its own, empty one (no shared file system):
both stop at once with one line naming the process that cannot read the checkpoint.

The model ``distributed_edges_worker:TermMLP`` (recipes, with ``tests/`` on ``PYTHONPATH``) makes
rank 0 send SIGTERM to every process of the job at its 7th training forward, as ``pkill`` or
Slurm's ``scancel`` does: torchrun (its parent) and both workers.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from distributed_worker import Count  # the script's own folder is on the path
from torch import nn

import traincraft as tc

SHARES = (40, 25)
BATCH = 16


def share(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Process ``rank``'s own share, as if read from its own file."""
    g = torch.Generator().manual_seed(10 + rank)
    X = torch.randn(SHARES[rank], 3, generator=g)
    return X, X @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(SHARES[rank], 1, generator=g)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))


def trainer(max_epochs: int = 2, **kwargs) -> tc.Trainer:
    return tc.Trainer(model(), loss="mse", optimizer="sgd", lr=0.05, batch_size=BATCH, max_epochs=max_epochs,
                      metrics=[Count()], seed=0, progress=False, **kwargs)


def rows(history) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history.epochs]


def shards(out: Path, rank: int) -> dict:
    seen: dict = {}
    mine = share(rank)
    try:
        trainer(data={"shuffle": False}).fit(mine)
        seen["unsharded"] = None
    except tc.TraincraftError as err:
        seen["unsharded"] = f"{type(err).__name__}: {err}"
    sharded = trainer(data={"shuffle": False, "sharded": True}, dist_timeout=20)
    history = sharded.fit(mine, val=mine)
    seen["rows"] = rows(history)
    seen["steps"] = sharded.state.step
    if rank == 0:
        torch.save(sharded.model.state_dict(), out / "sharded.pt")
    seen["evaluate"] = sharded.evaluate(mine)  # together: the figures over both shares
    if rank == 1:
        return seen  # leaves: rank 0 is alone from here on
    try:
        sharded.evaluate(mine)
        seen["alone"] = None
    except tc.TraincraftError as err:
        seen["alone"] = f"{type(err).__name__}: {err}"
    seen["local"] = sharded.evaluate(mine, local=True)
    return seen


def nodes(out: Path, rank: int) -> dict:
    seen: dict = {"rank": rank}
    shared = out / "shared-run"
    first = trainer(run_dir=shared, dist_timeout=30)
    seen["trained"] = rows(first.fit(share(0)))[-1]
    own = shared if rank == 0 else out / "empty-folder-of-node-1"  # no shared file system
    again = trainer(run_dir=own, dist_timeout=30, max_epochs=4)
    try:
        again.fit(share(0), resume="auto")
        seen["resume"] = None
    except tc.TraincraftError as err:
        seen["resume"] = f"{type(err).__name__}: {err}"
    return seen


class TermMLP(nn.Module):
    """At rank 0's 7th training forward: SIGTERM to torchrun and to both workers (each worker
    then gets it twice: directly, and forwarded by torchrun). ``TERM_LOG``: where each process
    appends its rank and how many training forwards (steps) it made."""

    def __init__(self, input_shape: tuple[int, ...], output_size: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_shape[0], 8), nn.Tanh(), nn.Linear(8, output_size))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            with open(os.environ["TERM_LOG"], "a") as log:
                log.write(f"{os.environ['RANK']} {self.calls}\n")
            if os.environ.get("RANK") == "0" and self.calls == 7:
                parent = os.getppid()
                children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
                os.kill(parent, signal.SIGTERM)
                for pid in children:
                    os.kill(int(pid), signal.SIGTERM)
        return self.net(x)


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2]).resolve()
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    seen = {"shards": shards, "nodes": nodes}[mode](out, rank)
    (out / f"{mode}-rank-{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
