"""How a run stops and pauses cleanly: Ctrl-C and SIGTERM stop it after the current step, a
second Ctrl-C (a person pressing it again) aborts at once, and Python's garbage collection runs at
fixed points of the loop rather than in the middle of a step.

Which signal does what, once a stop is under way:

* SIGTERM never aborts. Schedulers and runtimes (Slurm's ``scancel`` and time limits, Docker,
  Kubernetes, systemd, ``pkill``) send it to every process, and under torchrun each worker gets
  it twice: directly, then forwarded by torchrun. The clean stop is what they ask for; they
  follow up with SIGKILL when their grace period ends.
* SIGINT aborts at once only when a Ctrl-C stop has been under way for at least
  :data:`REPEAT_SECONDS`: a signal delivered twice (directly and forwarded) arrives within
  milliseconds, a person pressing Ctrl-C again takes longer. A SIGINT after a SIGTERM counts as
  the first Ctrl-C.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from traincraft.trainer import Trainer

#: Stop reasons that a signal gave: the run is unfinished and resumes from its checkpoint.
SIGNALLED = ("interrupted", "terminated")
#: Seconds after a first Ctrl-C from which a second one aborts at once (sooner: the same
#: signal delivered twice, by the system and by a launcher that forwards it).
REPEAT_SECONDS = 1.0


class SignalRule:
    """What a signal does during ``fit``: ``"stop"`` (the first: stop after this step),
    ``"abort"`` (a second Ctrl-C, :data:`REPEAT_SECONDS` or more after the first) or
    ``"ignore"`` (a stop is under way already).

    Example:
        >>> rule = SignalRule()
        >>> rule.decide(signal.SIGTERM, now=0.0), rule.decide(signal.SIGTERM, now=0.01)
        ('stop', 'ignore')
        >>> rule.decide(signal.SIGINT, now=0.02), rule.decide(signal.SIGINT, now=2.0)
        ('ignore', 'abort')
    """

    def __init__(self) -> None:
        self.stopping = False
        self.first_ctrl_c: float | None = None

    def decide(self, signum: int, now: float) -> str:
        if signum == signal.SIGINT:
            if self.first_ctrl_c is not None and now - self.first_ctrl_c >= REPEAT_SECONDS:
                return "abort"
            if self.first_ctrl_c is None:
                self.first_ctrl_c = now
        if self.stopping:
            return "ignore"
        self.stopping = True
        return "stop"


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """Ctrl-C (and SIGTERM) stop after the current step; a second Ctrl-C aborts at once (see
    :class:`SignalRule`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reasons = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}
    rule = SignalRule()

    def handler(signum: int, frame: Any) -> None:
        action = rule.decide(signum, time.monotonic())
        if action == "abort":
            raise KeyboardInterrupt
        if action == "ignore":
            return
        reason = reasons[signal.Signals(signum)]
        vote, state = trainer.stop_vote, trainer.state
        if vote is not None:  # several processes stop together, after a step they agree on
            vote.request(reason)
        else:
            state.should_stop, state.stop_reason = True, reason
        if signum == signal.SIGINT:
            trainer.log("Interrupted: stopping after this step (Ctrl-C again to abort at once)")
        else:
            trainer.log("Terminated: stopping after this step")

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
