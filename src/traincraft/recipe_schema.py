"""The recipe's JSON schema, typed by the registries: ``loss`` and ``schedule`` list their names
and, per name, its arguments, so that an editor completes them and flags a misspelt one.

The schema accepts what the command accepts: names in any case and with dashes
(``CosineAnnealingLR``, ``cross-entropy``), aliases, ``package.module:Name``, a bare name where
one is enough; it rejects an unknown name or argument, text where a number belongs, and a
schedule given by name alone that needs arguments (``step`` needs ``step_size``).

Example:
    >>> from traincraft.recipe import json_schema
    >>> schema = json_schema()
    >>> "cosine" in schema["$defs"]["ScheduleName"]["anyOf"][0]["enum"]
    True
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["loose_name", "with_registries"]

#: ``package.module:Name``: a class or function of your own.
IMPORTED = {"type": "string", "pattern": r"^[^:\s]+:[^:\s]+$"}


def with_registries(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (pydantic's, of :class:`~traincraft.recipe.Recipe`) with ``loss`` and
    ``schedule`` typed by their registries."""
    schema = copy.deepcopy(schema)
    defs = schema.setdefault("$defs", {})
    properties = schema["properties"]
    defs.update(_loss_defs())
    defs.update(_schedule_defs())
    properties["loss"] = {
        "anyOf": [{"$ref": "#/$defs/LossName"}, {"$ref": "#/$defs/Loss"},
                  {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/LossTerm"}}, {"type": "null"}],
        "default": properties["loss"].get("default"),
        "description": properties["loss"].get("description", ""),
    }
    properties["schedule"] = {
        "anyOf": [{"$ref": "#/$defs/ScheduleName"}, {"$ref": "#/$defs/Schedule"}, {"type": "null"}],
        "default": None,
        "description": properties["schedule"].get("description", ""),
    }
    return schema


def loose_name(names: Iterable[str]) -> dict[str, Any]:
    """A string that is one of ``names`` as registries read it: in any case, ``-`` for ``_``,
    spaces around. The enum is for completion; the pattern is what is accepted."""
    names = list(dict.fromkeys(names))
    alternatives = "|".join(_loose(name) for name in sorted(names, key=len, reverse=True))
    return {"anyOf": [{"type": "string", "enum": names},
                      {"type": "string", "pattern": rf"^\s*(?:{alternatives})\s*$"}]}


def _loose(name: str) -> str:
    parts = []
    for char in name:
        if char.isalpha():
            parts.append(f"[{char.lower()}{char.upper()}]")
        elif char in "_-":
            parts.append("[_-]")
        else:
            parts.append(re.escape(char))
    return "".join(parts)


def _value_schema(default: Any) -> dict[str, Any]:
    """What an argument with this default takes, as far as its default says."""
    if isinstance(default, bool):
        return {"type": "boolean"}
    if isinstance(default, (int, float)):
        return {"type": "number"}
    if isinstance(default, str):
        return {"type": "string"}
    if isinstance(default, tuple) and default and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in default):
        return {"type": "array", "items": {"type": "number"}}
    return {}


def _names_by_entry(names: Iterable[str], aliases: Mapping[str, str]) -> dict[str, list[str]]:
    by_entry: dict[str, list[str]] = {name: [name] for name in names}
    for alias, name in aliases.items():
        by_entry[name].append(alias)
    return by_entry


# --------------------------------------------------------------------------- losses


def _loss_defs() -> dict[str, Any]:
    from traincraft import losses

    by_entry = _names_by_entry(losses.names(), losses.aliases())
    singles, terms = [], []
    for name, names in by_entry.items():
        arguments = losses.arguments(name)
        properties: dict[str, Any] = {"name": loose_name(names)}
        for key, default in (arguments or {}).items():
            properties[key] = {} if default is inspect.Parameter.empty else _value_schema(default)
        if "reduction" in properties:  # the trainer needs the mean over the batch's samples
            properties["reduction"] = {"enum": ["mean", "batchmean"] if name == "kl_div" else ["mean"]}
        if arguments is not None and "weight" in arguments:
            properties["class_weight"] = properties["weight"]
        required = [k for k, d in (arguments or {}).items() if d is inspect.Parameter.empty]
        single = {"type": "object", "title": name, "properties": properties, "required": ["name", *required],
                  "additionalProperties": arguments is None}
        term = copy.deepcopy(single)
        term["properties"]["weight"] = {"type": "number", "description": "the term's weight in the sum"}
        singles.append(single)
        terms.append(term)
    imported = {"type": "object", "properties": {"name": IMPORTED}, "required": ["name"]}
    weighted = {"type": "object", "properties": {"name": IMPORTED, "weight": {"type": "number"}},
                "required": ["name"]}
    every = [n for names in by_entry.values() for n in names]
    return {
        "LossName": {"anyOf": [*loose_name(every)["anyOf"], IMPORTED],
                     "description": "a loss name (traincraft list losses) or 'package.module:Name'"},
        "Loss": {"anyOf": [*singles, imported], "description": "{name: ..., and the loss's arguments}"},
        "LossTerm": {"anyOf": [{"$ref": "#/$defs/LossName"}, *terms, weighted],
                     "description": "a term of a weighted sum: a name, or {name, weight, and its arguments}"},
    }


# --------------------------------------------------------------------------- schedules


def _schedule_defs() -> dict[str, Any]:
    from traincraft.schedules.table import SCHEDULES, WRAPPER_KEYS

    ramp = {"description": "a duration (steps, '3ep', '5%') or {duration, ...}; see docs/schedules.md"}
    wrapper = {"warmup": ramp, "cooldown": ramp,
               "interval": {**loose_name(["step", "epoch"]), "description": "the schedule's clock"}}
    objects, bare = [], []
    for info in SCHEDULES:
        parameters = [p for p in inspect.signature(info.fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
        properties: dict[str, Any] = {"name": loose_name([info.name, *info.aliases])}
        required = []
        for parameter in parameters:
            key = parameter.name
            default = info.defaults.get(key, inspect.Parameter.empty)
            if default is inspect.Parameter.empty and key not in info.run_defaults:
                required.append(key)
            properties[key] = _schedule_argument(info, key, default)
        for key in WRAPPER_KEYS:
            properties.setdefault(key, wrapper[key])
        if info.own_cooldown:  # plateau's epochs after a cut, or {duration: ...} for a cool-down
            properties["cooldown"] = {"anyOf": [{"type": "number"}, {"type": "object"}],
                                      "description": info.own_cooldown}
        objects.append({"type": "object", "title": info.name, "properties": properties,
                        "required": ["name", *required], "additionalProperties": False})
        if not required:
            bare.extend([info.name, *info.aliases])
    return {
        "ScheduleName": {**loose_name(bare), "description": "a schedule that needs no arguments, by name"},
        "Schedule": {"anyOf": objects, "description": "{name: ..., its arguments, warmup, cooldown, interval}"},
    }


def _schedule_argument(info: Any, key: str, default: Any) -> dict[str, Any]:
    if key in info.durations:
        return {"type": ["number", "string", "null"], "description": "a duration: steps, '3ep' or '10%'"}
    if key in info.duration_lists:
        return {"type": "array", "description": "increasing durations"}
    if key in info.per_group and key != "lr_lambda":
        single = _value_schema(default) if default not in (None, inspect.Parameter.empty) else {"type": "number"}
        one_per_group = {"type": "array", "items": single}
        return {"anyOf": [single, one_per_group, *([{"type": "null"}] if default is None else [])],
                "description": "one value, or one per parameter group"}
    if default is inspect.Parameter.empty or default is None:
        return {}
    return _value_schema(default)
