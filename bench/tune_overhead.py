"""What a search costs per trial beyond the training itself, and what each storage costs.

    python bench/tune_overhead.py [--trials 20] [--repeats 3] [--postgres URL] [--output FILE]

Per trial, the same small recipe (iris, an MLP of 16, 3 epochs, one thread):

* ``optuna loop``: a plain Optuna loop (in-memory storage) around ``Trainer.from_recipe`` with
  no run folder: the floor.
* ``tc.tune``: the search as it runs by default (a journal file, a run folder per trial, no
  plots at the end), with ``report=True`` (each trial's report.html and the evaluations at
  its end) where this traincraft has the switch, and on a database (SQLite, PostgreSQL).

Then the storage alone, without training: ``ask``, the trial's user attributes, 3 reports and
``tell``, per trial, for the journal file, SQLite, and PostgreSQL (a throwaway cluster started
here when Debian's ``postgresql`` package is installed, or ``--postgres URL``), each with the
heartbeat traincraft gives a database.

A time is the median over the repeats of (wall time of the loop) / trials. The table goes to
``bench/results/tune_overhead.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import inspect
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RECIPE = {
    "name": "bench-tune",
    "data": {"dataset": "iris", "split": {"val": 0.3, "test": 0.2}, "batch_size": 16},
    "model": {"name": "mlp", "hidden_sizes": [16]},
    "optimizer": {"name": "adamw", "lr": 1.0e-3},
    "train": {"max_epochs": 3, "device": "cpu"},
    "metrics": ["accuracy"],
    "tune": {
        "sampler": "random",
        "pruner": "none",
        "seed": 0,
        "space": {"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}},
    },
}


def optuna_loop(trials: int, folder: Path) -> float:
    import optuna

    from traincraft.recipe import load_recipe
    from traincraft.trainer import Trainer

    plain = {k: v for k, v in RECIPE.items() if k != "tune"}

    def objective(trial: optuna.Trial) -> float:
        raw = copy.deepcopy(plain)
        raw["optimizer"]["lr"] = trial.suggest_float("optimizer.lr", 1e-3, 1e-1, log=True)
        history = Trainer.from_recipe(load_recipe(raw), progress=False).fit()
        return min(row["val_loss"] for row in history.epochs)

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    started = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return (time.perf_counter() - started) / trials


def tc_tune(trials: int, folder: Path, **options: object) -> float:
    from traincraft.tuning.study import tune

    started = time.perf_counter()
    tune(copy.deepcopy(RECIPE), trials=trials, study_dir=folder, plots=False, **options)
    return (time.perf_counter() - started) / trials


def storage_only(trials: int, storage: object) -> float:
    import optuna

    from traincraft.tuning.storages import Heartbeat, quiet_experimental

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=f"s{time.monotonic_ns()}")
    dist = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}
    started = time.perf_counter()
    for _ in range(trials):
        with quiet_experimental():
            trial = study.ask(dist)
        trial.set_user_attr("worker", "host:1:token")
        trial.set_user_attr("values", {"optimizer.lr": trial.params["optimizer.lr"]})
        with Heartbeat(study._storage, trial._trial_id):
            for epoch in (1, 2, 3):
                trial.report(1.0 / epoch, epoch)
        study.tell(trial, 0.5)
    return (time.perf_counter() - started) / trials


@contextlib.contextmanager
def postgres(url: str | None):
    if url:
        yield url
        return
    sys.path.insert(0, str(HERE.parent / "tests" / "tuning"))
    from postgres_server import PostgresUnavailable, throwaway_cluster

    try:
        with throwaway_cluster() as started:
            yield started
    except PostgresUnavailable as err:
        print(f"postgresql: {err}", file=sys.stderr)
        yield None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres", metavar="URL")
    parser.add_argument("--output", default=str(HERE / "results" / "tune_overhead.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    import matplotlib
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    matplotlib.use("Agg")
    from traincraft.tuning import study as study_module
    from traincraft.tuning.storages import open_storage

    has_report = "report" in inspect.signature(study_module.tune).parameters
    cases = {"optuna loop (in memory, no run folder)": lambda f: optuna_loop(args.trials, f)}
    cases["tc.tune (journal, default)"] = lambda f: tc_tune(args.trials, f)
    if has_report:
        cases["tc.tune report=True"] = lambda f: tc_tune(args.trials, f, report=True)
    stores: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, postgres(args.postgres) as pg_url:
        counter = iter(range(10**6))
        cases["tc.tune (SQLite)"] = lambda f: tc_tune(
            args.trials, f, storage=f"sqlite:///{f.parent}/tune-{next(counter)}.db"
        )
        if pg_url:
            cases["tc.tune (PostgreSQL)"] = lambda f: tc_tune(
                args.trials, f, storage=pg_url, study=f"bench-{next(counter)}"
            )
        times: dict[str, list[float]] = {name: [] for name in cases}
        tc_tune(2, Path(tmp) / "warm-up")
        for repeat in range(args.repeats):
            for i, (name, run) in enumerate(cases.items()):
                times[name].append(run(Path(tmp) / f"{repeat}-{i}"))
                print(f"{name}: {times[name][-1] * 1000:.0f} ms per trial", file=sys.stderr)

        specs = {
            "journal file": lambda i: open_storage(None, Path(tmp) / f"journal-{i}"),
            "SQLite (heartbeat 60 s)": lambda i: open_storage(
                f"sqlite:///{tmp}/s-{i}.db", Path(tmp)
            ),
        }
        if pg_url:
            specs["PostgreSQL (heartbeat 60 s)"] = lambda i: open_storage(pg_url, Path(tmp))
        for repeat in range(args.repeats):
            for name, make in specs.items():
                stores.setdefault(name, []).append(storage_only(args.trials, make(repeat)))
    lines = [
        "# Per-trial overhead of a search",
        "",
        f"`python bench/tune_overhead.py --trials {args.trials} --repeats {args.repeats}`: "
        f"iris, an MLP of 16, 3 epochs, one thread; {platform.processor() or platform.machine()},"
        f" {os.cpu_count()} cores (shared with other work: medians of {args.repeats}).",
        "",
        "| case | ms per trial |",
        "|---|---|",
        *(f"| {name} | {statistics.median(v) * 1000:.0f} |" for name, v in times.items()),
        "",
        "The storage alone (ask, 2 user attributes, 3 reports, tell; no training). The journal "
        "file and SQLite fsync every write; the PostgreSQL cluster runs with `fsync=off` on this "
        "machine, beside the workers:",
        "",
        "| storage | ms per trial |",
        "|---|---|",
        *(f"| {name} | {statistics.median(v) * 1000:.1f} |" for name, v in stores.items()),
        "",
    ]
    if not has_report:
        lines.insert(4, "(This traincraft has no `report=` switch: every trial writes its report.)\n")
    text = "\n".join(lines)
    print(text)
    if importlib.util.find_spec("optuna") is not None:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
