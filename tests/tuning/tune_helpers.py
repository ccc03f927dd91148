"""What the tuning tests share: a small iris recipe with a tune section, and the models and data
sets their recipes name as ``tune_helpers:<name>`` (spawned workers import them by that name)."""

import copy
import csv
import multiprocessing
import os
import signal
import time
from pathlib import Path

from torch import nn

MODULE = Path(__file__).stem  # how recipes name this module's models and data sets


BASE = {
    "name": "iris-tune-test",
    "data": {"dataset": "iris", "split": {"val": 0.3, "test": 0.0}, "batch_size": 16},
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "optimizer": {"name": "adamw", "lr": 1.0e-6},  # deliberately bad: the loss hardly moves
    "train": {"max_epochs": 3, "device": "cpu"},
    "metrics": ["accuracy"],
}


def recipe(space, base=BASE, **tune_keys):
    raw = copy.deepcopy(base)
    raw["tune"] = {"sampler": "random", "pruner": "none", "seed": 0, "space": space, **tune_keys}
    return raw


def metric_column(run_dir, column="val_loss"):
    with open(Path(run_dir) / "metrics.csv") as handle:
        return [float(row[column]) for row in csv.DictReader(handle)]


def labels(study):
    from traincraft.tuning.trial import _trial_label

    return [_trial_label(t) for t in study.trials]


class Fragile(nn.Module):
    """A linear model whose forward raises when built with ``fail=True``."""

    def __init__(self, input_shape, output_size, fail=False):
        super().__init__()
        self.fail = fail
        self.net = nn.Linear(input_shape[0], output_size)

    def forward(self, x):
        if self.fail:
            raise RuntimeError("boom")
        return self.net(x)


INTERRUPT = {"armed": False}


class Interrupting(Fragile):
    """Presses Ctrl-C (SIGINT to this process) on its first forward pass while armed."""

    def forward(self, x):
        if INTERRUPT["armed"]:
            INTERRUPT["armed"] = False
            os.kill(os.getpid(), signal.SIGINT)
        return self.net(x)


CALLS = {"main": 0}


def handshake_iris():
    """Iris, but the main process's trials wait until a spawned worker has loaded it too.

    The first call in the main process is the space check before the search starts; later ones
    are its trials. So both processes are certain to run trials, however fast one starts.
    """
    from sklearn.datasets import load_iris

    flag = Path(os.environ["TRAINCRAFT_TEST_HANDSHAKE"])
    if multiprocessing.parent_process() is None:
        CALLS["main"] += 1
        deadline = time.monotonic() + 120
        while CALLS["main"] > 1 and not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        flag.touch()
    return load_iris(return_X_y=True)


def journal(path):
    """The study's journal file, opened as Optuna's storage."""
    import optuna

    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _spawned_worker():
    return multiprocessing.parent_process() is not None


class DiesInWorker(Fragile):
    """Kills its own process (SIGKILL, as the OOM killer does) on its first forward pass in a
    spawned worker, once: the flag file ``TRAINCRAFT_TEST_KILLED`` says it happened."""

    def forward(self, x):
        flag = Path(os.environ["TRAINCRAFT_TEST_KILLED"])
        if _spawned_worker() and not flag.exists():
            flag.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.net(x)


def iris_after_the_kill():
    """Iris, but the main process's trials wait until the spawned worker has died in a trial
    (its first call is the space check, before the search starts)."""
    from sklearn.datasets import load_iris

    flag = Path(os.environ["TRAINCRAFT_TEST_KILLED"])
    if not _spawned_worker():
        CALLS["main"] += 1
        deadline = time.monotonic() + 120
        while CALLS["main"] > 1 and not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return load_iris(return_X_y=True)


class Marked(Fragile):
    """Writes ``<TRAINCRAFT_TEST_MARKS>/<pid>`` once it trains (a trial is under way); with
    ``TRAINCRAFT_TEST_SLOW`` set, each forward pass takes 0.1 s longer (a slow worker)."""

    def forward(self, x):
        if self.training:
            (Path(os.environ["TRAINCRAFT_TEST_MARKS"]) / str(os.getpid())).touch()
        if os.environ.get("TRAINCRAFT_TEST_SLOW"):
            time.sleep(0.1)
        return self.net(x)


FORWARDS = {"eval": 0}


class CountsEvaluation(Fragile):
    """Counts its forward passes in evaluation mode (validation, test, predictions)."""

    def forward(self, x):
        if not self.training:
            FORWARDS["eval"] += 1
        return self.net(x)
