"""Atomic file writes: a temporary file in the same folder, flushed, fsynced, renamed.

A crash (even SIGKILL) at any instant leaves either the old file or the new one, never a torn one.

With ``background=True`` (the files a training loop writes every epoch) the caller's thread only
serializes: the bytes go to memory (up to ``SPILL_BYTES``; a larger file spills into its
temporary file on the caller's thread). Creating the temporary file, writing it, the fsync and the
rename happen on one background thread, in the order the writes were made, so that the loop
waits neither for the disk nor for the file system. A file appears under its name only once its
bytes are on disk, exactly as a plain write; it just appears a few milliseconds later. The
folders' own fsync (which makes the renames themselves durable: without it, a power cut can
bring back the previous version, never a torn one) is done by :func:`wait`, and otherwise at
most every ``FOLDER_SYNC_SECONDS`` when the thread runs out of work.
:func:`wait` returns once every pending file is in place (readers in the same process call it;
the trainer calls it before ``fit`` returns, and it runs at exit). An error of the background
work (a full disk) is raised by the next :func:`atomic_write` or :func:`wait`.

Files rewritten at every epoch that only mirror the training state (``metrics.csv``, the best
weights) are written with ``at_most_every``: the newest version waits until that many seconds
have passed since the file's previous write (its first write: since the first request), and a
newer version replaces a waiting one. Its ``write`` runs only then, on the writer thread, so a
version that is replaced costs nothing but the data it captured (which must not change
afterwards: a copy). Epochs longer than that see no difference; a run of many short epochs
writes those files a few times instead of once per epoch. :func:`wait` writes every waiting
version at once, so readers and the end of ``fit`` see the newest.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import itertools
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from traincraft.errors import TraincraftError

# A background file's bytes up to this size wait in memory for the writer thread.
SPILL_BYTES = 64 << 20
# Seconds between two writes of a file that mirrors the training state (metrics.csv, best.*).
MIRROR_SECONDS = 2.0
# Seconds between two fsyncs of the folders the background writes renamed files in.
FOLDER_SYNC_SECONDS = 10.0


def atomic_write(
    path: str | Path,
    write: Callable[[IO[bytes]], Any],
    *,
    then: Callable[[], Any] | None = None,
    background: bool = False,
    at_most_every: float | None = None,
) -> Path:
    """Call ``write(fileobj)``; what it writes replaces ``path`` once its bytes are on disk.
    ``then`` runs after the rename: to link or delete files that depend on this one.
    ``background``: return once ``write`` has returned; the file work happens on the writer
    thread, in order (the training loop's own files). Otherwise the file is in place when this
    returns (after every pending background file). ``at_most_every`` (seconds, background
    only): see the module's doc."""
    path = Path(path)
    if at_most_every is not None:
        _SYNCER.raise_error()
        _SYNCER.submit_later(_Job(path, None, then, write), float(at_most_every))
        return path
    if background:
        _SYNCER.raise_error()
        spool = _Spool(path)
        try:
            write(spool)  # type: ignore[arg-type]
            spool.flush()
        except OSError as err:  # spilling into its temporary file
            spool.discard()
            raise RunFilesError.of(err, path, spool.size) from err
        except BaseException:
            spool.discard()
            raise
        _SYNCER.submit(_Job(path, spool, then))
        return path
    _SYNCER.wait()  # earlier background writes first: the order of writes is kept
    written = 0
    try:
        fd, tmp = _temporary(path)
        try:
            with os.fdopen(fd, "wb", closefd=False) as handle:
                write(handle)
                handle.flush()
                written = handle.tell()
        except BaseException:
            os.close(fd)
            _remove(tmp)
            raise
        _finish(fd, tmp, path)
    except OSError as err:
        raise RunFilesError.of(err, path, written) from err
    _fsync_dir(path.parent)
    if then is not None:
        then()
    return path


class RunFilesError(TraincraftError, OSError):
    """A run file could not be written (a full disk, a read-only folder): one line naming the
    file, the folder's free space and what the file needed. The file's previous version is intact."""

    @classmethod
    def of(cls, err: OSError, path: Path, size: int = 0) -> RunFilesError:
        if isinstance(err, RunFilesError):
            return err
        folder = path.parent
        try:
            free = shutil.disk_usage(_existing(folder)).free
            space = f"; {folder} has {_size(free)} free"
        except OSError:
            space = ""
        needed = f", the file needs {_size(size)}" if size else ""
        reason = err.strerror or str(err)
        return cls(f"cannot write {path}: {reason}{space}{needed}. Its previous version is intact: "
                   "free some space (or make the folder writable) and resume the run")


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def copy_durably(source: Path, target: Path) -> None:
    """Make ``target`` a copy of ``source`` of its own (not a link: other blocks of the disk),
    atomically and fsynced."""
    fd, tmp = _temporary(target)
    try:
        with open(source, "rb") as src:
            os.ftruncate(fd, 0)
            size = os.fstat(src.fileno()).st_size
            offset = 0
            while offset < size:
                sent = os.sendfile(fd, src.fileno(), offset, size - offset) if hasattr(os, "sendfile") else 0
                if not sent:  # no sendfile here: a plain copy
                    src.seek(offset)
                    while chunk := src.read(1 << 20):
                        os.write(fd, chunk)
                    break
                offset += sent
    except BaseException:
        os.close(fd)
        _remove(tmp)
        raise
    _finish(fd, tmp, target)


def flush_waiting() -> None:
    """Hand every waiting version (``at_most_every``) to the writer now, in order: what is
    submitted next is written after them."""
    for job in _SYNCER._due_jobs(everything=True):
        _SYNCER.submit(job)


def atomic_write_text(
    path: str | Path, text: str, *, background: bool = False, at_most_every: float | None = None
) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), background=background,
                        at_most_every=at_most_every)


