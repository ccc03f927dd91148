"""The search space against the recipe: the ``tune:`` section read from a raw recipe, the recipe
with a trial's values filled in, and the checks that run before any trial.

Example:
    >>> section = read_section(raw)
    >>> check_space(raw, section.dimensions())   # RecipeError/TraincraftError naming the key
    >>> recipe_with(raw, {"optimizer.lr": 3e-4}).optimizer.lr
    0.0003
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from traincraft.errors import TraincraftError, did_you_mean
from traincraft.recipe import Recipe, RecipeError, section_model, set_key, validate
from traincraft.tuning.section import Dimension, TuneSection, _copy

__all__ = ["check_key", "check_space", "read_section", "recipe_with", "set_value"]


def read_section(raw: Mapping[str, Any]) -> TuneSection:
    """The ``tune:`` section of a raw recipe dict, validated (one line per mistake)."""
    section = raw.get("tune")
    if section is None:
        raise RecipeError(
            "the recipe has no tune section: add tune: {metric: val_loss, trials: 20, space: "
            "{optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}}} (see docs/tuning.md)"
        )
    if not isinstance(section, Mapping):
        raise RecipeError(f"recipe error at tune: expected a mapping, got {section!r}")
    try:
        return TuneSection.model_validate(dict(section))
    except ValidationError as err:
        raise RecipeError(_section_error(err)) from None


def _section_error(err: ValidationError) -> str:
    problem = err.errors()[0]
    location = ".".join(["tune", *(str(p) for p in problem["loc"])])
    kind = problem["type"]
    if kind == "extra_forbidden":
        name = str(problem["loc"][-1])
        valid = list(TuneSection.model_fields)
        hint = did_you_mean(name, valid) or f"; valid keys: {', '.join(valid)}"
        return f"recipe error at {location}: unknown key{hint}"
    if kind == "missing":
        return f"recipe error at {location}: this key is required"
    message = problem["msg"].replace("Input should be", "must be").replace("Value error, ", "")
    if kind == "value_error":
        return f"recipe error at {location}: {message}"
    return f"recipe error at {location}: {message}, got {problem.get('input')!r}"


def set_value(raw: dict[str, Any], key: str, value: Any) -> None:
    """``raw[a][b] = value`` for ``key = "a.b"``, as a ``a.b=value`` override would set it."""
    set_key(raw, key, _copy(value), where=f"tune.space {key!r}")


def recipe_with(raw: Mapping[str, Any], values: Mapping[str, Any]) -> Recipe:
    """The recipe ``raw`` with ``values`` (dotted keys) filled in, validated."""
    candidate = _copy(dict(raw))
    for key, value in values.items():
        set_value(candidate, key, value)
    return validate(candidate)


def check_key(key: str) -> None:
    """Refuse a space key that names nothing in the recipe schema.

    Sections with a fixed set of keys are checked here, with the closest valid names. The model
    and optimizer sections pass any key on to the class, and free-form values (``loss``,
    ``schedule``) have no schema: those keys are checked by building the trainer.
    """
    parts = key.split(".")
    if parts[0] == "tune":
        raise RecipeError(f"tune.space {key!r}: the tune section itself cannot be searched")
    if any(not part for part in parts):
        raise RecipeError(f"tune.space {key!r}: expected a dotted recipe key such as optimizer.lr")
    section: type[BaseModel] = Recipe
    for i, part in enumerate(parts):
        fields = {name: f for name, f in section.model_fields.items() if name != "tune"}
        if part not in fields:
            if section.model_config.get("extra") == "allow" and i == len(parts) - 1:
                return
            where = ".".join(parts[:i]) or "the recipe"
            hint = did_you_mean(part, fields) or f"; valid keys: {', '.join(fields)}"
            raise RecipeError(f"tune.space {key!r}: {where} has no key {part!r}{hint}")
        sub = section_model(parts[: i + 1])
        if sub is None:
            return
        section = sub
    return


def check_space(raw: Mapping[str, Any], dimensions: Mapping[str, Dimension]) -> None:
    """Everything about the space that can fail before a trial runs, with one clear line.

    1. every key names something in the recipe schema (:func:`check_key`);
    2. every choice, and both ends of every range, gives a valid recipe;
    3. the recipe with the first value of every key builds (data, model, loss, optimizer,
       schedule), and so does the model, optimizer and the rest with each other value of each
       key outside ``data`` (a model or optimizer keyword that the class does not take fails
       here, since those sections accept any key by design).

    Raises:
        RecipeError, TraincraftError: naming the key and the value.
    """
    for key, dim in dimensions.items():
        check_key(key)
        for value in dim.probes():
            try:
                recipe_with(raw, {key: value})
            except RecipeError as err:
                raise RecipeError(f"tune.space {key!r} = {value!r}: {err}") from None
    base = {key: dim.probes()[0] for key, dim in dimensions.items()}
    built: list[weakref.ref[Any]] = []
    try:
        info = _build_check(recipe_with(raw, base), None, built)
    except TraincraftError as err:
        shown = ", ".join(f"{k}={v!r}" for k, v in base.items())
        raise TraincraftError(
            f"tune.space: the recipe with {shown} does not build: {err}"
        ) from None
    for key, dim in dimensions.items():
        if key.startswith("data."):
            continue  # a new data set per value would cost a load each; validated above
        for value in dim.probes()[1:]:
            try:
                _build_check(recipe_with(raw, {**base, key: value}), info, built)
            except TraincraftError as err:
                raise TraincraftError(f"tune.space {key!r} = {value!r}: {err}") from None
    _release(built)


def _build_check(
    recipe: Recipe, info: dict[str, Any] | None, built: list[weakref.ref[Any]]
) -> dict[str, Any]:
    """Build what a trial builds (data only when ``info`` is None), then drop it."""
    from traincraft import schedules
    from traincraft.run import build_model, data_info, prepare_data, trainer_kwargs
    from traincraft.trainer import Trainer

    try:
        if info is None:
            info = data_info(prepare_data(recipe))
        model = build_model(recipe, info)
        built.append(weakref.ref(model))
        trainer = Trainer(model, **trainer_kwargs(recipe), progress=False)
        if recipe.schedule is not None:
            per_epoch = _steps_per_epoch(recipe, info)
            total = recipe.train.max_epochs * per_epoch
            if recipe.train.max_steps:
                total = min(total, recipe.train.max_steps)
            schedules.build(
                recipe.schedule, trainer.optimizer, steps_per_epoch=per_epoch, total_steps=total
            )
    except TraincraftError:
        raise
    except Exception as err:  # noqa: BLE001 - a user's class raising for a value is a space mistake
        raise TraincraftError(f"{type(err).__name__}: {err}") from err
    return info


def _release(built: list[weakref.ref[Any]]) -> None:
    """Make sure what a trial (or a check) built is gone. Reference counting frees it as soon
    as the last name goes; a full collection, which costs a good fraction of a second in a
    process that has imported torch and Optuna, runs only when a cycle still holds it."""
    if any(ref() is not None for ref in built):
        gc.collect()
    built.clear()


def _steps_per_epoch(recipe: Recipe, info: Mapping[str, Any]) -> int:
    from traincraft.durations import steps_for_samples

    return steps_for_samples(int(info["sizes"]["train"]), batch_size=recipe.data.batch_size,
                             accumulate=recipe.train.accumulate)
