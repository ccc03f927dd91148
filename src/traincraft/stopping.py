"""How a run stops and pauses cleanly: Ctrl-C and SIGTERM stop it after the current step (a
second one aborts at once), and Python's garbage collection runs at fixed points of the loop
rather than in the middle of a step."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from traincraft.trainer import Trainer

#: Stop reasons that a signal gave: the run is unfinished and resumes from its checkpoint.
SIGNALLED = ("interrupted", "terminated")


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """Ctrl-C (and SIGTERM) stop after the current step; a second Ctrl-C aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reasons = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}

    def handler(signum: int, frame: Any) -> None:
        vote, state = trainer.stop_vote, trainer.state
        if state.stop_reason in reasons.values() or (vote is not None and vote.requested in reasons.values()):
            raise KeyboardInterrupt
        if vote is not None:  # several processes stop together, after a step they agree on
            vote.request(reasons[signal.Signals(signum)])
        else:
            state.should_stop, state.stop_reason = True, reasons[signal.Signals(signum)]
        if signum == signal.SIGINT:
            trainer.log("Interrupted: stopping after this step (Ctrl-C again to abort at once)")
        else:
            trainer.log("Terminated: stopping after this step (a second SIGTERM aborts at once)")

    previous = {sig: signal.signal(sig, handler) for sig in reasons}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


_gc_off_by_fit = False  # a process forked meanwhile (DataLoader workers) turns it back on


@contextlib.contextmanager
def collecting_garbage_ourselves(active: bool) -> Iterator[None]:
    """Python's automatic garbage collection off (the trainer collects at fixed points), as it
    was afterwards."""
    global _gc_off_by_fit
    was_enabled = gc.isenabled()
    if active and was_enabled:
        gc.disable()
        _gc_off_by_fit = True
    try:
        yield
    finally:
        if active and was_enabled:
            _gc_off_by_fit = False
            gc.enable()


def _after_fork_in_child() -> None:
    # A worker forked during fit collects its own garbage: the trainer's fixed points are not its.
    if _gc_off_by_fit:
        gc.enable()


os.register_at_fork(after_in_child=_after_fork_in_child)
