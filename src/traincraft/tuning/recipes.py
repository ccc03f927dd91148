"""The recipes a study remembers: its base recipe (every key that is not searched), so that a
study is not continued under another recipe by mistake, and each trial's own resolved recipe,
so that ``best.yaml`` trains the best trial again whatever the base recipe is now.

Both are plain data in Optuna's user attributes: the study's ``base_recipe`` and
``searched_keys``, each trial's ``recipe``. The comparison is the one that guards ``traincraft
resume`` (:func:`traincraft.recipe.changed_keys`), on resolved recipes, so that writing a
default out or leaving it out changes nothing.

Example:
    >>> changes = check_base(study, raw, ["optimizer.lr"], allow_changes=False)
    TraincraftError: study 'iris' was run with another base recipe (train.max_epochs: 15 -> 50): ...
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from traincraft.errors import TraincraftError
from traincraft.recipe import changed_keys
from traincraft.tuning.space import recipe_with

if TYPE_CHECKING:
    import optuna

__all__ = ["base_changes", "base_recipe", "check_base", "trial_recipe"]

BASE_ATTR = "base_recipe"
SEARCHED_ATTR = "searched_keys"
TRIAL_ATTR = "recipe"


def trial_recipe(raw: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe ``raw`` with a trial's ``values``, every default filled in, without the tune
    section; ``_base_dir`` (where relative data paths resolve) is kept when ``raw`` has one."""
    plain = recipe_with(raw, values).model_dump(mode="json")
    plain.pop("tune", None)
    if raw.get("_base_dir"):
        plain["_base_dir"] = raw["_base_dir"]
    return plain


def base_recipe(raw: Mapping[str, Any], searched: Collection[str]) -> dict[str, Any]:
    """The resolved recipe without the tune section and without the searched keys: what every
    trial of the study shares."""
    plain = recipe_with(raw, {}).model_dump(mode="json")
    plain.pop("tune", None)
    for key in searched:
        *parents, last = key.split(".")
        node: Any = plain
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return plain


def base_changes(
    saved: Mapping[str, Any], current: Mapping[str, Any], searched: Collection[str]
) -> dict[str, tuple[Any, Any]]:
    """``{"train.max_epochs": (15, 50)}``: the keys that differ, but for the searched ones and
    what lies under them."""
    changes = changed_keys(dict(saved), dict(current))
    return {
        key: change
        for key, change in changes.items()
        if not any(key == s or key.startswith(f"{s}.") for s in searched)
    }


def check_base(
    study: optuna.Study,
    raw: Mapping[str, Any],
    searched: Collection[str],
    *,
    allow_changes: bool,
) -> dict[str, tuple[Any, Any]]:
    """Refuse to continue a study whose base recipe differs from the one it was run with,
    naming the changed keys, unless ``allow_changes``; then remember the recipe given now.

    A key searched before or now is not compared: narrowing or widening the space continues
    the study. A study that remembers no base recipe (a new one) takes this one.

    Returns:
        The changes allowed (empty when there were none).
    """
    current = base_recipe(raw, searched)
    saved = study.user_attrs.get(BASE_ATTR)
    before = list(study.user_attrs.get(SEARCHED_ATTR, []))
    changes: dict[str, tuple[Any, Any]] = {}
    if saved is not None:
        changes = base_changes(saved, current, {*searched, *before})
        if changes and not allow_changes:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
            raise TraincraftError(
                f"study {study.study_name!r} was run with another base recipe ({listed}): its "
                "trials and new ones would not compare. Add --allow-changes "
                "(tune(..., allow_changes=True)) to continue it anyway, or start a new study "
                "(--study-dir DIR)"
            )
    if saved != current:
        study.set_user_attr(BASE_ATTR, current)
    if before != list(searched):
        study.set_user_attr(SEARCHED_ATTR, list(searched))
    return changes
