"""Atomic file writes: a temporary file in the same folder, flushed, fsynced, renamed.

A crash (even SIGKILL) at any instant leaves either the old file or the new one, never a torn one.

With ``background=True`` (the files a training loop writes every epoch) the caller's thread
writes the bytes into the temporary file; the fsync, the rename and the fsync of the folder
happen on one background thread, in the order the writes were made, so that the loop does not
wait for the disk. A file appears under its name
only once its bytes are on disk, exactly as before; it just appears a few milliseconds later.
:func:`wait` returns once every pending file is in place (readers in the same process call it;
the trainer calls it before ``on_fit_end``, and it runs at exit). An error of the background
work (a full disk) is raised by the next :func:`atomic_write` or :func:`wait`.
"""

from __future__ import annotations

import atexit
import os
import queue
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(
    path: str | Path,
    write: Callable[[IO[bytes]], Any],
    *,
    then: Callable[[], Any] | None = None,
    background: bool = False,
) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``; it replaces ``path`` once its
    bytes are on disk. ``then`` runs after the rename: to link or delete files that depend on
    this one. ``background``: return once the bytes are written; the fsync, the rename and
    ``then`` happen on the writer thread, in order (the training loop's own files). Otherwise
    the file is in place when this returns (after every pending background file)."""
    path = Path(path)
    if background:
        _SYNCER.raise_error()
    else:
        _SYNCER.wait()  # earlier background writes first: the order of writes is kept
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb", closefd=False) as handle:
            write(handle)
            handle.flush()
    except BaseException:
        os.close(fd)
        with _suppress():
            os.unlink(tmp)
        raise
    job = _Job(fd, tmp, path, then)
    if background:
        _SYNCER.submit(job)
    else:
        job.run()
    return path


def atomic_write_text(path: str | Path, text: str, *, background: bool = False) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), background=background)


def wait() -> None:
    """Return once every file written so far is in place; raise the background work's error."""
    _SYNCER.wait()


class _Job:
    __slots__ = ("fd", "tmp", "path", "then")

    def __init__(self, fd: int, tmp: str, path: Path, then: Callable[[], Any] | None):
        self.fd, self.tmp, self.path, self.then = fd, tmp, path, then

    def run(self) -> None:
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            with _suppress():
                os.unlink(self.tmp)
            raise
        _fsync_dir(self.path.parent)
        if self.then is not None:
            self.then()


class _Syncer:
    """One background thread that finishes the writes in order."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def submit(self, job: _Job) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._start()
        self._jobs.put(job)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="traincraft-files", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job.run()
            except BaseException as err:  # kept for the caller's thread
                self._error = self._error or err
            finally:
                self._jobs.task_done()

    def wait(self) -> None:
        self._jobs.join()
        self.raise_error()

    def raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise OSError(f"writing a run file failed: {error}") from error


_SYNCER = _Syncer()
atexit.register(lambda: _SYNCER.wait())  # the current one: a forked child has its own


def _after_fork() -> None:
    # A forked child has no writer thread and must not finish its parent's writes.
    global _SYNCER
    _SYNCER = _Syncer()


os.register_at_fork(after_in_child=_after_fork)


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not every platform lets a folder be opened.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True
