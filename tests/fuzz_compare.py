"""Helpers of the kill-and-resume fuzz (tests/test_resume_fuzz.py, bench/resume_fuzz.py).

* :func:`compare_runs` (``ref_dir``, ``run_dir``) -> the differences between two finished run
  folders of ``tests/fuzz_worker.py``, as readable lines (empty: bitwise identical).
* :class:`Scenario` and :func:`run_scenario`: drive the worker (subprocess, ``sys.executable``):
  interrupt it (``--die-after-step``, a signal sent when a condition holds), resume it, maybe
  interrupt the resume too, resume again; every wait has a timeout and every process group
  that is left is SIGKILLed.

No tests in here.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "fuzz_worker.py"
#: The library the worker imports: the working tree's src/ (TRAINCRAFT_SRC overrides it).
SRC = os.environ.get("TRAINCRAFT_SRC", str(ROOT / "src"))
ENV = {**os.environ, "PYTHONPATH": SRC, "PYTHONUNBUFFERED": "1"}

#: metrics.csv columns that hold wall-clock time, dropped before comparing.
WALL_CLOCK_COLUMN = re.compile(r"(^|[_/])(seconds|time|walltime|wall_time|timestamp)$")
MAX_PER_FILE = 20  # differences listed per file at most

# --------------------------------------------------------------------------- comparing


def _same_float(a: float, b: float) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _tensor_difference(a: torch.Tensor, b: torch.Tensor) -> str | None:
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"{a.dtype}{list(a.shape)} != {b.dtype}{list(b.shape)}"
    if torch.equal(a, b):
        return None
    if a.is_floating_point() or a.is_complex():
        nan_a, nan_b = torch.isnan(a), torch.isnan(b)
        if torch.equal(nan_a, nan_b) and torch.equal(a[~nan_a], b[~nan_b]):
            return None  # equal, NaNs in the same places
        finite = ~(nan_a | nan_b)
        diff = (a[finite].double() - b[finite].double()).abs()
        worst = float(diff.max()) if diff.numel() else float("nan")
        return f"tensors differ in {int((a != b).sum())} of {a.numel()} elements (max |diff| {worst:.3g})"
    return f"tensors differ in {int((a != b).sum())} of {a.numel()} elements"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compare_objects(a: Any, b: Any, where: str, out: list[str]) -> None:
    """Append to ``out`` every difference between ``a`` (reference) and ``b``: tensors with
    torch.equal, dicts/lists/tuples recursively, other leaves with == (NaN equals NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            out.append(f"{where}: {type(a).__name__} != {type(b).__name__}")
            return
        problem = _tensor_difference(a, b)
        if problem:
            out.append(f"{where}: {problem}")
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a:
            if key not in b:
                out.append(f"{where}.{key}: missing in the run (reference has {_short(a[key], 60)})")
        for key in b:
            if key not in a:
                out.append(f"{where}.{key}: not in the reference (run has {_short(b[key], 60)})")
        for key in a:
            if key in b:
                compare_objects(a[key], b[key], f"{where}.{key}", out)
        return
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if type(a) is not type(b):
            out.append(f"{where}: {type(a).__name__} != {type(b).__name__}")
        if len(a) != len(b):
            out.append(f"{where}: length {len(a)} != {len(b)}: {_short(a)} != {_short(b)}")
            return
        for i, (x, y) in enumerate(zip(a, b)):
            compare_objects(x, y, f"{where}[{i}]", out)
        return
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        out.append(f"{where}: {type(a).__name__} {_short(a)} != {type(b).__name__} {_short(b)}")
        return
    if isinstance(a, float) or isinstance(b, float):
        if not _same_float(a, b):
            out.append(f"{where}: {a!r} != {b!r}")
        return
    if a != b:
        out.append(f"{where}: {_short(a)} != {_short(b)}")


def _capped(name: str, found: list[str]) -> list[str]:
    if len(found) > MAX_PER_FILE:
        return found[:MAX_PER_FILE] + [f"{name}: ... and {len(found) - MAX_PER_FILE} more differences"]
    return found


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c for c in (reader.fieldnames or []) if not WALL_CLOCK_COLUMN.search(c)]
        rows = [{c: row.get(c) for c in columns} for row in reader]
    return columns, rows


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def compare_runs(ref_dir: str | Path, run_dir: str | Path) -> list[str]:
    """The differences between the reference run folder and another one, as readable lines;
    empty when they are identical. Compared: final.pt (tensor by tensor), history.json,
    metrics.csv (wall-clock columns dropped), and, where either has them, results.json,
    best.json, best.safetensors and ema.safetensors."""
    ref, run = Path(ref_dir), Path(run_dir)
    out: list[str] = []
    if not (ref / "final.pt").is_file():
        return [f"final.pt: the reference {ref} has none (the reference run did not finish)"]
    if not (run / "final.pt").is_file():
        return ["final.pt: missing (the run did not finish)"]
    found: list[str] = []
    a = torch.load(ref / "final.pt", map_location="cpu", weights_only=False)
    b = torch.load(run / "final.pt", map_location="cpu", weights_only=False)
    compare_objects(a, b, "final.pt:", found)
    out += _capped("final.pt", [line.replace("final.pt:.", "final.pt:", 1) for line in found])

    read_json = lambda path: json.loads(path.read_text())  # noqa: E731
    files = [(name, read_json) for name in ("history.json", "results.json", "best.json")]
    files += [(name, _load_safetensors) for name in ("best.safetensors", "ema.safetensors")]
    for name, read in files:
        here, there = ref / name, run / name
        if not here.is_file() and not there.is_file():
            continue
        if here.is_file() != there.is_file():
            out.append(f"{name}: {'missing in the run' if here.is_file() else 'not in the reference'}")
            continue
        found = []
        compare_objects(read(here), read(there), f"{name}:", found)
        out += _capped(name, [line.replace(f"{name}:.", f"{name}:", 1) for line in found])

    here, there = ref / "metrics.csv", run / "metrics.csv"
    if here.is_file() or there.is_file():
        if here.is_file() != there.is_file():
            out.append(f"metrics.csv: {'missing in the run' if here.is_file() else 'not in the reference'}")
        else:
            cols_a, rows_a = _read_csv(here)
            cols_b, rows_b = _read_csv(there)
            found = []
            if cols_a != cols_b:
                found.append(f"metrics.csv: columns {cols_a} != {cols_b}")
            if len(rows_a) != len(rows_b):
                found.append(f"metrics.csv: {len(rows_a)} rows != {len(rows_b)} rows")
            for i, (x, y) in enumerate(zip(rows_a, rows_b)):
                for c in cols_a:
                    if c in y and x.get(c) != y.get(c):
                        found.append(f"metrics.csv: row {i + 1} {c}: {x.get(c)} != {y.get(c)}")
            out += _capped("metrics.csv", found)

    return out


