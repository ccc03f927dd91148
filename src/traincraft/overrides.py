"""Changes to a raw recipe: ``key=value`` overrides, and recipe files composed in order.

An override is one of (Hydra's spellings):

- ``a.b=value``: set (the value is read as YAML); sections on the way are created.
- ``+a.b=value``: add a key that is not in the recipe yet; refused when it is there.
- ``++a.b=value``: set, whether the key is there or not (the same as ``a.b=value``).
- ``~a.b``: delete a key (and with it, its default applies again); ``~a.b=value`` deletes it
  only if it holds that value.

Setting a section's ``name`` to another name (``schedule.name=onecycle`` over a cosine schedule)
starts that section afresh: the old name's arguments go, the keys that belong to every name stay
(an optimizer's ``lr``, ``weight_decay``, ``decay_exclude``, ``param_groups``; a schedule's
``warmup``, ``cooldown``, ``interval``), and so do the keys set by overrides of the same command.
A later recipe file's section with another ``name`` replaces the earlier one by the same rule;
otherwise later files are merged into earlier ones section by section, and later values win.

Example:
    >>> raw = {"schedule": {"name": "cosine", "eta_min": 1e-6, "warmup": "5%"}}
    >>> apply_overrides(raw, ["schedule.name=onecycle", "+seed=3"])
    >>> raw
    {'schedule': {'name': 'onecycle', 'warmup': '5%'}, 'seed': 3}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from traincraft.recipe_yaml import RecipeError, load_yaml

__all__ = ["KEPT_ON_NAME_CHANGE", "apply_override", "apply_overrides", "merge", "set_key"]

#: The keys of a named section that belong to every name: a new ``name`` keeps them.
KEPT_ON_NAME_CHANGE: dict[str, frozenset[str]] = {
    "optimizer": frozenset({"lr", "weight_decay", "decay_exclude", "param_groups"}),
    "schedule": frozenset({"warmup", "cooldown", "interval"}),
}

#: Sections that may be a bare name (``model: mlp``) and take keys below it all the same.
NAMED_SECTIONS = frozenset({"model", "optimizer", "loss", "schedule"})


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> None:
    """Apply ``overrides`` to ``raw`` in order (see the module's docstring)."""
    given: set[str] = set()  # key paths set by these overrides: a later name change keeps them
    for override in overrides:
        apply_override(raw, override, given)


def apply_override(raw: dict[str, Any], override: str, given: set[str] | None = None) -> None:
    """Apply one override: ``a.b=value``, ``+a.b=value``, ``++a.b=value``, ``~a.b[=value]``."""
    where = f"override {override!r}"
    text = str(override)
    op = "~" if text.startswith("~") else "++" if text.startswith("++") else "+" if text.startswith("+") else ""
    key, sep, value_text = text[len(op):].partition("=")
    key = key.strip()
    if not key or (not sep and op != "~"):
        raise RecipeError(f"{where}: expected key.path=value (+key.path=value adds, ~key.path deletes), "
                          "e.g. optimizer.lr=3e-4")
    if any(not part.strip() for part in key.split(".")):
        raise RecipeError(f"{where}: {key!r} is not a key path (keys joined by dots, e.g. train.max_epochs)")
    value = _read_value(value_text, where) if sep else None
    if op == "~":
        _delete(raw, key, value, sep == "=", where)
        return
    if op == "+":
        present, current = _lookup(raw, key)
        if present:
            raise RecipeError(f"{where}: {key} is in the recipe already ({current!r}); "
                              f"to change it write {key}={value_text.strip()}")
    set_key(raw, key, value, where=where, given=given)


def _read_value(text: str, where: str) -> Any:
    if not text.strip():
        return None
    try:
        return load_yaml(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{where}: the value is not valid YAML") from err
    except RecipeError as err:
        raise RecipeError(f"{where}: {err}") from None


def set_key(raw: dict[str, Any], key: str, value: Any, *, where: str, given: set[str] | None = None) -> None:
    """``raw[a][b] = value`` for ``key = "a.b"``, creating sections on the way. A section given as
    a bare name (``model: mlp``) becomes ``{name: mlp}``; a path through a plain value is an error
    that starts with ``where``. A new ``name`` for a section starts it afresh (module docstring);
    ``given`` holds the paths set so far by the same command, which it keeps."""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None or isinstance(child, str) and i == 0 and part in NAMED_SECTIONS:
            child = {"name": child} if isinstance(child, str) else {}
            node[part] = child
        if not isinstance(child, dict):
            raise RecipeError(f"{where}: {'.'.join(parts[: i + 1])} is {child!r}, not a section")
        node = child
    section = ".".join(parts[:-1])
    if parts[-1] == "name" and section and _is_new_name(node.get("name"), value):
        _start_afresh(node, section, given or set())
    node[parts[-1]] = value
    if given is not None:
        given.add(key)


def _is_new_name(old: Any, new: Any) -> bool:
    """Whether ``new`` names something else than ``old`` (case and dashes aside, as registries
    read names; an alias counts as another name)."""
    def plain(name: Any) -> Any:
        return name.strip().lower().replace("-", "_") if isinstance(name, str) else name

    return old is not None and plain(old) != plain(new)


def _start_afresh(node: dict[str, Any], section: str, given: set[str]) -> None:
    kept = KEPT_ON_NAME_CHANGE.get(section, frozenset())
    for key in list(node):
        path = f"{section}.{key}"
        if key != "name" and key not in kept and not any(path == g or path.startswith(g + ".") for g in given):
            del node[key]


def _lookup(raw: dict[str, Any], key: str) -> tuple[bool, Any]:
    """Whether ``key`` is in ``raw`` (a bare section name counts as its ``name``), and its value."""
    node: Any = raw
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, str) and i == 1 and parts[0] in NAMED_SECTIONS:
            node = {"name": node}
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _delete(raw: dict[str, Any], key: str, value: Any, compare: bool, where: str) -> None:
    present, current = _lookup(raw, key)
    if not present:
        raise RecipeError(f"{where}: {key} is not in the recipe, so there is nothing to delete")
    if compare and current != value:
        raise RecipeError(f"{where}: {key} is {current!r}, not {value!r}; write ~{key} to delete it whatever it is")
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        if isinstance(node[part], str):  # a bare section name: only its name can be deleted
            node[part] = {"name": node[part]}
        node = node[part]
    del node[last]


def merge(base: dict[str, Any], later: dict[str, Any], path: str = "") -> dict[str, Any]:
    """``later`` merged into ``base``: mappings section by section, everything else replaced;
    a section whose ``name`` changes starts afresh (``KEPT_ON_NAME_CHANGE`` aside). Returns a new
    dict; neither argument changes."""
    merged = dict(base)
    for key, value in later.items():
        here = f"{path}.{key}" if path else key
        old = merged.get(key)
        if isinstance(old, str) and not path and key in NAMED_SECTIONS and isinstance(value, dict):
            old = {"name": old}
        if isinstance(old, dict) and isinstance(value, dict):
            if "name" in value and _is_new_name(old.get("name"), value["name"]):
                kept = KEPT_ON_NAME_CHANGE.get(here, frozenset())
                old = {"name": value["name"], **{k: v for k, v in old.items() if k in kept}}
            merged[key] = merge(old, value, here)
        else:
            merged[key] = value
    return merged
