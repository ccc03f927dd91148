"""An exponential moving average (EMA) of the weights, updated after optimizer steps.

After update number ``n`` (counting from 1)::

    decay_n = min(decay, (1 + n) / (10 + n))   if warmup   (TensorFlow's num_updates rule)
    decay_n = decay                             otherwise
    ema     = decay_n · ema + (1 - decay_n) · weights

Floating-point parameters and buffers (batch-norm running statistics) are averaged; integer
buffers (``num_batches_tracked``) are copied. The warm-up keeps the average from clinging to
the random initial weights for the first few thousand steps of a high decay.

With ``evaluate=True`` validation measures the EMA weights, so early stopping, plateau schedules
and the best checkpoint follow them, and the model ends the run with them. With
``evaluate=False`` the average is kept beside the model (``ema.safetensors`` in the run folder;
:meth:`EMA.copy_to` puts it into a model).

The average is one more copy of the weights, on the model's device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from traincraft.callbacks.base import Callback
from traincraft.errors import TraincraftError

if TYPE_CHECKING:
    from traincraft.trainer import Trainer


class EMA(Callback):
    """Keeps an exponential moving average of the model's weights.

    Args:
        decay: the average's decay per update, in [0, 1).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` for update ``n``.
        every: update after every ``every``-th optimizer step.
        evaluate: validate (and keep as best and final weights) the average instead of the live
            weights.

    Example:
        >>> trainer = Trainer(model, loss="mse", callbacks=[EMA(decay=0.999)])
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, every: int = 1, evaluate: bool = True):
        if not 0.0 <= float(decay) < 1.0:
            raise TraincraftError(f"ema decay must be in [0, 1), got {decay}")
        if int(every) < 1:
            raise TraincraftError(f"ema every must be >= 1, got {every}")
        self.decay, self.warmup, self.every, self.evaluate = float(decay), bool(warmup), int(every), bool(evaluate)
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] | None = None  # name -> averaged tensor
        self._live: list[torch.Tensor] = []
        self._averaged: list[torch.Tensor] = []
        self._copied: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._loaded: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ events

    def on_fit_start(self, trainer: Trainer) -> None:
        tensors = _model_tensors(trainer.model)
        if self._loaded is not None:  # a resumed run
            shadow = {name: self._loaded[name].to(t.device, t.dtype) for name, t in tensors.items()}
            self._loaded = None
        elif self.shadow is None or set(self.shadow) != set(tensors):
            self.updates = 0
            shadow = {name: t.detach().clone() for name, t in tensors.items()}
        else:
            shadow = self.shadow  # a later fit() on the same trainer goes on averaging
        self.shadow = shadow
        self._live, self._averaged, self._copied = [], [], []
        for name, tensor in tensors.items():
            if tensor.is_floating_point():
                self._live.append(tensor)
                self._averaged.append(shadow[name])
            else:
                self._copied.append((shadow[name], tensor))

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.state.step % self.every == 0:
            self.update()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.shadow is None or self.evaluate or trainer.state.stop_reason in ("interrupted", "terminated", None):
            return  # an unfinished run keeps its live weights (the checkpoint resumes from them)
        if trainer.run_dir is not None and trainer.is_main_process and not trainer.run_complete:
            from traincraft.checkpoint import save_weights

            with self.swapped():
                path = save_weights(trainer.model, Path(trainer.run_dir) / "ema.safetensors")
            trainer.log(f"EMA: averaged weights saved to {path}")

    def final_weights(self, trainer: Trainer) -> tuple[str, Any] | None:
        """The average, offered as the run's final weights when it is the one validated
        (``evaluate``) and the run ended by itself."""
        if self.shadow is None or not self.evaluate or trainer.state.stop_reason in ("interrupted", "terminated", None):
            return None

        def put_in() -> None:
            self.copy_to(trainer.model)
            trainer.log(f"EMA: the model now holds the averaged weights ({self.updates} updates)")

        return "ema", put_in

    # ------------------------------------------------------------------ the average

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = self.updates + 1
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (one update)."""
        weight = 1.0 - self.current_decay()
        if self._averaged:
            torch._foreach_lerp_(self._averaged, self._live, weight)
        for average, live in self._copied:
            average.copy_(live)
        self.updates += 1

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the model for the duration (no copies: the storages swap)."""
        pairs = [*zip(self._live, self._averaged), *((live, avg) for avg, live in self._copied)]
        _swap(pairs)
        try:
            yield
        finally:
            _swap(pairs)

    def evaluation_weights(self, trainer: Trainer) -> contextlib.AbstractContextManager[None]:
        """What the trainer validates with: the average when ``evaluate``."""
        return self.swapped() if self.evaluate and self.shadow is not None else contextlib.nullcontext()

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Put the averaged weights into ``model`` (a model of the same architecture)."""
        if self.shadow is None:
            raise TraincraftError("EMA has no average yet: it starts with fit()")
        tensors = _model_tensors(model)
        for name, tensor in tensors.items():
            tensor.copy_(self.shadow[name])

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "updates": self.updates,
            "evaluate": self.evaluate,
            "shadow": None if self.shadow is None else {k: v.detach().cpu() for k, v in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self._loaded = state["shadow"]


def _model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and persistent buffers themselves (swapping their storage changes
    the model), each tensor once: a tied weight is averaged and swapped under its first name."""
    from traincraft.checkpoint import model_tensors

    seen: set[int] = set()
    tensors = {}
    for name, tensor in model_tensors(model).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            tensors[name] = tensor
    return tensors


def _swap(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for a, b in pairs:
        a.data, b.data = b.data, a.data
