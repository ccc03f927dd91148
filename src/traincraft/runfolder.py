"""A run folder's life: one run per folder, its leftovers, its end, and the files it can rebuild.

* **One run, one folder.** A new run refuses a folder that holds another run (unless told to
  overwrite it); folders for new runs are created with ``mkdir`` itself, which only one process
  can win, on one machine or several sharing a file system (:func:`new_run_dir`).
* **Leftovers.** A process killed while writing leaves a temporary file (``.NAME.PID-N.tmp``);
  a resume removes those of processes that are gone.
* **The end.** A run that ended by itself and whose end went through (test evaluation, report)
  is marked complete (``checkpoints/finished.json``): resuming it does nothing.
* **Rebuilt files.** ``metrics.csv``, ``best.json`` and ``best.safetensors`` mirror what the
  newest checkpoint holds; when one is missing (or damaged) it is written again from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traincraft.errors import TraincraftError
from traincraft.files import process_running

if TYPE_CHECKING:
    from traincraft.state import TrainState

#: What a run leaves in its folder: a folder holding any of these holds a run.
RUN_FILES = ("recipe.yaml", "metrics.csv", "best.safetensors", "best.json", "results.json", "checkpoints")
#: Everything a run writes, removed when a new run overwrites the folder.
WRITTEN = (*RUN_FILES, "env.json", "data.json", "steps.csv", "summary.json", "plots", "report.html",
           "ema.safetensors", "tensorboard", "mlruns")
FINISHED = "finished.json"
#: Changes that keep a resumed run the same run: raising its limits.
CHANGES_ALLOWED_ON_RESUME = {"train.max_epochs", "train.max_steps"}


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES)


def newest_run(folder: str | Path) -> Path | None:
    """For a folder of runs (``runs/NAME``, not a run itself), its newest run that saved weights
    or a checkpoint; None when ``folder`` is a run itself or holds none. Run folders are named by
    their start time (``-2``, ``-3`` for runs of the same second), so the newest sorts last."""
    folder = Path(folder)
    if not folder.is_dir() or _has(folder, "weights"):
        return None
    runs = [p for p in _runs_in(folder) if _has(p, "weights")]
    return max(runs, key=_run_order) if runs else None


#: What a command needs of a run: a run of a folder of runs that lacks it is passed over.
NEEDS = {
    "weights": "saved weights (best.safetensors or a checkpoint)",
    "checkpoint": "a checkpoint (checkpoints/last.ckpt)",
    "metrics": "metrics.csv",
}


def _has(folder: Path, need: str) -> bool:
    from traincraft.checkpoint import checkpoint_candidates

    if need == "metrics":
        return (folder / "metrics.csv").is_file()
    if need == "checkpoint":
        return bool(checkpoint_candidates(folder))
    return (folder / "best.safetensors").is_file() or bool(checkpoint_candidates(folder))


#: Files that make a folder a run's for commands that read runs (a recipe.yaml alone may be the
#: user's own recipe, next to the runs).
RUN_MARKS = ("data.json", *(name for name in RUN_FILES if name != "recipe.yaml"))


def is_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_MARKS)


def _runs_in(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir() and is_run(p)]
    except OSError:
        return []


def find_run(given: str | Path, *, needs: str = "weights") -> tuple[Path, str | None]:
    """The run that a command's ``RUN_DIR`` names: the folder itself when it holds a run, else
    the newest run of a folder of runs (``runs/NAME``) that holds what the command ``needs``
    (a key of :data:`NEEDS`). Returns the run folder and, when it was chosen among several, the
    line that says which.

    Raises:
        TraincraftError: the folder does not exist, is a file, or holds no run (with what it needs).
    """
    folder = Path(given)
    if not folder.exists():
        hint = (" (the run folder comes first: traincraft COMMAND RUN_DIR key=value)"
                if "=" in str(given) else "")
        raise TraincraftError(f"run folder {folder} does not exist{hint}")
    if not folder.is_dir():
        raise TraincraftError(f"{folder} is a file, not a run folder")
    if is_run(folder):
        return folder, None
    runs = _runs_in(folder)
    if not runs:
        raise TraincraftError(f"{folder} is not a run folder (no data.json, metrics.csv or checkpoints/) "
                              "and holds no runs")
    usable = [p for p in runs if _has(p, needs)]
    if not usable:
        raise TraincraftError(f"{folder} holds {len(runs)} run{'s' if len(runs) > 1 else ''}, none with "
                              f"{NEEDS[needs]}")
    newest = max(usable, key=_run_order)
    return newest, f"{folder} holds runs: using the newest, {newest}"


def _run_order(path: Path) -> tuple[str, int]:
    stem, _, n = path.name.rpartition("-")
    return (stem, int(n)) if stem and n.isdigit() and len(n) < 4 else (path.name, 1)


def claim(folder: str | Path, *, overwrite: bool) -> str | None:
    """Make ``folder`` ready for a new run; a problem is returned as one line (None: ready)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return f"run folder {folder} is a file"
    if holds_run(folder):
        if not overwrite:
            return (
                f"{folder} already holds a run: continue it (traincraft resume {folder}; "
                f"fit(..., resume={str(folder)!r})), choose another run folder, or replace it "
                "(--overwrite; fit(..., overwrite=True))"
            )
        for name in WRITTEN:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
        clean_leftovers(folder, everyone=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"cannot create the run folder {folder}: {err.strerror or err}"
    return None


def new_run_dir(parent: Path, name: str) -> Path:
    """A new, empty folder ``parent/name`` (``name-2``, ``name-3``, ... when taken), created
    here: ``mkdir`` succeeds for one process only, whoever else picks the same name."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = parent / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise TraincraftError(f"{parent}: no free run folder name left for {name}")


_TEMPORARY = re.compile(r"^\..+\.(\d+)-\d+\.tmp$")


def clean_leftovers(folder: str | Path, *, everyone: bool = False) -> list[Path]:
    """Remove the temporary files that killed processes left in a run folder (those of live
    processes stay, unless ``everyone``). Returns what was removed."""
    removed = []
    folder = Path(folder)
    for where in (folder, folder / "checkpoints", folder / "plots"):
        if not where.is_dir():
            continue
        for path in where.glob(".*.tmp"):
            match = _TEMPORARY.match(path.name)
            pid = int(match.group(1)) if match else None
            # This process writes nothing while it cleans: its own leftovers go too.
            if pid is not None and not everyone and pid != os.getpid() and process_running(pid):
                continue
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def mark_complete(folder: str | Path, state: TrainState) -> None:
    from traincraft.files import atomic_write_text

    done = {"stop_reason": state.stop_reason, "epoch": state.epoch, "step": state.step,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    # On the writer thread, after every file of the run's end (it is the last one): fit() waits.
    atomic_write_text(Path(folder) / "checkpoints" / FINISHED, json.dumps(done, indent=2), background=True)


def is_complete(folder: str | Path, step: int) -> bool:
    """Whether the run in ``folder`` ended at ``step`` and its end went through."""
    path = Path(folder) / "checkpoints" / FINISHED
    try:
        return int(json.loads(path.read_text())["step"]) == int(step)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_recipe(saved_yaml: str | None, recipe: Any, checkpoint: Path) -> None:
    """Refuse to continue a checkpoint under a recipe that differs from the one it was written
    with, but for its limits; the changed keys are named."""
    if not saved_yaml:
        return
    from traincraft.checkpoint import CheckpointError
    from traincraft.recipe import changed_keys, load_recipe, load_yaml

    if saved_yaml == recipe.to_yaml():
        return
    try:
        saved = load_recipe(load_yaml(saved_yaml))
    except TraincraftError:
        return  # a recipe of another version: the run folder's recipe.yaml check stands
    changes = {k: v for k, v in changed_keys(saved, recipe).items() if k not in CHANGES_ALLOWED_ON_RESUME}
    if changes:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
        raise CheckpointError(
            f"{checkpoint} was written by another recipe ({listed}): resuming would not continue the "
            "same run. Add --allow-changes (fit(..., allow_changes=True)) to resume anyway, or start a new run"
        )


# ----------------------------------------------------------------------------- code a run folder names

_CODE_NAME = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: Prefixes of names that select a model of a package traincraft knows, not code to import.
_PACKAGES = ("torchvision:", "timm:")
TRUST_ENV = "TRAINCRAFT_TRUST_CODE"


def named_code(recipe: Any) -> list[str]:
    """The ``module:attribute`` names of a recipe: code that building its run would import."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, str) and _CODE_NAME.match(value) and not value.startswith(_PACKAGES):
            found.append(value)

    walk(recipe.model_dump(mode="json"))
    return found


def check_code(folder: str | Path, recipe: Any, *, trust_code: bool = False) -> None:
    """A run folder runs no code it names unless the user says it may (DESIGN rule 13): a
    recipe naming ``module:attribute`` is refused when its run folder is not under the current
    folder, unless ``trust_code`` (``--trust-code``, or the environment's TRAINCRAFT_TRUST_CODE=1)."""
    names = named_code(recipe)
    if not names or trust_code or os.environ.get(TRUST_ENV) == "1":
        return
    here, there = Path.cwd().resolve(), Path(folder).resolve()
    if there == here or here in there.parents:
        return  # made here (or placed here by the user)
    raise TraincraftError(
        f"{folder} is a run folder from outside this folder, and its recipe names code to import and run "
        f"({', '.join(names[:3])}). Only if you trust where it came from: add --trust-code "
        f"(trust_code=True in Python, or {TRUST_ENV}=1)"
    )


# ----------------------------------------------------------------------------- rebuilt files


def rebuild_mirrors(folder: str | Path, state: dict[str, Any], warn: Any = None) -> list[str]:
    """Write again, from a loaded checkpoint, the files of the run folder that mirror it and are
    missing or damaged: ``metrics.csv``, ``best.json``, ``best.safetensors``. Returns their names."""
    from traincraft.checkpoint import CheckpointError, load_weights, save_weights_dict
    from traincraft.files import atomic_write_text
    from traincraft.history import History

    folder = Path(folder)
    rebuilt = []
    history = History()
    history.load_state_dict(state["history"])
    if history.epochs and _csv_rows(folder / "metrics.csv") < len(history.epochs):
        history.to_csv(folder / "metrics.csv")
        rebuilt.append("metrics.csv")
    best = best_of_checkpoint(state)
    if best is None:
        return rebuilt
    info, weights = best
    try:
        current = json.loads((folder / "best.json").read_text())
        up_to_date = int(current.get("epoch", -1)) >= info["epoch"]
    except (OSError, ValueError, TypeError, AttributeError):
        up_to_date = False
    if up_to_date:
        try:
            load_weights(folder / "best.safetensors")
        except CheckpointError:
            up_to_date = False
    if up_to_date:
        return rebuilt
    if weights is None:
        if warn is not None:
            warn(f"warning: {folder / 'best.safetensors'} is missing or older than the checkpoint, "
                 "which does not hold the best weights to write it again")
        return rebuilt
    save_weights_dict(weights, folder / "best.safetensors")
    atomic_write_text(folder / "best.json", json.dumps(info, indent=2))
    return [*rebuilt, "best.safetensors", "best.json"]


def best_of_checkpoint(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
    """``(best.json's content, the best weights or None)`` as a checkpoint knows them."""
    callbacks = state.get("callbacks", {})
    keeper = callbacks.get("Checkpoint")
    if not keeper or keeper.get("best_epoch") is None:
        return None
    epoch = int(keeper["best_epoch"])
    monitor = keeper.get("monitor_name")
    value = (keeper.get("monitor") or {}).get("best")
    info = {"epoch": epoch, "step": keeper.get("best_step"), "monitor": monitor,
            "value": float(value) if value is not None else None}
    stopper = callbacks.get("EarlyStopping")
    if (stopper and stopper.get("best_epoch") == epoch and stopper.get("best_weights") is not None
            and (stopper.get("monitor") or {}).get("monitor", monitor) == monitor):
        return info, stopper["best_weights"]
    run = state["state"]
    if run["epoch"] == epoch and run["batch_in_epoch"] == 0:  # this checkpoint is the best epoch's
        ema = callbacks.get("EMA")
        if ema and ema.get("evaluate", True) and ema.get("shadow") is not None:
            return info, ema["shadow"]
        if not ema:
            return info, state["model"]
    return info, None


def _csv_rows(path: Path) -> int:
    try:
        with path.open() as handle:
            return max(0, sum(1 for line in handle if line.strip()) - 1)
    except OSError:
        return 0
