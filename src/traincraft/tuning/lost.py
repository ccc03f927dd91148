"""Workers that went away (killed, crashed, a machine lost): their running trials are failed
and queued again with the same values, so that the study still reaches its number of trials.

Two ways to notice one:

* on this machine, by process id: a running trial's ``worker`` attribute is
  ``machine:pid:token``, and a process that no longer exists has gone. The parent of spawned
  workers reaps those that ended first (an unreaped child, a zombie, still answers as alive).
* anywhere, by heartbeat, where the storage keeps them (a database URL,
  :mod:`traincraft.tuning.storages`): a trial whose heartbeat is older than the grace period.

Either way the trial is failed (``abandoned``: not counted) and queued again (Optuna's
:class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`): the next worker to ask for a trial
runs it. A trial lost :data:`~traincraft.tuning.storages.MAX_RETRIES` times more counts as failed.

Example:
    >>> if close_lost(study, study.get_trials(deepcopy=False)):
    ...     trials = study.get_trials(deepcopy=False)
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from traincraft.files import process_running
from traincraft.tuning.storages import (
    MAX_RETRIES,
    heartbeat_interval,
    quiet_experimental,
    retry_callback,
    study_storage,
)

if TYPE_CHECKING:
    import optuna

__all__ = ["LIVE_TOKENS", "close_lost", "lost_for_good", "machine", "recoverable", "worker_id"]

LIVE_TOKENS: set[str] = set()  # worker loops running in this process


@functools.cache
def machine() -> str:
    """This machine as worker ids name it: the host name, and the process-id namespace where
    there is one (containers that share a host name do not share process ids)."""
    host = socket.gethostname().replace(":", "_")
    try:
        space = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return host
    digits = "".join(c for c in space if c.isdigit())
    return f"{host}/{digits}" if digits else host


def worker_id(token: str) -> str:
    return f"{machine()}:{os.getpid()}:{token}"


def _here(worker: str) -> bool:
    """Whether the worker of this id runs on this machine (ids of earlier releases name the
    host alone)."""
    if worker.count(":") < 2:
        return False
    return worker.rsplit(":", 2)[0] in (machine(), socket.gethostname())


def _gone(worker: str) -> bool:
    """Whether the worker of this id ran on this machine and has gone."""
    if not _here(worker):
        return False
    _, pid, token = worker.rsplit(":", 2)
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return token not in LIVE_TOKENS
    return not process_running(int(pid))


def _reap_children() -> None:
    """Collect the exit status of this process's spawned workers that have ended, so that
    their process ids stop answering as alive."""
    import multiprocessing

    multiprocessing.active_children()


def close_lost(study: optuna.Study, trials: Sequence[optuna.trial.FrozenTrial]) -> bool:
    """Fail and queue again the running trials of workers that have gone: this machine's by
    process id, any machine's by heartbeat where the storage keeps them. True when any was."""
    from optuna.trial import TrialState

    _reap_children()
    closed = False
    retry = retry_callback()
    for trial in trials:
        if trial.state != TrialState.RUNNING or not _gone(str(trial.user_attrs.get("worker", ""))):
            continue
        import optuna

        try:
            failed = study.tell(trial.number, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker closed it first
        retry(study, failed)
        closed = True
    if heartbeat_interval(study_storage(study)) is not None:
        import optuna

        before = len(trials)
        with quiet_experimental():
            optuna.storages.fail_stale_trials(study)
        closed = closed or len(study.get_trials(deepcopy=False)) != before
    return closed


def recoverable(trial: optuna.trial.FrozenTrial, storage: object) -> bool:
    """Whether a running trial would be noticed if its worker went away: this machine's, or
    any where the storage keeps heartbeats. Workers wait for those before they end, so that a
    lost one is run again; another machine's trial in a journal file is left to its worker."""
    return heartbeat_interval(storage) is not None or _here(str(trial.user_attrs.get("worker", "")))


def lost_for_good(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial failed without an error of its own after it was queued again ``MAX_RETRIES``
    times: it is not queued again, and counts as failed."""
    from optuna.trial import TrialState

    history = trial.system_attrs.get("retry_history", [])
    return (
        trial.state == TrialState.FAIL
        and "error" not in trial.user_attrs
        and not trial.user_attrs.get("interrupted")
        and not trial.user_attrs.get("surplus")
        and len(history) >= MAX_RETRIES
    )