# --------------------------------------------------------------------------- driving the worker

RESUMED = re.compile(r"Resuming from (\S+): epoch (\d+), batch (\d+), step (\d+)")


def worker_command(config: str, run_dir: str | Path, *args: str) -> list[str]:
    return [sys.executable, str(WORKER), config, str(run_dir), *args]


def has_checkpoint(run_dir: str | Path) -> bool:
    folder = Path(run_dir) / "checkpoints"
    return folder.is_dir() and any(folder.glob("*.ckpt"))


@dataclass
class Attempt:
    """One worker process: what it was asked, how it ended, the end of what it said."""

    args: list[str]
    rc: int | None = None
    note: str = ""
    stderr_tail: str = ""

    def describe(self) -> str:
        resumed = RESUMED.search(self.stderr_tail)
        where = f" (resumed at epoch {resumed[2]}, batch {resumed[3]}, step {resumed[4]})" if resumed else ""
        return f"[{' '.join(self.args) or 'fresh'}] rc={self.rc}{where}{' ' + self.note if self.note else ''}"


class Run:
    """A worker process in its own session (so that its DataLoader workers can be killed with
    it); stdout and stderr go to files in ``log_dir``."""

    def __init__(self, config: str, run_dir: Path, args: list[str], log_dir: Path, label: str):
        self.attempt = Attempt(args=list(args))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = log_dir / f"{label}.out", log_dir / f"{label}.err"
        self._out, self._err = self.out_path.open("wb"), self.err_path.open("wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            worker_command(config, run_dir, *args), env=ENV, stdout=self._out, stderr=self._err,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def fit_started(self) -> bool:
        """The worker's fit() reached on_fit_start (its signal handlers are in place)."""
        return b"started" in self.out_path.read_bytes()

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Poll ``ready`` until it holds (True) or the process ended / time ran out (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return True
            if self.proc.poll() is not None:
                return ready()
            time.sleep(0.003)
        return False

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def finish(self, timeout: float) -> Attempt:
        """Wait for the end (SIGKILL at the timeout); kill what is left of its process group."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.attempt.note += f" timed out after {timeout:.0f} s, killed"
            self.kill_group()
            self.proc.wait(timeout=30)
        finally:
            self.kill_group()
            self._out.close()
            self._err.close()
        self.attempt.rc = self.proc.returncode
        self.attempt.stderr_tail = self.err_path.read_text(errors="replace")[-3000:]
        return self.attempt

    def kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class Interrupt:
    """How one worker process is interrupted.

    kind: ``"none"`` (runs to the end), ``"die"`` (``--die-after-step step``, with
    ``--flush-before-die`` when ``flush``), or a signal sent
    by the driver: ``"sigkill"``, ``"sigint"``, ``"sigterm"``, ``"double-sigint"`` (two SIGINTs
    ``gap`` seconds apart). A signal is sent ``delay`` seconds after its trigger holds:
    ``"checkpoint"`` (checkpoints/last.ckpt exists) or ``"started"`` (fit() began).
    """

    kind: str = "none"
    step: int | None = None
    trigger: str = "started"
    delay: float = 0.0
    pause: float = 0.0
    gap: float = 0.02
    flush: bool = False

    def label(self) -> str:
        if self.kind == "none":
            return "to the end"
        if self.kind == "die":
            return f"die after step {self.step}{' (files flushed)' if self.flush else ''}"
        return f"{self.kind} {self.delay:.3f}s after {self.trigger} (pause {self.pause})"


# A double Ctrl-C whose second signal lands after fit() returned (the first one stopped it
# gracefully, 20 ms earlier) interrupts the worker script itself as it exits: -SIGINT. What
# counts is then the checkpoint on disk, which the resume and the comparison judge.
EXPECTED_RC = {"die": (-signal.SIGKILL,), "sigkill": (-signal.SIGKILL,), "sigint": (130,),
               "sigterm": (130,), "double-sigint": (130, -signal.SIGINT), "none": (0,)}


@dataclass
class Outcome:
    attempts: list[Attempt] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # a process that ended unexpectedly
    differences: list[str] = field(default_factory=list)
    restarted: bool = False  # nothing on disk to resume from: started afresh

    @property
    def identical(self) -> bool:
        return not self.problems and not self.differences

    def summary(self, limit: int = 3) -> str:
        lines = [*self.problems, *self.differences][:limit]
        more = len(self.problems) + len(self.differences) - len(lines)
        return "; ".join(lines) + (f"; ... ({more} more)" if more > 0 else "")

    def log(self) -> str:
        return "\n".join(a.describe() for a in self.attempts)


def run_once(config: str, run_dir: Path, log_dir: Path, label: str, interrupt: Interrupt,
             resume: bool, timeout: float = 120.0, overwrite: bool = False) -> Attempt:
    """One worker process, interrupted as ``interrupt`` says."""
    args = ["--resume"] if resume else (["--overwrite"] if overwrite else [])
    if interrupt.pause:
        args += ["--pause", str(interrupt.pause)]
    if interrupt.kind == "die":
        args += ["--die-after-step", str(interrupt.step)] + (["--flush-before-die"] if interrupt.flush else [])
    run = Run(config, run_dir, args, log_dir, label)
    try:
        if interrupt.kind in ("sigkill", "sigint", "sigterm", "double-sigint"):
            ready = (lambda: (run_dir / "checkpoints" / "last.ckpt").exists()) \
                if interrupt.trigger == "checkpoint" else run.fit_started
            if run.wait_until(ready, timeout):
                if interrupt.delay:
                    time.sleep(interrupt.delay)
                sig = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM}.get(interrupt.kind, signal.SIGINT)
                if run.proc.poll() is None:
                    run.signal(sig)
                    if interrupt.kind == "double-sigint":
                        time.sleep(interrupt.gap)
                        run.signal(signal.SIGINT)
                else:
                    run.attempt.note += " (ended before the signal)"
            else:
                run.attempt.note += f" (the {interrupt.trigger} trigger never held)"
        return run.finish(timeout)
    finally:
        run.kill_group()


def run_scenario(config: str, run_dir: str | Path, interrupts: list[Interrupt], ref_dir: str | Path | None,
                 timeout: float = 120.0) -> Outcome:
    """Run ``config`` in ``run_dir`` interrupted by each of ``interrupts`` in turn (the first run
    fresh, each later one a resume), then resume it to the end; compare with ``ref_dir``.

    A resume with no checkpoint on disk (the kill came before the first one reached the disk)
    starts afresh instead (``--overwrite``: the folder may hold the killed run's leftovers) and
    says so (``Outcome.restarted``).
    """
    run_dir = Path(run_dir)
    log_dir = run_dir.parent / f"{run_dir.name}.logs"
    outcome = Outcome()
    for i, interrupt in enumerate([*interrupts, Interrupt("none")]):
        resume = i > 0 and has_checkpoint(run_dir)
        if i > 0 and not resume:
            outcome.restarted = True
        attempt = run_once(config, run_dir, log_dir, f"{i}", interrupt, resume=resume, timeout=timeout,
                           overwrite=i > 0)
        attempt.note = f"{interrupt.label()}{' (restarted: no checkpoint)' if i > 0 and not resume else ''}" \
            + attempt.note
        outcome.attempts.append(attempt)
        allowed = EXPECTED_RC[interrupt.kind]
        if interrupt.kind in ("sigint", "sigterm", "double-sigint", "sigkill") and "ended before" in attempt.note:
            allowed = (0,)
        if attempt.rc not in allowed:
            last = attempt.stderr_tail.strip().splitlines()[-1:] or [""]
            outcome.problems.append(
                f"process {i} ({interrupt.label()}) exited {attempt.rc}, expected {allowed}: {last[0][:300]}"
            )
            if attempt.rc not in (0, 130, -signal.SIGKILL, -signal.SIGINT):
                return outcome  # it crashed: the rest would only repeat that
        if attempt.rc == 0:
            break  # finished (a signal that came too late)
    if ref_dir is not None:
        outcome.differences = compare_runs(ref_dir, run_dir)
    return outcome


def run_reference(config: str, run_dir: str | Path, timeout: float = 120.0) -> Outcome:
    """The uninterrupted run of ``config``."""
    return run_scenario(config, run_dir, [], None, timeout=timeout)
