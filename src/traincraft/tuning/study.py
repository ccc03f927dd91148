"""The study: its storage, the worker processes that share it, Ctrl-C between trials, and
:func:`tune`, the search itself.

Example:
    >>> study = tune("recipe.yaml", trials=40, workers=2)
    >>> study.best_value, study.best_params
    (0.0712, {'optimizer.lr': 0.0031, 'model.dropout': 0.12})
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traincraft.callbacks.monitor import format_value
from traincraft.errors import TraincraftError
from traincraft.recipe import Recipe, RecipeError, read_raw
from traincraft.registry import split_spec
from traincraft.tuning.lost import LIVE_TOKENS, close_lost, recoverable, worker_id
from traincraft.tuning.outputs import (
    _short,
    summarize,
    write_best_yaml,
    write_plots,
    write_trials_csv,
)
from traincraft.tuning.recipes import check_base
from traincraft.tuning.samplers import SAMPLERS, build_pruner, build_sampler
from traincraft.tuning.section import Dimension, TuneSection, TuneSectionError, _copy
from traincraft.tuning.space import check_space, read_section, recipe_with
from traincraft.tuning.storages import (
    check_heartbeat,
    open_storage,
    quiet_experimental,
    study_storage,
)
from traincraft.tuning.trial import WEIGHTS, _counted, _one_line, _Outcome, _run_trial

if TYPE_CHECKING:
    import optuna

__all__ = ["SearchResult", "search", "tune"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

LOCK_NAME = ".tune.lock"
#: Seconds between two looks at the study while a worker waits for other workers' trials.
WAIT_SECONDS = 0.5


# ============================================================================== the study


@dataclass
class _Plan:
    """Everything a worker needs; plain data, so that it travels to spawned processes."""

    raw: dict[str, Any]
    section: TuneSection
    study_name: str
    study_dir: Path
    storage: Any
    trials: int
    heartbeat: int | None = None
    report: bool = False
    dims: dict[str, Dimension] = field(init=False)
    trial_raw: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.dims = self.section.dimensions()
        self.trial_raw = _quiet_recipe(self.raw, self.dims)

    @property
    def mode(self) -> str:
        return self.section.mode()

    @property
    def max_epochs(self) -> int:
        return int(recipe_with(self.raw, {}).train.max_epochs)

    def values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {key: dim.value(params[key]) for key, dim in self.dims.items()}

    def target(self) -> int:
        """Trials to reach: the grid sampler has no more than its points to offer."""
        name = SAMPLERS.canonical(split_spec(self.section.sampler, "sampler")[0])
        if name != "grid":
            return self.trials
        return min(self.trials, math.prod(len(d.grid()) for d in self.dims.values()))

    def payload(self) -> dict[str, Any]:
        return {
            "raw": self.raw,
            "section": self.section.model_dump(),
            "study_name": self.study_name,
            "study_dir": str(self.study_dir),
            "storage": self.storage,
            "trials": self.trials,
            "heartbeat": self.heartbeat,
            "report": self.report,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> _Plan:
        return cls(
            payload["raw"],
            TuneSection.model_validate(payload["section"]),
            payload["study_name"],
            Path(payload["study_dir"]),
            payload["storage"],
            payload["trials"],
            payload["heartbeat"],
            payload["report"],
        )


def _quiet_recipe(raw: Mapping[str, Any], dims: Mapping[str, Dimension]) -> dict[str, Any]:
    """The recipe trials run: early stopping's per-epoch lines off (they change no figure)."""
    trial_raw = _copy(dict(raw))
    stop = trial_raw.get("early_stopping")
    if isinstance(stop, dict) and "early_stopping.verbose" not in dims:
        stop["verbose"] = False
    return trial_raw


def _open_study(plan: _Plan, *, worker: int, parallel: bool) -> optuna.Study:
    """Create the study, or load it to continue; refuse one that optimises something else."""
    import numpy as np
    import optuna

    try:
        direction = plan.section.direction_name()
    except TuneSectionError as err:
        raise RecipeError(str(err)) from None
    try:
        study = optuna.create_study(
            storage=open_storage(plan.storage, plan.study_dir, heartbeat=plan.heartbeat),
            study_name=plan.study_name,
            direction=direction,
            load_if_exists=True,
        )
    except (ImportError, optuna.exceptions.OptunaError) as err:
        raise TraincraftError(f"cannot open the study's storage {plan.storage!r}: {err}") from err
    except Exception as err:  # noqa: BLE001 - a database driver's own errors
        if plan.storage is None or "://" not in str(plan.storage):
            raise
        raise TraincraftError(
            f"cannot open the storage {plan.storage!r}: {_one_line(err)}"
        ) from err
    _check_same_goal(study, plan, direction)
    done = len(study.get_trials(deepcopy=False))
    base = plan.section.seed if plan.section.seed is not None else int(plan.raw.get("seed", 0) or 0)
    # A different seed per worker and per continuation: the same seed would draw the points of
    # the earlier run, or of the other worker, again.
    seed = int(np.random.SeedSequence([base, worker, done]).generate_state(1)[0])
    study.sampler = build_sampler(plan.section.sampler, plan.dims, seed=seed, parallel=parallel)
    study.pruner = build_pruner(plan.section.pruner, max_epochs=plan.max_epochs)
    return study


