"""Progress: a live bar while an epoch runs, then one summary line per epoch.

Where the output goes decides how it looks:

- **a terminal**: a tqdm bar with the running loss while the epoch trains; when it ends the bar
  gives way to the epoch's line (:mod:`~traincraft.callbacks.epoch_line`), wrapped at field
  boundaries to the terminal's width;
- **a Jupyter kernel**: tqdm's notebook bar (an ipywidgets widget; without ipywidgets an HTML
  ``<progress>`` display updated in place), then the epoch's line on stdout, unwrapped;
- **anything else** (a file, a pipe, a CI log) or ``mode="lines"``: the epoch lines alone, one
  line each.

What callbacks log while an epoch ends (early stopping's stop, a checkpoint's note) comes after
that epoch's line; early stopping's bookkeeping is in the line itself (``*`` for a new best,
``(patience 2/8)``).

Under several processes only rank 0 shows it; its running loss is rank 0's, the epoch's figures
are over every process. Figures are read from the device only at refreshes (at most
``1 / refresh_seconds`` per second) and at the end of the epoch, never per step.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import IO, TYPE_CHECKING, Any

from traincraft.callbacks.base import Callback
from traincraft.callbacks.epoch_line import INDENT, epoch_fields, wrap
from traincraft.errors import expect_choice
from traincraft.formatting import significant

if TYPE_CHECKING:
    from traincraft.trainer import Trainer

MODES = ("auto", "lines")


class ProgressBar(Callback):
    """Shows training progress. Added by the trainer when ``progress`` is True (``"auto"``) or
    ``"lines"``.

    Args:
        refresh_seconds: the least time between two refreshes of the bar.
        stream: where to write; default stderr (stdout in a Jupyter kernel).
        mode: ``"auto"``: a bar on a terminal or in a notebook, lines elsewhere; ``"lines"``:
            the epoch lines only, never a bar (``traincraft fit --no-progress``).

    Example:
        >>> Trainer(model, loss="mse", progress="lines")   # a CI log: one line per epoch
    """

    def __init__(self, refresh_seconds: float = 0.1, stream: IO[str] | None = None, mode: str = "auto"):
        self.refresh_seconds = refresh_seconds
        self.stream = stream
        self.mode = expect_choice("progress", mode, MODES)
        self.bar: Any = None
        self._last = 0.0
        self._unshown = 0
        self._held: list[str] | None = None  # messages said while an epoch's line is not out yet

    @property
    def out(self) -> IO[str]:
        if self.stream is not None:
            return self.stream
        return sys.stdout if in_notebook() else sys.stderr

    def interactive(self) -> bool:
        return bool(getattr(self.out, "isatty", lambda: False)())

    def front_end(self) -> str:
        """``"terminal"``, ``"notebook"`` or ``"lines"``: how this run is shown."""
        if self.mode == "lines":
            return "lines"
        if self.stream is None and in_notebook():
            return "notebook"
        return "terminal" if self.interactive() else "lines"

    def width(self) -> int | None:
        """The terminal's width when the output is a terminal (lines wrap to it), else None."""
        if not self.interactive():
            return None
        try:
            return os.get_terminal_size(self.out.fileno()).columns
        except (AttributeError, OSError, ValueError):
            return shutil.get_terminal_size().columns

    # ---- events -------------------------------------------------------------------------------

    def on_epoch_start(self, trainer: Trainer) -> None:
        self._flush_held()
        if not trainer.is_main_process:  # one bar: rank 0's
            return
        kind = self.front_end()
        if kind == "lines":
            return
        state = trainer.state
        total = state.steps_per_epoch or None
        done = state.step - state.epoch * state.steps_per_epoch if total else 0  # a mid-epoch resume
        desc = f"epoch {state.epoch + 1}/{trainer.max_epochs}"
        if kind == "notebook":
            self.bar = notebook_bar(total=total, initial=done if 0 < done < (total or 0) else 0, desc=desc)
        else:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done if 0 < done < (total or 0) else 0, desc=desc,
                            file=self.out, leave=False, dynamic_ncols=True, unit="step",
                            mininterval=self.refresh_seconds)
        self._last, self._unshown = time.monotonic(), 0

    def on_step_end(self, trainer: Trainer) -> None:
        if self.bar is None:
            return
        self._unshown += 1
        now = time.monotonic()
        if now - self._last >= self.refresh_seconds:
            self.bar.update(self._unshown)
            self.bar.set_postfix_str(f"loss {significant(trainer.running_figures()['loss'])}", refresh=True)
            self._last, self._unshown = now, 0

    def on_validation_end(self, trainer: Trainer) -> None:
        if not trainer.is_main_process:
            return
        self._close_bar()
        # Early stopping and the others decide on this epoch now: what they say follows its line.
        self._held = []

    def on_epoch_end(self, trainer: Trainer) -> None:
        if not trainer.is_main_process or not trainer.history.epochs:
            return
        held, self._held = self._held or [], None
        self._print("\n".join(wrap(self.epoch_fields(trainer), self.width())))
        for message in held:
            self._say(message)

    def on_fit_end(self, trainer: Trainer) -> None:
        self._close_bar()
        self._flush_held()

    # ---- what is said -----------------------------------------------------------------------

    def epoch_fields(self, trainer: Trainer) -> list[str]:
        """The fields of the last epoch's line (:func:`~traincraft.callbacks.epoch_line.epoch_fields`)
        with the monitored figure's note: early stopping's, else ``*`` on a new best."""
        row = trainer.history.epochs[-1]
        epoch = int(row["epoch"])
        stopper = trainer.early_stopping
        if stopper is not None:
            monitor, note = stopper.monitor, stopper.epoch_note(epoch)
        else:
            best = trainer.best
            monitor = best["monitor"] if best is not None else trainer.monitor[0]
            note = "*" if best is not None and best["epoch"] == epoch else ""
        return epoch_fields(row, max_epochs=trainer.max_epochs, monitor=monitor, note=note)

    def write(self, message: str) -> None:
        """Print a line without breaking a live bar (after the epoch's line while one is due)."""
        if self._held is not None:
            self._held.append(message)
        elif self.bar is not None:
            self.bar.write(self._wrapped(message), file=self.out)
        else:
            self._say(message)

    def summary(self, trainer: Trainer, train_batches: Any, val_batches: Any) -> str:
        """The line said as training starts: device, parameters, samples, steps, processes."""
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in trainer.model.parameters() if not p.requires_grad)
        val = f", {val_batches.num_samples:,} val" if val_batches is not None else ""
        return (
            f"Training on {trainer.device}: {trainable:,} trainable parameters"
            f"{f' ({frozen:,} frozen)' if frozen else ''}; {train_batches.num_samples:,} train{val} "
            f"samples; {trainer.state.steps_per_epoch} steps per epoch, up to {trainer.max_epochs} epochs"
            f"{_global_batch(trainer)}"
        )

    # ---- internals ----------------------------------------------------------------------------

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _say(self, message: str) -> None:
        self._print(self._wrapped(message))

    def _wrapped(self, message: str) -> str:
        """A message wrapped between words to a terminal's width (as is elsewhere)."""
        width = self.width()
        if width is None or len(message) < width:
            return message
        import textwrap

        return "\n".join(textwrap.fill(line, width - 1, subsequent_indent=INDENT, break_long_words=False,
                                        break_on_hyphens=False) for line in message.splitlines())

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.update(self._unshown)
            self._unshown = 0
            self.bar.refresh()  # the epoch's last step shown, however short the epoch was
            self.bar.close()
            self.bar = None

    def _flush_held(self) -> None:
        held, self._held = self._held or [], None
        for message in held:
            self._say(message)


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (as ``tqdm.auto`` tells: IPython with a kernel app)."""
    if "ipykernel" not in sys.modules or "IPython" not in sys.modules:
        return False
    try:
        shell = sys.modules["IPython"].get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:  # an IPython too old or too odd to tell: not a notebook
        return False


def notebook_bar(*, total: int | None, initial: int, desc: str) -> Any:
    """tqdm's notebook bar (a widget) when ipywidgets is installed, else :class:`HTMLBar`."""
    try:
        import ipywidgets  # noqa: F401  (tqdm's widget needs it)
    except ImportError:
        return HTMLBar(total=total, initial=initial, desc=desc)
    from tqdm.notebook import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, unit="step")


