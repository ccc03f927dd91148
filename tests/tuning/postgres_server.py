"""A throwaway PostgreSQL server for the tests (and the benchmark): a new cluster in a temporary
folder, listening on a free local port, stopped and deleted at the end.

It uses Debian's ``postgresql`` package (``initdb`` and ``pg_ctl`` under
``/usr/lib/postgresql/<version>/bin``). PostgreSQL refuses to run as root: as root, the cluster
belongs to the ``postgres`` user (or ``nobody``) and the commands run as that user (``runuser``).

Example:
    >>> with throwaway_cluster() as url:
    ...     optuna.create_study(storage=url)
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """No server could be started here: the reason, in one line."""


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise PostgresUnavailable(f"no {name} (install Debian's postgresql package)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _owner() -> str | None:
    """The user the server runs as when this process is root; None: this process's own."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresUnavailable("running as root and there is no postgres or nobody user to own the cluster")


def _run(command: list[str], owner: str | None, timeout: float) -> None:
    if owner is not None:
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresUnavailable("running as root without runuser to start the server as another user")
        command = [runuser, "-u", owner, "--", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise PostgresUnavailable(f"{Path(command[0]).name}: {err}") from None
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        raise PostgresUnavailable(f"{' '.join(command[-4:])} failed: {last[0]}")


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """Start a cluster; yield its URL (``postgresql://tune@127.0.0.1:PORT/postgres``)."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    owner = _owner()
    folder = Path(tempfile.mkdtemp(prefix="traincraft-pg-"))
    data = folder / "data"
    try:
        if owner is not None:
            record = pwd.getpwnam(owner)
            os.chown(folder, record.pw_uid, record.pw_gid)
        _run([initdb, "-D", str(data), "-U", "tune", "-A", "trust", "--no-sync"], owner, 120)
        port = _free_port()
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -k {folder} -c fsync=off"
        log = folder / "server.log"
        _run([pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start"],
             owner, 90)
        try:
            yield f"postgresql://tune@127.0.0.1:{port}/postgres"
        finally:
            with contextlib.suppress(PostgresUnavailable):
                _run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], owner, 60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