def _check_same_goal(study: optuna.Study, plan: _Plan, direction: str) -> None:
    metric = plan.section.metric
    saved = study.user_attrs.get("metric")
    if saved is None:
        study.set_user_attr("metric", metric)
        saved = metric
    if saved != metric or study.direction.name.lower() != direction:
        raise TraincraftError(
            f"study {plan.study_name!r} {study.direction.name.lower()}s {saved} but this recipe "
            f"asks to {direction} {metric}: give another --study name (or study=...)"
        )


@contextlib.contextmanager
def _study_lock(folder: Path) -> Iterator[None]:
    """One worker at a time counts the trials and starts the next, so that workers sharing
    the study folder together run exactly the requested number."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here: parallel workers may start a trial too many
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Stop:
    """Ctrl-C and SIGTERM while a worker is between trials.

    During a trial the trainer's own handler is in charge (stop after this step; a second
    Ctrl-C aborts). Between trials a first signal only marks the worker as stopping, so that no
    new trial starts and one being set up ends at once; a second one aborts. A spawned worker
    also stops when its parent process has gone.
    """

    def __init__(self, watch_parent: bool = False):
        self.requested = False
        self.watch_parent = watch_parent

    def parent_gone(self) -> bool:
        if not self.watch_parent:
            return False
        import multiprocessing

        parent = multiprocessing.parent_process()
        gone = parent is not None and not parent.is_alive()
        if gone:
            self.requested = True
        return gone

    @contextlib.contextmanager
    def handling(self) -> Iterator[_Stop]:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self  # signals reach the main thread only
            return

        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True

        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, handler) for sig in signals}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def _work(
    plan: _Plan,
    study: optuna.Study,
    stop: _Stop,
    *,
    deadline: float | None,
    progress: bool,
    worker: int,
) -> bool:
    """Run trials until the study holds ``plan.trials`` of them or time is up. Returns True
    when interrupted (Ctrl-C, SIGTERM, or a spawned worker's parent gone).

    While the trials that remain run in other workers, it waits for those that would be noticed
    if their worker went away (:func:`~traincraft.tuning.lost.recoverable`), so that a lost
    one is run again here."""
    import optuna

    distributions = {key: dim.distribution() for key, dim in plan.dims.items()}
    token = uuid.uuid4().hex[:12]
    me = worker_id(token)
    target = plan.target()
    started_one = False
    LIVE_TOKENS.add(token)
    try:
        while True:
            if stop.requested or stop.parent_gone():
                return True
            # Like Optuna's own timeout: checked between trials, so each worker runs at least one.
            if started_one and deadline is not None and time.time() >= deadline:
                return False
            with _study_lock(plan.study_dir):
                next_step = _next_step(study, target)
                if next_step == "ask":
                    trial = _ask(study, distributions, me, target)
            if next_step == "done":
                return False
            if next_step == "wait":
                time.sleep(WAIT_SECONDS)
                continue
            if trial is None:
                continue  # the study was full when this trial came: it was not run
            started_one = True
            try:
                outcome = _run_trial(plan, study, trial, stop)
            except optuna.exceptions.UpdateFinishedTrialError:
                # Its heartbeat came too late (a stalled machine): another worker took the
                # trial for lost and queued it again; its result is not this worker's to tell.
                if progress:
                    print(f"{_who(worker)}trial {trial.number} was taken for lost by the study "
                          "(no heartbeat in time) and queued again; its result is dropped",
                          file=sys.stderr, flush=True)
                continue
            with _study_lock(plan.study_dir):
                _keep_best_weights(study, plan.study_dir)
            if progress:
                print(_trial_line(study, plan, outcome, worker), file=sys.stderr, flush=True)
            if outcome.state == "interrupted":
                return True
    except KeyboardInterrupt:
        return True
    finally:
        LIVE_TOKENS.discard(token)


def _next_step(study: optuna.Study, target: int) -> str:
    """``ask`` for a trial, ``wait`` for other workers' trials, or ``done``."""
    from optuna.trial import TrialState

    close_lost(study, study.get_trials(deepcopy=False))
    trials = study.get_trials(deepcopy=False)
    counted = sum(1 for t in trials if _counted(t))
    running = [t for t in trials if t.state == TrialState.RUNNING]
    waiting = any(t.state == TrialState.WAITING for t in trials)
    if counted >= target:
        return "done"
    if counted + len(running) < target or waiting:
        return "ask"
    storage = study_storage(study)
    return "wait" if any(recoverable(t, storage) for t in running) else "done"


def _ask(
    study: optuna.Study, distributions: dict[str, Any], me: str, target: int
) -> optuna.Trial | None:
    """A new trial, or one queued again (Optuna's ask takes those first), as this worker's.

    Workers on other machines share no lock: two may ask when one trial remains. A trial
    whose earlier trials already fill the study is closed at once (``skipped``, not counted):
    so the study holds exactly ``target`` trials however many workers there are."""
    from optuna.trial import TrialState

    with quiet_experimental():
        trial = study.ask(distributions)
    trial.set_user_attr("worker", me)
    earlier = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.number < trial.number
        and (_counted(t) or t.state in (TrialState.RUNNING, TrialState.WAITING))
    ]
    if len(earlier) < target:
        return trial
    trial.set_user_attr("surplus", True)
    study.tell(trial, state=TrialState.FAIL)
    return None


