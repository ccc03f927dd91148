"""A recipe turned into a run: data, model, trainer, and the run folder they leave behind.

Run folder (``runs/<name>/<YYYYmmdd-HHMMSS>/`` unless given)::

    recipe.yaml        the resolved recipe, every default filled in (fit it again to repeat the run)
    recipe.given.yaml  the keys the recipe set, as written (no defaults), for the report
    env.json           versions, device, seed, threads
    data.json          task, shapes, class names, the input scaler (for predict and load_model)
    metrics.csv        one row per epoch, rewritten at each epoch end
    best.safetensors   the final weights (the best ones when early stopping restores them)
    results.json       the test split evaluated with those weights, when there is a test split; for
                       classification the confusion matrix and per-class table of val and test
    predictions.npz    those weights' predictions on the test split (else validation): the report judges by them
    checkpoints/       last.ckpt and the kept ones (exact resume); best.json says which epoch was best
    steps.csv, summary.json, plots/, report.html    the LR per step, the summary, the plots, the page
    tensorboard/, mlruns/                           when those loggers are on
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traincraft.callbacks.base import Callback
from traincraft.errors import TraincraftError
from traincraft.files import atomic_write_text
from traincraft.recipe import Recipe, base_dir, load_recipe

if TYPE_CHECKING:
    import torch

    from traincraft.datasets import PreparedData
    from traincraft.trainer import Trainer


def default_run_dir(recipe: Recipe, root: str | Path = "runs") -> Path:
    """A new folder ``runs/<name>/<YYYYmmdd-HHMMSS>``, created here (``-2``, ``-3``, ... when
    another run took the name: two runs started in the same second get a folder each)."""
    from traincraft.runfolder import new_run_dir

    return new_run_dir(Path(root) / recipe.name, time.strftime("%Y%m%d-%H%M%S"))


def agreed_run_dir(recipe: Recipe, root: str | Path = "runs") -> Path:
    """The default run folder; under torchrun rank 0 names it and every process takes that name
    (each process's clock could name another)."""
    from traincraft import distributed

    if distributed.launched_world_size() <= 1:
        return default_run_dir(recipe, root)
    from traincraft.device import resolve_device

    world = distributed.join(resolve_device(recipe.train.device), timeout=recipe.train.dist_timeout)
    chosen = str(default_run_dir(recipe, root)) if world.rank == 0 else None
    return Path(distributed.broadcast_object(chosen))


def prepare_data(recipe: Recipe) -> PreparedData:
    from traincraft import datasets
    from traincraft.registry import add_import_folder

    add_import_folder(base_dir(recipe))  # a module next to the recipe ("mydata:load") imports

    d = recipe.data
    return datasets.prepare(
        d.dataset, task=d.task, target=d.target, features=d.features, lookback=d.lookback,
        horizon=d.horizon, split={"val": d.split.val, "test": d.split.test}, scale=d.scale,
        seed=recipe.seed, base_dir=base_dir(recipe), classes=d.classes, args=d.args,
    )


def build_model(recipe: Recipe, info: dict[str, Any], init_weights: bool = True) -> torch.nn.Module:
    """The recipe's model for the data described by ``info``; ``init_weights=False`` skips the
    model's own ``weights:`` file (when the caller loads other weights right after)."""
    from traincraft import models
    from traincraft.registry import add_import_folder

    add_import_folder(base_dir(recipe))  # a module next to the recipe ("mynets:TinyCNN") imports
    spec = {"name": recipe.model.name, **recipe.model.kwargs()}
    stats = info.get("target_stats")
    return models.build(
        spec, input_shape=tuple(info["input_shape"]), output_size=int(info["output_size"]),
        target_stats=tuple(stats) if stats else None, init_weights=init_weights,
    )


def data_info(data: PreparedData) -> dict[str, Any]:
    """What a model needs to be rebuilt without loading the data again."""
    from traincraft.datasets import split_size

    return {
        "task": data.task,
        "input_shape": list(data.input_shape),
        "output_size": data.output_size,
        "num_classes": data.num_classes,
        "feature_names": list(data.feature_names),
        "target_names": list(data.target_names),
        "class_names": list(data.class_names) if data.class_names is not None else None,
        "target_stats": [list(s) for s in data.target_stats] if data.target_stats else None,
        "normalize": data.normalize,
        "scaler": data.scaler.to_dict(),
        "sizes": {split: split_size(part) for split, part in (("train", data.train), ("val", data.val),
                                                              ("test", data.test))},
        "class_counts": class_counts(data),
    }


def class_counts(data: PreparedData) -> dict[str, list[int]] | None:
    """Samples of each class per split (for the report), when the targets are class indices in
    memory; None otherwise."""
    import torch

    if data.task != "classification" or not data.num_classes:
        return None
    counts = {}
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        targets = split[1] if isinstance(split, tuple) else getattr(split, "targets", None)
        if split is None:
            continue
        if not isinstance(targets, torch.Tensor) or targets.ndim != 1 or targets.is_floating_point():
            return None
        kept = targets[(targets >= 0) & (targets < data.num_classes)]
        counts[name] = torch.bincount(kept, minlength=data.num_classes).tolist()
    return counts


def trainer_kwargs(recipe: Recipe) -> dict[str, Any]:
    """The ``Trainer`` keyword arguments a recipe stands for (model and data aside): each recipe
    section reaches its owner whole (``train:`` holds the step's, the non-finite policy's, the
    penalty's and the processes' keys, handed on as those groups)."""
    from traincraft.callbacks.early_stopping import EarlyStopping

    t, o = recipe.train, recipe.optimizer
    callbacks = []
    if recipe.early_stopping is not None:
        callbacks.append(EarlyStopping(**recipe.early_stopping.model_dump()))
    return dict(
        loss=recipe.loss, optimizer=o.group(), lr=o.lr, schedule=recipe.schedule, metrics=list(recipe.metrics),
        max_epochs=t.max_epochs, max_steps=t.max_steps, batch_size=recipe.data.batch_size, callbacks=callbacks,
        seed=recipe.seed, device=t.device, checkpoint=recipe.checkpoint.model_dump(),
        **{**t.groups(), "data": {**t.groups()["data"], "augment": recipe.data.augment,
                                  "num_workers": recipe.data.num_workers, "pin_memory": recipe.data.pin_memory,
                                  "persistent_workers": recipe.data.persistent_workers}},
        **finetune_kwargs(recipe),
    )


def with_normalization(kwargs: dict[str, Any], recipe: Recipe, info: dict[str, Any]) -> dict[str, Any]:
    """The trainer's ``data.normalize`` for the recipe's data: as the recipe says, else (images)
    the train split's per-channel statistics that ``info`` (data.json) holds."""
    spec = recipe.data.normalize
    if spec is None or spec == "dataset":
        spec = info.get("normalize")
    return {**kwargs, "data": {**kwargs.get("data", {}), "normalize": None if spec == "none" else spec}}


def standalone_kwargs(recipe: Recipe) -> dict[str, Any]:
    """:func:`trainer_kwargs` for a trainer whose weights come from its run folder: nothing the
    run started from (``init_from``) is read again."""
    kwargs = trainer_kwargs(recipe)
    if "finetune" in kwargs:  # how init_from was loaded no longer matters
        kwargs["finetune"] = {k: v for k, v in kwargs["finetune"].items() if k not in ("init_from", "skip", "strict")}
    return kwargs


def evaluation_kwargs(recipe: Recipe) -> dict[str, Any]:
    """:func:`standalone_kwargs` for a trainer that only evaluates and predicts: nothing of the
    training strategies (freezing, averaging) applies to the run's saved weights."""
    kwargs = standalone_kwargs(recipe)
    for key in ("finetune", "ema", "swa"):
        kwargs.pop(key, None)
    kwargs["data"] = {k: v for k, v in kwargs["data"].items() if k != "augment"}  # evaluation never augments
    return kwargs


def finetune_kwargs(recipe: Recipe) -> dict[str, Any]:
    """``finetune`` (with ``init_from``'s path resolved), ``ema`` and ``swa`` of a recipe (empty
    when not set)."""
    kwargs: dict[str, Any] = {}
    f = recipe.finetune
    if f is not None:
        kwargs["finetune"] = f.kwargs()
        if isinstance(f.init_from, str):
            kwargs["finetune"]["init_from"] = resolve_path(f.init_from, recipe)
        elif f.init_from is not None:
            path = resolve_path(f.init_from.path, recipe)
            kwargs["finetune"]["init_from"] = {**f.init_from.model_dump(), "path": path}
    if recipe.ema is not None:
        kwargs["ema"] = recipe.ema.model_dump()
    if recipe.swa is not None:
        kwargs["swa"] = recipe.swa.model_dump()
    return kwargs


def resolve_path(path: str, recipe: Recipe) -> Path:
    """A path from a recipe: as given when it exists from here, else next to the recipe file."""
    given = Path(path).expanduser()
    folder = base_dir(recipe)
    if given.exists() or given.is_absolute() or folder is None:
        return given
    beside = Path(folder) / given
    return beside if beside.exists() else given


def trainer_from_recipe(
    trainer_class: type[Trainer], recipe: Recipe | str | Path | dict[str, Any], *,
    run_dir: str | Path | None = None, progress: bool | str = True, callbacks: list[Callback] | None = None,
    checkpoint: bool = True, resuming: bool = False, report: bool = True,
) -> Trainer:
    """Build data, model and a ``trainer_class`` from a recipe (``Trainer.from_recipe``).
    ``resuming``: the run folder's checkpoint will give every tensor, so the recipe's starting
    weights (``finetune.init_from``, the model's ``weights:``) are not read. ``report=False``:
    no report.html and plots, and results.json without the evaluations at the end (the test
    split, the tables, predictions.npz): what a search's trials skip."""
    from traincraft.seeding import seed_everything

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    data = prepare_data(recipe)
    info = data_info(data)
    seed_everything(recipe.seed)  # the model's initial weights follow the recipe's seed
    model = build_model(recipe, info, init_weights=not resuming)
    kwargs = with_normalization(standalone_kwargs(recipe) if resuming else trainer_kwargs(recipe), recipe, info)
    if resuming and run_dir is not None and "finetune" in kwargs:
        # The tensors the pretrained weights left as built, as the run recorded them: freezing
        # leaves them trainable, as when the run started.
        saved = _saved_info(Path(run_dir))
        kwargs["finetune"] = {**kwargs["finetune"], "new": saved.get("not_loaded", [])}
    kwargs["callbacks"] = [*kwargs["callbacks"], *(callbacks or [])]
    if run_dir is not None:
        run_folder = RunFolder(run_dir, recipe, info)
        run_folder.evaluate = report
        kwargs["callbacks"].append(run_folder)
    if not checkpoint:
        kwargs["checkpoint"] = False
    if run_dir is not None:  # tensorboard and mlflow write into the run folder
        kwargs["loggers"] = [spec for spec in recipe.logging if spec != "csv"]
    kwargs["loggers"] = [*kwargs.get("loggers", []), *(["report"] if report else [])]
    trainer = trainer_class(model, **kwargs, run_dir=run_dir, progress=progress)
    trainer.data, trainer.recipe = data, recipe
    info["not_loaded"] = sorted(trainer.finetuning.new)  # into data.json: what a resume needs
    for note in data.notes:  # how the data was read, when it was a guess
        trainer.log(note)
    return trainer


class RunFolder(Callback):
    """Writes recipe.yaml, env.json and data.json at the start, results.json at the end (the best
    epoch is best.json's, written with the best weights: results.json does not repeat it)."""

    def __init__(self, folder: str | Path, recipe: Recipe, info: dict[str, Any]):
        self.folder, self.recipe, self.info = Path(folder), recipe, info

    def on_fit_start(self, trainer: Trainer) -> None:
        if not trainer.is_main_process or trainer.run_complete:
            return
        atomic_write_text(self.folder / "recipe.yaml", run_recipe_text(self.recipe, self.folder))
        if not (self.folder / GIVEN_RECIPE).is_file():  # a resumed run keeps what its author wrote
            atomic_write_text(self.folder / GIVEN_RECIPE, given_recipe_text(self.recipe))
        atomic_write_text(self.folder / "env.json", json.dumps(environment(trainer), indent=2))
        atomic_write_text(self.folder / "data.json", json.dumps(self.info, indent=2))
        transform = trainer.batch_transform
        if transform is not None and transform.augmentation is not None and trainer.data is not None:
            from traincraft.augment import preview, previewable

            if not previewable(trainer.data.train):
                return

            # What the augmentation makes of training images (its own random numbers).
            preview(transform, trainer.data.train, self.folder / "plots" / "augment.png", seed=trainer.seed)

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.state.stop_reason is None or trainer.run_complete:
            return  # an exception ended the run (nothing to evaluate), or its end is done already
        results: dict[str, Any] = {
            "stop_reason": trainer.state.stop_reason,
            "epochs": trainer.state.epoch,
            "steps": trainer.state.step,
        }
        data = getattr(trainer, "data", None)
        judged = None if data is None else ("test", data.test) if data.test is not None else (
            ("val", data.val) if data.val is not None else None)
        results.update(self._evaluate_best(trainer, judged))  # every process takes part
        if not trainer.is_main_process:
            return
        atomic_write_text(self.folder / "results.json", json.dumps(results, indent=2))
        self.results = results

    def _evaluate_best(self, trainer: Trainer, judged: tuple[str, Any] | None) -> dict[str, Any]:
        """With the weights of best.safetensors: the test split's figures (``"test"``), and the
        tables (``"confusion_matrix"``, ``"per_class"``, and any other the recipe lists) of the
        validation and test splits (``{"confusion_matrix": {"val": ..., "test": ...}}``).
        Classification runs always get the confusion matrix and the per-class table. The
        ``judged`` split's predictions go to predictions.npz (the main process). Nothing when
        ``evaluate`` is off (a search's trials)."""
        if not self.evaluate:
            return {}
        data = getattr(trainer, "data", None)
        evaluations: dict[str, Any] = {}
        if data is not None and data.test is not None:
            evaluations["test"] = lambda: trainer.evaluate(data.test)
        extra = table_metrics(data)
        if (extra or trainer.metrics.table_names) and trainer.has_validation_data:
            evaluations = {"val": trainer.validate, **evaluations}
        if not evaluations and judged is None:
            return {}
        results: dict[str, Any] = {}
        with self._best_weights(trainer), trainer.metrics.extra(extra) as metrics:
            names = getattr(data, "class_names", None)
            per_class = metrics["per_class"] if "per_class" in metrics.names else None
            if names and getattr(per_class, "class_names", 0) is None and len(names) == data.num_classes:
                per_class.class_names = list(names)
            for split, evaluate in evaluations.items():
                figures = evaluate()
                if split == "test":
                    results["test"] = figures
                for name, table in metrics.tables().items():
                    results.setdefault(name if name not in RESULT_KEYS else f"table_{name}", {})[split] = table
            if judged is not None and trainer.is_main_process:
                self._save_predictions(trainer, *judged)
        return results

    def _save_predictions(self, trainer: Trainer, name: str, split: Any) -> None:
        """predictions.npz: what the report judges the model by (see :mod:`traincraft.judging`)."""
        from traincraft.judging import PREDICTIONS, save_predictions

        index = trainer.data.indices.get(name) if trainer.data is not None else None
        try:
            save_predictions(trainer, split, name=name, task=self.info["task"], index=index,
                             path=self.folder / PREDICTIONS)
        except Exception as err:  # noqa: BLE001  the run is fine; only its report cannot judge it
            trainer.log(f"could not write {PREDICTIONS}: {type(err).__name__}: {err}")


    #: Evaluate the best weights at the end of fit (off: results.json holds the run's end alone).
    evaluate = True

    @contextmanager
    def _best_weights(self, trainer: Trainer) -> Iterator[None]:
        """The model holds the weights of best.safetensors for a while, then its own again."""
        from traincraft.checkpoint import load_weights
        from traincraft.distributed import broadcast_object, broadcast_weights

        best = self.folder / "best.safetensors"
        several = trainer.world_size > 1
        if not (broadcast_object(best.is_file()) if several else best.is_file()):  # rank 0's file decides
            yield
            return
        current = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        if trainer.is_main_process:
            trainer.model.load_state_dict(load_weights(best))
        if several:  # rank 0 read the file: no file system shared by the machines needed
            broadcast_weights(trainer.model)
        try:
            yield
        finally:
            trainer.model.load_state_dict(current)


#: results.json's own keys; a table metric of the same name is written as ``table_<name>``.
RESULT_KEYS = ("stop_reason", "epochs", "steps", "best", "test")


def table_metrics(data: PreparedData | None) -> list[Any]:
    """The tables every run of this data gets in results.json: for classification, the confusion
    matrix and the per-class precision/recall/F1/support."""
    if data is None or getattr(data, "task", None) != "classification":
        return []
    return ["confusion_matrix", "per_class"]


#: The keys the recipe set, as its author wrote them (the report shows it).
GIVEN_RECIPE = "recipe.given.yaml"


def given_recipe_text(recipe: Recipe) -> str:
    """The keys a recipe set (in its file or dict, and by overrides), without the defaults that
    ``recipe.yaml`` fills in."""
    from traincraft.recipe_yaml import dump_yaml

    return dump_yaml(recipe.model_dump(mode="json", exclude_unset=True), flow=None)


def run_recipe_text(recipe: Recipe, run_dir: str | Path | None = None) -> str:
    """The resolved recipe for the run folder ``run_dir``. Relative paths in it (a CSV, an image
    folder) keep resolving against the original recipe's folder, recorded relative to the run
    folder and as it was (:mod:`traincraft.run_paths`), so that ``traincraft resume`` and
    ``traincraft fit RUN/recipe.yaml`` find them, also after the run folder moved (``_base_dir``
    is not part of the recipe's fingerprint)."""
    from traincraft.run_paths import base_dir_line

    folder = base_dir(recipe)
    text = recipe.to_yaml()
    if folder is None:
        return text
    return base_dir_line(folder, run_dir if run_dir is not None else folder) + text


def environment(trainer: Trainer) -> dict[str, Any]:
    import numpy
    import torch

    from traincraft import __version__

    return {
        "traincraft": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "device": str(trainer.device),
        "processes": trainer.world_size,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "seed": trainer.seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _saved_info(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "data.json").read_text())
    except (OSError, ValueError):
        return {}


def load_run(run_dir: str | Path, *, trust_code: bool = False) -> tuple[Recipe, dict[str, Any]]:
    """The recipe and data info a run folder holds. A recipe naming code to import
    (``module:Class``) is refused for a folder from elsewhere unless ``trust_code`` (see
    :func:`traincraft.runfolder.check_code`)."""
    from traincraft.runfolder import check_code

    folder = Path(run_dir)
    for name in ("recipe.yaml", "data.json"):
        if not (folder / name).is_file():
            raise TraincraftError(f"{folder} is not a run folder: {name} is missing")
    recipe = load_recipe(folder / "recipe.yaml")
    check_code(folder, recipe, trust_code=trust_code)
    try:
        info = json.loads((folder / "data.json").read_text())
    except ValueError as err:
        raise TraincraftError(f"{folder / 'data.json'} is damaged: {err}") from None
    return recipe, info


def load_model(run_dir: str | Path, weights: str = "best.safetensors", *, trust_code: bool = False) -> torch.nn.Module:
    """The model of a run, rebuilt from its recipe with its saved weights, in eval mode.
    ``trust_code``: see :func:`load_run`.

    Example:
        >>> model = load_model("runs/quickstart/20261121-101500")
        >>> model(x)
    """
    from traincraft.checkpoint import load_weights

    recipe, info = load_run(run_dir, trust_code=trust_code)
    model = build_model(recipe, info, init_weights=False)  # the run's own weights replace them
    if weights == "best.safetensors":
        model.load_state_dict(run_weights(run_dir))
        return model.eval()
    path = Path(run_dir) / weights
    if not path.is_file():
        raise TraincraftError(f"{path} not found: the run saved no weights")
    model.load_state_dict(load_weights(path))
    return model.eval()


def run_weights(run_dir: str | Path, warn: Any = None) -> dict[str, torch.Tensor]:
    """The weights a run folder stands for (``best.safetensors``), written again from the run's
    newest good checkpoint when the file is missing or damaged."""
    from traincraft.checkpoint import (
        CheckpointError,
        checkpoint_candidates,
        find_resume_checkpoint,
        load_weights,
    )
    from traincraft.runfolder import rebuild_mirrors

    folder = Path(run_dir)
    path = folder / "best.safetensors"
    try:
        return load_weights(path)
    except CheckpointError as err:
        problem = str(err)
    if not checkpoint_candidates(folder):
        raise TraincraftError(f"{problem}: the run saved no weights, and no checkpoint to rebuild them from")
    say = warn or (lambda line: print(line, file=sys.stderr))
    _, state = find_resume_checkpoint(folder, warn=say)
    rebuilt = rebuild_mirrors(folder, state, warn=say)
    if "best.safetensors" not in rebuilt:
        raise TraincraftError(f"{problem}, and the run's checkpoint does not hold the best weights to rebuild it")
    say(f"{path} was missing or damaged: wrote {', '.join(rebuilt)} again from the run's checkpoint")
    return load_weights(path)
