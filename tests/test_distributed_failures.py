"""Several processes that go wrong: bad ``--nproc``, a port in use, a process that dies, one that hangs.

Each run that starts processes has a ``timeout=`` so that a hang fails the test instead of
blocking CI. The helpers (recipe, environment) are those of tests/test_distributed.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from traincraft import distributed
from traincraft.cli import main as cli_main

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from test_distributed import LAUNCH_TIMEOUT, environment, run, write_recipe  # noqa: E402


def fit_argv(*extra: str) -> list[str]:
    return ["fit", "regression", *extra]


def test_nproc_and_ports_are_checked_before_anything_starts(capsys, monkeypatch) -> None:
    assert cli_main(fit_argv("--nproc", "0")) == 2
    assert "error: --nproc must be at least 1, got 0" in capsys.readouterr().err
    cores = distributed.usable_cores()
    assert cli_main(fit_argv("train.device=cpu", "--nproc", str(cores + 1))) == 2
    assert f"error: --nproc {cores + 1}, but this machine has {cores} CPU cores" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli_main(fit_argv("train.device=cpu", "--nproc", "2", "--master-port", str(port))) == 2
    assert f"error: --master-port {port} is in use" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli_main(fit_argv("--nproc", "2")) == 2
    assert "error: rank 1: --nproc in a process that torchrun started: leave --nproc out" in capsys.readouterr().err


def test_a_process_that_dies_ends_the_run_with_one_clear_line(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, "distributed_worker:DyingMLP")
    done, seconds = run(["-m", "traincraft", "fit", str(recipe), "train.max_epochs=100", "train.dist_timeout=10",
                         "--nproc", "2", "--no-progress"], cwd=tmp_path)
    assert done.returncode != 0
    assert seconds < 10 + 40  # the timeout, and start-up with a margin: never a hang
    lines = done.stderr.splitlines()
    assert any(line.startswith("error: training stopped: rank 1 was killed by SIGKILL") for line in lines), done.stderr
    assert "Traceback" not in done.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_ranks(tmp_path: Path, mode: str) -> tuple[dict, dict]:
    """Run distributed_worker.py MODE as ranks 0 and 1 (no torchrun: it would stop rank 1 as soon
    as rank 0 fails; the timeout must do it alone); what each wrote."""
    port = free_port()
    processes = []
    for rank in (0, 1):
        env = {**environment(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        processes.append(subprocess.Popen([sys.executable, str(TESTS / "distributed_worker.py"), mode,
                                           str(tmp_path)], env=env, stderr=subprocess.PIPE, text=True))
    try:
        errors = [p.communicate(timeout=LAUNCH_TIMEOUT)[1] for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [0, 0], errors
    first, second = (json.loads((tmp_path / f"rank-{r}.json").read_text())["hang"] for r in (0, 1))
    return first, second


def test_a_process_that_hangs_stops_the_others_after_the_timeout(tmp_path: Path) -> None:
    first, second = two_ranks(tmp_path, "hang")
    assert first["type"] == "DistributedError"
    assert first["error"].startswith("rank 0 of 2: lost contact with the other processes (one of them stopped, died")
    assert "dist_timeout=2 s" in first["error"]
    waited = first["failed"] - second["asleep"]
    assert 1.5 <= waited < 2 + 8, waited  # about the timeout (2 s), not rank 1's 5 s of sleep
    assert second["type"] == "DistributedError"  # rank 1 then finds rank 0 gone: an error, not a hang


def test_a_process_that_hangs_after_the_last_collective_is_named_within_the_timeout(tmp_path: Path) -> None:
    first, second = two_ranks(tmp_path, "hang-end")
    assert first["type"] == "DistributedError", first
    assert first["error"].startswith("rank 0 of 2: not every process reached the end of the run within "
                                     "dist_timeout=2 s"), first["error"]
    assert 1.5 <= first["failed"] - second["asleep"] < 2 + 8  # about the timeout, not rank 1's 5 s


@pytest.mark.parametrize("argv", [["fit", "--nproc", "2"], ["resume", "runs/x", "--nproc", "2"]])
def test_help_lists_the_process_options(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit):
        cli_main([argv[0], "--help"])
    out = capsys.readouterr().out
    assert "--nproc N" in out and "--master-port PORT" in out