def _keep_best_weights(study: optuna.Study, folder: Path) -> None:
    """Delete the weights of every finished trial but the study's best in the study folder
    (those of running trials stay: one may become the best)."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    try:
        best = study.best_trial.number
    except ValueError:
        best = None
    for path in folder.glob(f"trial-*/{WEIGHTS[0]}"):
        number = path.parent.name.removeprefix("trial-")
        trial = trials.get(int(number)) if number.isdigit() else None
        if trial is None or trial.number == best or not trial.state.is_finished():
            continue
        for name in WEIGHTS:
            with contextlib.suppress(OSError):
                (path.parent / name).unlink(missing_ok=True)


def _who(worker: int) -> str:
    return f"[worker {worker}] " if worker else ""


def _trial_line(study: optuna.Study, plan: _Plan, outcome: _Outcome, worker: int) -> str:
    who = _who(worker)
    shown = "  ".join(f"{k}={_short(v)}" for k, v in outcome.values.items())
    if outcome.state == "failed":
        return f"{who}trial {outcome.number} failed: {outcome.error}  ({shown})"
    if outcome.state == "interrupted":
        return f"{who}trial {outcome.number} interrupted"
    figure = (
        f"{plan.section.metric} {format_value(outcome.value) if outcome.value is not None else '-'}"
    )
    epochs = f"{outcome.epochs} epoch{'' if outcome.epochs == 1 else 's'}"
    head = f"{who}trial {outcome.number} {outcome.state} after {epochs}: {figure}"
    try:
        best = study.best_trial
        tail = f"  (best {format_value(best.value)}, trial {best.number})"  # type: ignore[arg-type]
    except ValueError:
        tail = ""
    return f"{head}{tail}  {shown}  {outcome.seconds:.1f} s"


# ============================================================================== workers


def _worker_main(payload: dict[str, Any]) -> None:
    """A spawned worker process: open the shared study and run trials until there are enough."""
    import torch

    worker = int(payload["worker"])
    if hasattr(os, "setpgid"):
        # Out of the terminal's process group: Ctrl-C reaches the parent alone, which passes it
        # on once, so that one press stops each worker after its current step, not twice.
        os.setpgid(0, 0)
    try:
        torch.set_num_threads(int(payload["threads"]))
        plan = _Plan.from_payload(payload)
        with _quiet_optuna(), _Stop(watch_parent=True).handling() as stop:
            study = _open_study(plan, worker=worker, parallel=True)
            interrupted = _work(
                plan,
                study,
                stop,
                deadline=payload["deadline"],
                progress=payload["progress"],
                worker=worker,
            )
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except TraincraftError as err:
        print(f"error: worker {worker}: {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(EXIT_INTERRUPTED if interrupted else 0)


def _start_workers(
    plan: _Plan, workers: int, *, deadline: float | None, progress: bool, threads: int
) -> list[Any]:
    import multiprocessing

    # spawn, not fork: a forked copy of a process that already runs torch threads can hang.
    context = multiprocessing.get_context("spawn")
    processes = []
    for worker in range(1, workers):
        payload = {
            **plan.payload(),
            "worker": worker,
            "deadline": deadline,
            "progress": progress,
            "threads": threads,
        }
        process = context.Process(
            target=_worker_main, args=(payload,), name=f"tune-worker-{worker}"
        )
        process.start()
        processes.append(process)
    return processes


def _join_workers(processes: list[Any], stop: _Stop) -> list[str]:
    """Wait for the workers, passing Ctrl-C on to them (once per press); what went wrong."""
    import signal
    from multiprocessing.connection import wait

    passed_on = False
    try:
        while any(process.is_alive() for process in processes):
            if stop.requested and not passed_on:
                _signal_all(processes, signal.SIGINT)  # they stop after their current step
                passed_on = True
            wait([process.sentinel for process in processes], timeout=0.2)
    except KeyboardInterrupt:  # a second press: they abort their trials at once
        _signal_all(processes, signal.SIGINT)
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()
    problems = []
    for i, process in enumerate(processes, start=1):
        if process.exitcode not in (0, EXIT_INTERRUPTED):
            problems.append(f"worker {i} ended with exit code {process.exitcode}")
    return problems


def _signal_all(processes: list[Any], signum: int) -> None:
    for process in processes:
        if process.is_alive() and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signum)


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """``torch.set_num_threads(count)`` for the block (None: leave it)."""
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines off while we report ourselves; its warnings stay."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


# ============================================================================== entry points


@dataclass
class SearchResult:
    """What :func:`search` ends with: the study, whether Ctrl-C cut it short, the summary to
    print, and the workers that ended badly."""

    study: optuna.Study
    interrupted: bool
    summary: str
    problems: list[str]


def _as_raw(recipe: Any) -> dict[str, Any]:
    """A recipe (path, template name, dict or Recipe) as a raw dict with its tune section."""
    if isinstance(recipe, Recipe):
        raw = recipe.model_dump(mode="json")
        if getattr(recipe, "_base_dir", None):
            raw["_base_dir"] = recipe._base_dir
        return raw
    raw, _ = read_raw(recipe)
    return raw


def search(
    recipe: Any,
    *,
    trials: int | None,
    workers: int,
    storage: Any,
    study: str | None,
    study_dir: str | Path | None,
    progress: bool,
    plots: bool,
    allow_changes: bool = False,
    heartbeat: int | None = None,
    report: bool = False,
) -> SearchResult:
    """The search behind :func:`tune` and ``traincraft tune``: check the space, open the study
    (refusing one whose base recipe changed, unless ``allow_changes``), run the trials in this
    process and ``workers - 1`` others, then write the study folder's files."""
    _refuse_torchrun()
    raw = _as_raw(recipe)
    section = read_section(raw)
    raw.pop("tune")
    base = recipe_with(raw, {})
    _check_counts(trials, workers)
    heartbeat = check_heartbeat(heartbeat, storage)
    dims = section.dimensions()
    check_space(raw, dims)
    _require_optuna()
    import optuna

    if workers > 1 and isinstance(storage, optuna.storages.BaseStorage):
        raise TraincraftError(
            "workers > 1 need a storage they can each open: give a file path or a database URL"
        )
    name = study or base.name
    folder = Path(study_dir) if study_dir is not None else Path("runs") / f"{base.name}-tune"
    folder.mkdir(parents=True, exist_ok=True)
    plan = _Plan(raw, section, name, folder, storage, trials or section.trials, heartbeat, report)
    deadline = time.time() + section.timeout if section.timeout else None
    threads = max(1, _cpus() // workers) if workers > 1 else None
    with _quiet_optuna(), _Stop().handling() as stop:
        the_study = _open_study(plan, worker=0, parallel=workers > 1)
        with _study_lock(folder):
            changes = check_base(the_study, raw, list(dims), allow_changes=allow_changes)
        changed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        if changes and progress:
            print(
                f"continuing study {name!r} with another base recipe ({changed}); best.yaml "
                "is the recipe the best trial trained with",
                file=sys.stderr,
                flush=True,
            )
        processes = _start_workers(
            plan, workers, deadline=deadline, progress=progress, threads=threads or 1
        )
        try:
            with _threads(threads):
                interrupted = _work(
                    plan, the_study, stop, deadline=deadline, progress=progress, worker=0
                )
        except BaseException:
            stop.requested = True
            _join_workers(processes, stop)
            raise
        # The trainer's handler took a Ctrl-C during the trial: the workers get it from here.
        stop.requested = stop.requested or interrupted
        problems = _join_workers(processes, stop)
    keys = list(dims)
    write_trials_csv(the_study, folder / "trials.csv", keys)
    write_best_yaml(the_study, raw, folder)
    if plots:
        write_plots(the_study, folder, keys)
    summary = summarize(the_study, folder)
    if changes:
        summary += f"\ncontinued with another base recipe ({changed}), as allowed"
    if interrupted:
        summary += "\ninterrupted: running the same command again continues the study"
    if problems:
        summary += "\n" + "\n".join(problems)
    return SearchResult(the_study, interrupted, summary, problems)


def _check_counts(trials: int | None, workers: int) -> None:
    for name, value in (("trials", trials), ("workers", workers)):
        if value is None and name == "trials":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TraincraftError(f"{name} must be an integer >= 1, got {value!r}")


def _refuse_torchrun() -> None:
    """Under torchrun every process would ask the study for a trial of its own, and the
    trials would train together in one process group: refused."""
    from traincraft.distributed import launched_world_size

    size = launched_world_size()
    if size > 1:
        raise TraincraftError(
            f"traincraft tune does not run under torchrun (WORLD_SIZE={size}): each process "
            "would train a trial of its own in one process group; run it without torchrun, "
            "with --workers K on one machine, or one `traincraft tune --storage "
            "postgresql://... --study NAME` per machine"
        )


def _require_optuna() -> None:
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise TraincraftError("tuning needs Optuna: pip install 'traincraft[tune]'")


def tune(
    recipe: str | Path | Mapping[str, Any] | Recipe,
    *,
    trials: int | None = None,
    workers: int = 1,
    storage: str | Path | Any = None,
    study: str | None = None,
    study_dir: str | Path | None = None,
    progress: bool = False,
    plots: bool = True,
    allow_changes: bool = False,
    heartbeat: int | None = None,
    report: bool = False,
) -> optuna.Study:
    """Search the recipe's ``tune.space`` with Optuna; every trial is an ordinary run.

    Running again with the same study continues it until it holds ``trials`` trials (complete,
    pruned or failed; trials cut short by Ctrl-C or a lost worker do not count: a lost worker's
    trial is run again by the others), provided the
    recipe's keys that are not searched are what the study was run with. A trial that
    fails is recorded with its error (user attribute ``error``) and the search goes on. Ctrl-C
    stops after the current step of each worker; the study stays as it was.

    Args:
        recipe: a recipe file, a template name, a dict or a :class:`~traincraft.recipe.Recipe`,
            with a ``tune:`` section.
        trials: trials the study should hold in the end (default ``tune.trials``).
        workers: processes running trials at once on this machine, sharing the study.
        storage: None for a journal file in the study folder; a file path (journal); a database
            URL (``postgresql://...``, ``mysql://...``) for workers on several machines; or an
            Optuna storage object (one worker only).
        study: the study's name (default: the recipe's ``name``).
        study_dir: the study folder (default ``runs/<recipe name>-tune``).
        progress: print a line per trial and a summary at the end (on stderr).
        plots: write the PNG plots.
        allow_changes: continue a study although its base recipe (the keys that are not
            searched) changed; ``best.yaml`` stays the recipe the best trial trained with.
        heartbeat: with a database URL, seconds between a running trial's heartbeats (default
            60): a trial without one for twice as long is taken for lost and run again.
        report: each trial also writes its report.html and evaluates its best weights at its
            end (results.json's test figures and tables, predictions.npz); off, a trial's run
            folder holds its recipe, metrics.csv and, for the study's best, its weights.

    Returns:
        The ``optuna.Study`` (``best_value``, ``best_params``, ``trials``, ...).

    Raises:
        RecipeError: a mistake in the tune section, or a space key that names nothing in the
            recipe (before any trial runs).
        TraincraftError: the study was run with another base recipe (the changed keys are
            named), or with another metric.
        MetricNotReported: the tuned metric is not among the reported figures.

    Example:
        >>> study = tune("recipe.yaml", trials=20, study_dir="runs/search")
        >>> study.best_trial.user_attrs["values"]
        {'optimizer.lr': 0.0031, 'model.dropout': 0.12}
    """
    result = search(
        recipe,
        trials=trials,
        workers=workers,
        storage=storage,
        study=study,
        study_dir=study_dir,
        progress=progress,
        plots=plots,
        allow_changes=allow_changes,
        heartbeat=heartbeat,
        report=report,
    )
    if progress:
        print(result.summary, file=sys.stderr, flush=True)
    return result.study
