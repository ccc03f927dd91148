"""The callback protocol: plain objects whose ``on_*`` methods receive the trainer.

Events, in the order ``Trainer.fit`` emits them::

    on_fit_start
    for each epoch:
        on_epoch_start
        for each optimizer step:
            on_before_step      # gradients final: unscaled, averaged over the window, clipped
            on_step_end         # after optimizer.step() and the schedule; trainer.state.step counted it
        on_validation_end       # trainer.state.metrics and the history row hold this epoch's figures
        on_epoch_end            # after every decision of the epoch; checkpoints and loggers act here
    on_fit_end                  # always, whatever ended training (also on an exception)

Callbacks receive each event in the order given, except those that save the training state
(``saves_training_state``): last at ``on_step_end``/``on_epoch_end``, first at ``on_fit_end``.

A callback asks training to stop with ``trainer.state.request_stop("reason")``; the loop stops
after the current step. Callbacks with state implement ``state_dict``/``load_state_dict`` so that
a resumed run continues exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from traincraft.trainer import Trainer


class Callback:
    """Base class with no-op events. Override the ones you need.

    A callback that saves the training state for resume sets ``saves_training_state = True``: it
    then receives ``on_step_end`` and ``on_epoch_end`` after every other callback, and
    ``on_fit_end`` before them, wherever it stands in the list.
    """

    saves_training_state = False

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer) -> None: ...

    def on_before_step(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_validation_end(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


EVENTS = (
    "on_fit_start",
    "on_epoch_start",
    "on_before_step",
    "on_step_end",
    "on_validation_end",
    "on_epoch_end",
    "on_fit_end",
)


class Events:
    """Hands events to the callbacks in their order: the given order, except that those saving
    the training state (``saves_training_state``: checkpoints) come last at a step's and an
    epoch's end, so that they hold every update of it (an average, a record). At the end of fit
    they come first, before the final weights go in (``Trainer`` calls them apart).

    The per-step events' handlers are looked up once, and only those that do something (the
    base class's no-ops left out), not at every step.
    """

    PER_STEP = ("on_before_step", "on_step_end")

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = callbacks
        self._handlers = {
            event: [getattr(c, event) for c in self.order(event)
                    if getattr(type(c), event, None) is not getattr(Callback, event) or event in vars(c)]
            for event in self.PER_STEP
        }

    @property
    def saving(self) -> list[Callback]:
        return [c for c in self.callbacks if getattr(c, "saves_training_state", False)]

    def order(self, event: str) -> list[Callback]:
        if event in ("on_step_end", "on_epoch_end"):
            saving = self.saving
            return [c for c in self.callbacks if c not in saving] + saving
        return list(self.callbacks)

    def handlers(self, event: str) -> list[Any]:
        """The bound methods that ``event`` calls, in order (the per-step ones looked up once)."""
        found = self._handlers.get(event)
        return found if found is not None else [getattr(c, event) for c in self.order(event)]

    def emit(self, event: str, trainer: Trainer) -> None:
        for handler in self.handlers(event):
            handler(trainer)