def wait() -> None:
    """Return once every file written so far is in place; raise the background work's error."""
    _SYNCER.wait()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Background writes made inside the block are handed to the writer thread when it ends, so
    that the thread does not compete with the caller for the interpreter meanwhile (the trainer
    serializes an epoch's files under it). :func:`wait` inside the block hands them over first."""
    _SYNCER.holding += 1
    try:
        yield
    finally:
        _SYNCER.holding -= 1
        if not _SYNCER.holding:
            _SYNCER.release()


_MADE_FOLDERS: set[Path] = set()
_COUNTER = itertools.count()


def _temporary(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path``, opened for writing (its name unique to this
    process and call: no random names to draw)."""
    folder = path.parent
    if folder not in _MADE_FOLDERS:
        folder.mkdir(parents=True, exist_ok=True)
        _MADE_FOLDERS.add(folder)
    tmp = f"{folder}/.{path.name}.{os.getpid()}-{next(_COUNTER)}.tmp"
    try:
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
    except FileNotFoundError:  # the folder was removed since: make it again
        _MADE_FOLDERS.discard(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp


def _finish(fd: int, tmp: str, path: Path) -> None:
    """fsync and close the temporary file, then rename it into place."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


class _Spool(io.RawIOBase):
    """Where a background write goes: memory, then its temporary file once past SPILL_BYTES
    (so a large checkpoint is never held whole in memory)."""

    def __init__(self, path: Path):
        self.path = path
        self.memory: io.BytesIO | None = io.BytesIO()
        self.fd: int | None = None
        self.tmp = ""
        self.handle: IO[bytes] | None = None
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.size += memoryview(data).nbytes
        if self.handle is not None:
            return self.handle.write(data)
        assert self.memory is not None
        written = self.memory.write(data)
        if self.memory.tell() > SPILL_BYTES:
            self.fd, self.tmp = _temporary(self.path)
            self.handle = os.fdopen(self.fd, "wb", closefd=False)
            self.handle.write(self.memory.getbuffer())
            self.memory = None
        return written

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.flush()

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            _remove(self.tmp)
            self.fd = None

    def finish(self) -> None:
        """On the writer thread: the bytes into their temporary file, fsync, rename."""
        if self.fd is None:
            assert self.memory is not None
            self.fd, self.tmp = _temporary(self.path)
            try:
                data = self.memory.getbuffer()
                while data:
                    data = data[os.write(self.fd, data) :]
            except BaseException:
                self.discard()
                raise
            self.memory = None
        elif self.handle is not None:
            self.handle.close()  # flushed already; the descriptor stays open (closefd=False)
        _finish(self.fd, self.tmp, self.path)


class _Job:
    """One file to put in place: its bytes in ``spool``, or (``at_most_every``) a ``write`` that
    produces them when the job runs."""

    __slots__ = ("path", "spool", "then", "write")

    def __init__(self, path: Path, spool: _Spool | None, then: Callable[[], Any] | None,
                 write: Callable[[IO[bytes]], Any] | None = None):
        self.path, self.spool, self.then, self.write = path, spool, then, write

    def run(self) -> None:
        if self.spool is None:
            assert self.write is not None
            self.spool = _Spool(self.path)
            try:
                self.write(self.spool)  # type: ignore[arg-type]
                self.spool.flush()
            except BaseException:
                self.spool.discard()
                raise
        self.spool.finish()
        if self.then is not None:
            self.then()


class _Syncer:
    """One background thread that finishes the writes in order."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self.holding = 0  # deferred() blocks open
        self._held: list[_Job] = []
        # at_most_every: the waiting newest version of each path, when it is due, and when each
        # path was last handed to the thread (the caller's thread and this one share them).
        self._later: dict[Path, tuple[float, _Job]] = {}
        self._last_written: dict[Path, float] = {}
        self._later_lock = threading.Lock()
        # Folders whose renames are not fsynced yet: done by wait(), else when the thread is
        # out of work and FOLDER_SYNC_SECONDS have passed (each file itself is fsynced at once).
        self._renamed_in: set[Path] = set()
        self._next_folder_sync = 0.0

    def submit(self, job: _Job) -> None:
        if self.holding:
            self._held.append(job)
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._start()
        self._jobs.put(job)

    def submit_later(self, job: _Job, seconds: float) -> None:
        """``job`` as the newest version of its path, due ``seconds`` after the path's previous
        write (or after now, for its first); a version still waiting is dropped."""
        now = time.monotonic()
        with self._later_lock:
            last = self._last_written.get(job.path)
            due = now + seconds if last is None else max(now, last + seconds)
            waiting = self._later.pop(job.path, None)
            if waiting is not None:  # replaced (never serialized): the newer keeps its place in time
                due = min(due, waiting[0])
            self._later[job.path] = (due, job)
        self.submit(_WAKE)  # the thread sleeps until the earliest due time

    def _due_jobs(self, everything: bool = False) -> list[_Job]:
        now = time.monotonic()
        with self._later_lock:
            due = [path for path, (when, _) in self._later.items() if everything or when <= now]
            jobs = [self._later.pop(path)[1] for path in due]
            for job in jobs:
                self._last_written[job.path] = now
        return jobs

    def _next_due_in(self) -> float | None:
        with self._later_lock:
            if not self._later:
                return None
            return max(0.0, min(when for when, _ in self._later.values()) - time.monotonic())

    def release(self) -> None:
        """Hand the jobs held by deferred() to the thread, in order."""
        held, self._held, holding = self._held, [], self.holding
        self.holding = 0
        for job in held:
            self.submit(job)
        self.holding = holding

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="traincraft-files", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self._next_due_in())
            except queue.Empty:  # a waiting version is due
                for due in self._due_jobs():
                    self._jobs.put(due)
                continue
            if job is _WAKE:
                self._jobs.task_done()
                continue
            try:
                with self._later_lock:
                    self._renamed_in.add(job.path.parent)
                job.run()
                if self._jobs.qsize() == 0 and time.monotonic() >= self._next_folder_sync:
                    self.sync_folders()  # out of work, and a while since the last time
            except OSError as err:  # kept for the caller's thread
                size = job.spool.size if job.spool is not None else 0
                self._error = self._error or RunFilesError.of(err, job.path, size)
            except BaseException as err:  # kept for the caller's thread
                self._error = self._error or err
            finally:
                self._jobs.task_done()

    def sync_folders(self) -> None:
        """fsync the folders of the renames made since the last call: the renames made durable."""
        with self._later_lock:
            folders, self._renamed_in = self._renamed_in, set()
            self._next_folder_sync = time.monotonic() + FOLDER_SYNC_SECONDS
        for folder in folders:
            _fsync_dir(folder)

    def wait(self) -> None:
        for job in self._due_jobs(everything=True):  # waiting versions: written now
            self.submit(job)
        self.release()
        self._jobs.join()
        self.sync_folders()
        self.raise_error()

    def raise_error(self) -> None:
        error, self._error = self._error, None
        if isinstance(error, RunFilesError):
            raise error
        if error is not None:
            raise OSError(f"writing a run file failed: {error}") from error


_WAKE: Any = object()  # put on the queue to make the thread look at its due times again
_SYNCER = _Syncer()
atexit.register(lambda: _SYNCER.wait())  # the current one: a forked child has its own


def _after_fork() -> None:
    # A forked child has no writer thread and must not finish its parent's writes: it starts
    # with a writer of its own, with nothing pending.
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


def process_running(pid: int) -> bool:
    """Whether process ``pid`` runs (a writer whose leftovers are still its own). Where there is
    no cheap check (not POSIX), True: nothing is taken for abandoned."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True
