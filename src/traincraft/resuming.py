"""A run's whole state and its continuation: what a checkpoint holds, how ``fit(resume=...)``
finds and loads it, and which runs a resume continues, finishes or leaves alone.

A run resumes to the same model: weights, optimizer, schedule, scaler, callbacks, counters,
history, the epoch's running sums, the unfreezing done, every random generator, and the random
state as the epoch under way started (applied before anything that draws at an epoch's start).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from traincraft import distributed
from traincraft.errors import TraincraftError
from traincraft.seeding import rng_state
from traincraft.stopping import SIGNALLED

if TYPE_CHECKING:
    from traincraft.callbacks.base import Callback
    from traincraft.trainer import Trainer

#: What each process keeps of its own in a checkpoint written under several processes.
PER_PROCESS = ("rng", "epoch_rng", "epoch_sums", "loss_sums", "metrics")


def state_dict(trainer: Trainer) -> dict[str, Any]:
    """Everything needed to continue the run exactly (see :meth:`Trainer.state_dict`)."""
    from traincraft import __version__
    from traincraft.checkpoint import plain_state_dict

    recipe = trainer.recipe
    state = {
        "traincraft": __version__,
        "seed": trainer.seed,
        "recipe_hash": recipe.fingerprint() if recipe is not None else None,
        "model": plain_state_dict(trainer.model),
        "optimizer": trainer.optimizer.state_dict(),
        "schedule": trainer.schedule.state_dict() if trainer.schedule is not None else None,
        "stepper": trainer.stepper.state_dict(),
        "callbacks": {key: cb.state_dict() for key, cb in keyed_callbacks(trainer.callbacks)},
        "state": trainer.state.state_dict(),
        "history": trainer.history.state_dict(),
        "epoch_sums": trainer.epoch_sums.state_dict(),
        "loss_sums": trainer.loss_sums.state_dict(),
        "metrics": trainer.metrics.state_dict(),
        "unfreeze": trainer.finetuning.plan.state_dict(),
        "rng": rng_state(),
        # The random state at the start of the epoch under way, restored on a mid-epoch resume
        # before anything that draws at an epoch's start (callbacks, the data's iterator).
        "epoch_rng": trainer.epoch_rng if trainer.state.batch_in_epoch else None,
        "world_size": trainer.world_size,
        "recipe": recipe.to_yaml() if recipe is not None else None,
    }
    if trainer.world_size > 1:  # every process's own random generators and partial epoch sums
        state["processes"] = distributed.all_gather_objects({key: state[key] for key in PER_PROCESS})
    return state


def load_state_dict(trainer: Trainer, state: dict[str, Any]) -> None:
    """Continue from :func:`state_dict` (after the run is set up)."""
    from traincraft.checkpoint import unwrap_key
    from traincraft.finetune.live import unfreeze_until

    state = own_part(state, trainer.world_size, trainer.rank)
    trainer.model.load_state_dict({unwrap_key(k): v for k, v in state["model"].items()})
    if state.get("unfreeze"):  # the optimizer's groups must be those of the saved run
        trainer.next_unfreeze = unfreeze_until(trainer, int(state["unfreeze"]["done"]))
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.schedule is not None and state.get("schedule") is not None:
        trainer.schedule.load_state_dict(state["schedule"])
    trainer.stepper.load_state_dict(state["stepper"])
    saved = state.get("callbacks", {})
    for key, callback in keyed_callbacks(trainer.callbacks):
        if key in saved:
            callback.load_state_dict(saved[key])
    trainer.state.load_state_dict(state["state"])
    if "step_lrs" in state:  # written before the state held the step's LRs
        trainer.state.lrs = list(state["step_lrs"])
    trainer.history.load_state_dict(state["history"])
    trainer.epoch_sums.load_state_dict(state["epoch_sums"])
    trainer.loss_sums.load_state_dict(state.get("loss_sums"))  # absent from older checkpoints
    trainer.metrics.load_state_dict(state["metrics"])
    # Applied when the next epoch starts: after on_fit_start, and around the creation of the
    # data's iterator on a mid-epoch resume.
    trainer.pending_rng = (state.get("epoch_rng") or state["rng"], state["rng"] if state.get("epoch_rng") else None)


def own_part(state: dict[str, Any], world_size: int, rank: int) -> dict[str, Any]:
    """The checkpoint as this process continues it: its own random generators and sums."""
    from traincraft.checkpoint import CheckpointError

    saved = int(state.get("world_size", 1))
    if saved != world_size:
        raise CheckpointError(
            f"the checkpoint was written by {saved} process(es) and this run has {world_size}: "
            f"resume with {saved} (traincraft resume RUN_DIR --nproc {saved}); each process's data "
            "shard and random state are in it"
        )
    return {**state, **state["processes"][rank]} if saved > 1 else state


def keyed_callbacks(callbacks: list[Callback]) -> list[tuple[str, Callback]]:
    """Callbacks under stable keys (class name, numbered when a class appears twice)."""
    counts: dict[str, int] = {}
    keyed = []
    for callback in callbacks:
        name = type(callback).__name__
        counts[name] = counts.get(name, 0) + 1
        keyed.append((name if counts[name] == 1 else f"{name}-{counts[name]}", callback))
    return keyed


def resume_source(trainer: Trainer, resume: str | Path | None) -> str | Path | None:
    """What ``fit(resume=...)`` continues: ``"auto"`` becomes the run folder when it holds a
    checkpoint, else None (a new run)."""
    if resume is None or str(resume) != "auto":
        return resume
    if trainer.run_dir is None:
        raise TraincraftError('resume="auto" continues the run in run_dir: give the Trainer a run_dir')
    from traincraft.checkpoint import checkpoint_candidates

    found = bool(checkpoint_candidates(trainer.run_dir))
    if trainer.world_size > 1:  # rank 0's file system decides for all
        found = bool(distributed.broadcast_object(found))
    if not found:
        trainer.claimed_run_dir = trainer.run_dir  # nothing to lose: a start before the first checkpoint
        return None
    return trainer.run_dir


def claim_run_dir(trainer: Trainer, overwrite: bool) -> None:
    """A new run does not write into a folder holding another run, unless ``overwrite``."""
    if trainer.run_dir is None or trainer.claimed_run_dir == trainer.run_dir:
        return
    from traincraft.runfolder import claim

    problem = claim(trainer.run_dir, overwrite=overwrite) if trainer.is_main_process else None
    if trainer.world_size > 1:
        problem = distributed.broadcast_object(problem)
    if problem is not None:
        raise TraincraftError(problem)
    trainer.claimed_run_dir = trainer.run_dir


def resume(trainer: Trainer, source: str | Path, allow_changes: bool = False) -> None:
    """Load the newest good checkpoint of ``source`` and say whether the run goes on: an
    interrupted run, or one whose limits were raised, continues; a run that ended is only
    finished (what its end left undone), or left alone when its end went through."""
    from traincraft.checkpoint import CheckpointError, find_resume_checkpoint, mismatch
    from traincraft.runfolder import check_recipe, clean_leftovers, is_complete, rebuild_mirrors

    if trainer.run_dir is not None and trainer.is_main_process:
        clean_leftovers(trainer.run_dir)
    path, state = checkpoint_everywhere(trainer, source, find_resume_checkpoint)
    wrong = mismatch(trainer.model, state.get("model", {}))
    if wrong is not None:
        raise CheckpointError(f"{path} holds the weights of another model: {wrong}")
    if trainer.recipe is not None and not allow_changes:
        check_recipe(state.get("recipe"), trainer.recipe, path)
    if trainer.run_dir is not None and trainer.is_main_process and Path(source).is_dir():
        rebuilt = rebuild_mirrors(source, state, warn=trainer.log)  # what a kill kept from the disk
        if rebuilt:
            trainer.log(f"Wrote {', '.join(rebuilt)} again from {path}")
    trainer.load_state_dict(state)
    trainer.claimed_run_dir = trainer.run_dir
    run = trainer.state
    if run.stop_reason in (*SIGNALLED, None) or limits_raised(trainer):
        run.should_stop, run.stop_reason = False, None  # interrupted, or limits raised since: it goes on
    else:
        run.should_stop = True  # it ended: only what its end left undone is done
        folder = Path(source) if Path(source).is_dir() else None
        trainer.run_complete = folder is not None and is_complete(folder, run.step)
        what = "nothing to do" if trainer.run_complete else "finishing what its end left undone"
        trainer.log(f"The run in {source} ended ({run.stop_reason} at epoch {run.epoch}, "
                    f"step {run.step}): {what}")
        return
    if run.epoch >= trainer.max_epochs:
        run.request_stop("max_epochs")
    if trainer.max_steps is not None and run.step >= trainer.max_steps:
        run.request_stop("max_steps")
    trainer.log(f"Resuming from {path}: epoch {run.epoch + 1}, batch {run.batch_in_epoch}, step {run.step}")


def checkpoint_everywhere(trainer: Trainer, source: str | Path, find: Any) -> tuple[Path, dict[str, Any]]:
    """``find(source)`` on every process (each reads the checkpoint), and under several
    processes an agreement that all of them found the same one: a process that cannot read it
    (a run folder on one machine's disk only) stops every process at once, with its reason,
    instead of leaving the others waiting for it until the timeout."""
    from traincraft.checkpoint import CheckpointError

    try:
        path, state = find(source, warn=trainer.log)
        found: tuple[Any, ...] = ("ok", int(state.get("state", {}).get("step", -1)))
    except CheckpointError as err:
        if trainer.world_size == 1:
            raise
        path, state, found = None, {}, ("failed", str(err))  # type: ignore[assignment]
    if trainer.world_size == 1:
        return path, state
    import socket

    everyone = distributed.all_gather_objects((*found, socket.gethostname()))
    failed = [(rank, why, host) for rank, (kind, why, host) in enumerate(everyone) if kind == "failed"]
    if failed:
        rank, why, host = failed[0]
        raise CheckpointError(
            f"rank {rank} (on {host}) cannot resume: {why}. Every process reads the checkpoint: on several "
            "machines, keep the run folder on a file system they share (or copy it to each machine first)"
        )
    steps = {why for _, why, _ in everyone}
    if len(steps) > 1:
        listed = ", ".join(f"rank {rank}: step {why}" for rank, (_, why, _) in enumerate(everyone))
        raise CheckpointError(
            f"the processes found different checkpoints in {source} ({listed}): every process must read the "
            "same run folder; keep it on a file system the machines share"
        )
    return path, state


def recorded_world_size(run_dir: str | Path) -> int | None:
    """How many processes wrote the newest checkpoint of ``run_dir`` (None: no readable one;
    the resume itself then says why). Read without loading the tensors (memory-mapped)."""
    import warnings

    import torch

    from traincraft.checkpoint import checkpoint_candidates

    for path in checkpoint_candidates(Path(run_dir)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return int(state.get("world_size", 1))
        except Exception:  # noqa: BLE001,S112 - a damaged file: the next one, or the resume's own message
            continue
    return None


def limits_raised(trainer: Trainer) -> bool:
    """A run that its limits ended, resumed with higher limits."""
    run = trainer.state
    if run.stop_reason == "max_epochs":
        return run.epoch < trainer.max_epochs and (trainer.max_steps is None or run.step < trainer.max_steps)
    if run.stop_reason == "max_steps":
        return trainer.max_steps is None or run.step < trainer.max_steps
    return False


def mark_complete(trainer: Trainer) -> None:
    """A run that ended by itself and whose end (on_fit_end) went through: marked in its
    folder, so that resuming it does nothing."""
    from traincraft.callbacks.checkpoint import Checkpoint

    if (trainer.run_dir is None or not trainer.is_main_process or trainer.run_complete
            or trainer.state.stop_reason in (*SIGNALLED, None)
            or not any(isinstance(c, Checkpoint) for c in trainer.callbacks)):
        return
    from traincraft.runfolder import mark_complete as write_mark

    write_mark(trainer.run_dir, trainer.state)