class HTMLBar:
    """A live bar in a notebook without ipywidgets: an HTML ``<progress>`` display that is
    updated in place (``display_id``) and emptied when the epoch ends. It has the few methods
    of a tqdm bar that :class:`ProgressBar` uses."""

    def __init__(self, *, total: int | None, initial: int, desc: str):
        from IPython.display import HTML, display

        self.total, self.n, self.desc, self.postfix = total, initial, desc, ""
        self._html = HTML
        self.handle = display(HTML(self.html()), display_id=True)

    def html(self) -> str:
        import html

        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        bar = f'<progress value="{self.n}" max="{self.total}"></progress>' if self.total else ""
        text = html.escape(f"{self.desc} {count} {self.postfix}".strip())
        return f'<div class="traincraft-progress">{bar} <code>{text}</code></div>'

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text
        if refresh:
            self.refresh()

    def refresh(self) -> None:
        self.handle.update(self._html(self.html()))

    def write(self, message: str, file: Any = None) -> None:
        print(message, file=file or sys.stdout, flush=True)

    def close(self) -> None:
        self.handle.update(self._html(""))


def _global_batch(trainer: Trainer) -> str:
    if trainer.world_size == 1:
        return ""
    size = trainer.batch_size * trainer.world_size * trainer.stepper.accumulate
    return (f"; {trainer.world_size} processes, global batch {size:,} = {trainer.batch_size} per process "
            f"× {trainer.world_size} processes × accumulate {trainer.stepper.accumulate}")
