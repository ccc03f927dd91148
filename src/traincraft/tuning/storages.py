"""The study's storage: a journal file for one machine (the default), or a database URL for
workers on several machines, with heartbeats so that a lost worker's trial is noticed.

Optuna's journal file has no heartbeats: on one machine a worker that went away is noticed by
its process id (:mod:`traincraft.tuning.lost`). A database (Optuna's ``RDBStorage``) records a
heartbeat of every running trial; a trial whose heartbeat is older than the grace period (twice
the interval) is failed by the next worker that looks, and queued again with the same values.

Example:
    >>> storage = open_storage("postgresql://tune@db/studies", Path("runs/x"), heartbeat=30)
    >>> storage.get_heartbeat_interval()
    30
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traincraft.errors import TraincraftError

if TYPE_CHECKING:
    import optuna

__all__ = ["DEFAULT_HEARTBEAT", "JOURNAL_NAME", "Heartbeat", "check_heartbeat", "open_storage"]

JOURNAL_NAME = "study.journal"
#: Seconds between a running trial's heartbeats in a database; lost after twice as long.
DEFAULT_HEARTBEAT = 60
#: How many times a lost trial is queued again before it counts as failed.
MAX_RETRIES = 2


def is_url(spec: Any) -> bool:
    return spec is not None and not _is_storage(spec) and "://" in str(spec)


def _is_storage(spec: Any) -> bool:
    import optuna

    return isinstance(spec, optuna.storages.BaseStorage)


def check_heartbeat(heartbeat: Any, storage: Any) -> int | None:
    """The heartbeat interval in whole seconds (None: the default where there is one);
    one clear line for a value that cannot be used or a storage that has no heartbeats."""
    if heartbeat is None:
        return None
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat < 1:
        raise TraincraftError(f"heartbeat must be a whole number of seconds >= 1, got {heartbeat!r}")
    if not is_url(storage):
        raise TraincraftError(
            "heartbeat needs a database storage (--storage postgresql://...): a journal file "
            "has no heartbeats (on one machine, a worker that went away is noticed without them)"
        )
    return heartbeat


def open_storage(spec: Any, study_dir: Path, *, heartbeat: int | None = None) -> Any:
    """A journal file (default ``<study_dir>/study.journal``), a database URL (with heartbeats
    every ``heartbeat`` seconds, default 60, and lost trials queued again), or an Optuna
    storage object as it is."""
    import optuna

    if _is_storage(spec):
        return spec
    if is_url(spec):
        return _database(str(spec), heartbeat or DEFAULT_HEARTBEAT)
    path = Path(spec) if spec is not None else study_dir / JOURNAL_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    journal = optuna.storages.journal
    # Optuna's default lock is a symbolic link, which Windows allows only to administrators.
    lock = journal.JournalFileOpenLock(str(path)) if os.name == "nt" else None
    return optuna.storages.JournalStorage(journal.JournalFileBackend(str(path), lock_obj=lock))


def _database(url: str, heartbeat: int) -> Any:
    import optuna

    with quiet_experimental():
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=retry_callback(),
        )


def retry_callback() -> Any:
    """Optuna's callback that queues a lost trial again (state WAITING, same values), at most
    :data:`MAX_RETRIES` times."""
    import optuna

    with quiet_experimental():
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def heartbeat_interval(storage: Any) -> int | None:
    """The storage's heartbeat interval, None where it keeps none (a journal file)."""
    from optuna.storages._heartbeat import BaseHeartbeat

    if isinstance(storage, BaseHeartbeat):
        return storage.get_heartbeat_interval()
    return None


class quiet_experimental:
    """Optuna's notices that heartbeats are experimental, and that they are meant for
    ``Study.optimize`` (the search asks and tells, and beats itself: :class:`Heartbeat`)."""

    def __enter__(self) -> None:
        import warnings

        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*")
        warnings.filterwarnings("ignore", message=".*experimental.*")

    def __exit__(self, *exc: Any) -> None:
        self._catcher.__exit__(*exc)


class Heartbeat:
    """Records a running trial's heartbeat now and then every ``interval`` seconds, on a
    thread of its own, until the block ends (nothing where the storage keeps none).

    Example:
        >>> with Heartbeat(storage, trial._trial_id):
        ...     fit()
    """

    def __init__(self, storage: Any, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self.interval = heartbeat_interval(storage)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.interval is None:
            return self
        self._beat()  # at once: a trial without any heartbeat is never taken for lost
        self._thread = threading.Thread(target=self._run, name="tune-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            self._beat()

    def _beat(self) -> None:
        try:
            self.storage.record_heartbeat(self.trial_id)
        except Exception:  # noqa: BLE001 - the database is away for a moment: beat next time
            pass


def study_storage(study: optuna.Study) -> Any:
    """The storage a study reads and writes (Optuna keeps it on the study)."""
    return study._storage
