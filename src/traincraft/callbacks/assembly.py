"""The callbacks that a Trainer's arguments stand for (``checkpoint=``, ``ema=``, ``swa=``,
``loggers=``), in the order they receive events, around the user's own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from traincraft.callbacks.base import Callback
from traincraft.errors import TraincraftError, accepted_keys, check_keys

if TYPE_CHECKING:
    from traincraft.trainer import Trainer


def trainer_callbacks(trainer: Trainer, given: Sequence[Callback], *, checkpoint: Any, ema: Any, swa: Any,
                      loggers: list[Any], report: bool) -> list[Callback]:
    """The progress bar first (an epoch's line precedes what callbacks say of it), the
    checkpoint, the averages, the user's callbacks, then the run folder's writers (after the
    user's callbacks: results.json exists when the report is built)."""
    from traincraft.callbacks.checkpoint import Checkpoint
    from traincraft.loggers import CSVLogger

    made: list[Callback] = [*([trainer.progress] if trainer.progress else [])]
    if trainer.run_dir is not None and checkpoint is not False and not any(isinstance(c, Checkpoint) for c in given):
        made.append(checked(Checkpoint, "checkpoint", trainer.run_dir, **(checkpoint if isinstance(checkpoint, dict) else {})))
    made.extend(averaging_callbacks(ema, swa))
    made.extend(given)
    if trainer.run_dir is None:
        if loggers:
            raise TraincraftError("loggers need a run_dir to write to")
        return made
    from traincraft import loggers as loggers_module
    from traincraft.report import RunReport

    if report and not any(isinstance(c, RunReport) for c in given):
        made.append(RunReport(trainer.run_dir))
    made.extend(loggers_module.build(loggers, trainer.run_dir))
    made.append(CSVLogger(trainer.run_dir))
    return made


def averaging_callbacks(ema: Any, swa: Any) -> list[Callback]:
    """The EMA and SWA callbacks that the ``ema=`` and ``swa=`` arguments stand for."""
    from traincraft.callbacks.ema import EMA
    from traincraft.callbacks.swa import SWA

    made: list[Callback] = []
    if isinstance(ema, EMA):
        made.append(ema)
    elif ema is True:
        made.append(EMA())
    elif isinstance(ema, dict):
        made.append(checked(EMA, "ema", **ema))
    elif isinstance(ema, (int, float)) and not isinstance(ema, bool):
        made.append(EMA(decay=float(ema)))
    elif ema not in (None, False):
        raise TraincraftError(f"ema must be True, a decay, a dict of EMA arguments or an EMA; got {ema!r}")
    if isinstance(swa, SWA):
        made.append(swa)
    elif isinstance(swa, dict):
        made.append(checked(SWA, "swa", **swa))
    elif swa is True:
        made.append(SWA())
    elif swa not in (None, False):
        raise TraincraftError(f"swa must be a dict of SWA arguments or an SWA; got {swa!r}")
    return made


def checked(cls: Any, what: str, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)``; a key it does not take is one line with the closest ones."""
    check_keys(what, kwargs, [k for k in accepted_keys(cls) if k != "folder"])
    return cls(*args, **kwargs)
