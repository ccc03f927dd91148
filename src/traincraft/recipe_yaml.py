"""Recipe YAML: read and written as YAML 1.2 and Python read numbers.

PyYAML follows YAML 1.1, which reads ``1e-8`` (no dot) as text, ``010`` as 8 and ``1:30`` as 90.
Recipes, override values, run folders' ``recipe.yaml`` and tune sections are all read here
instead: ``1e-8``, ``2e0``, ``.5``, ``1_000``, ``0x1f`` are numbers, ``010`` is 10, ``1:30``
stays text, and a number in quotes (``"1e-8"``) stays text. A key given twice in one mapping is
refused, and aliases may not expand a recipe past :data:`MAX_VALUES` values.

Example:
    >>> load_yaml("{eps: 1e-8, steps: 1_000, name: '1e5'}")
    {'eps': 1e-08, 'steps': 1000, 'name': '1e5'}
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from traincraft.errors import TraincraftError

__all__ = ["MAX_VALUES", "RecipeError", "dump_yaml", "load_yaml", "whole_floats_as_ints"]


class RecipeError(TraincraftError, ValueError):
    """A recipe mistake: one line naming the key path, the value and the fix."""


#: Values a recipe may expand to through YAML aliases (an alias bomb stops here).
MAX_VALUES = 100_000

_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_DIGITS = r"[0-9](?:_?[0-9])*"  # underscores between digits, as Python writes them
_EXPONENT = rf"[eE][-+]?{_DIGITS}"
INT = re.compile(
    rf"^[-+]?(?:{_DIGITS}|0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+)$"
)
FLOAT = re.compile(
    rf"^(?:[-+]?(?:{_DIGITS}\.(?:{_DIGITS})?(?:{_EXPONENT})?|\.{_DIGITS}(?:{_EXPONENT})?"
    rf"|{_DIGITS}{_EXPONENT})|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


def _resolvers_without_numbers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    """The safe loader's implicit resolvers (null, bool, ...) less YAML 1.1's int and float."""
    return {first: [(tag, rx) for tag, rx in pairs if tag not in (_INT_TAG, _FLOAT_TAG)]
            for first, pairs in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _add_number_resolvers(cls: Any) -> None:
    cls.yaml_implicit_resolvers = _resolvers_without_numbers()
    cls.add_implicit_resolver(_INT_TAG, INT, list("-+0123456789"))
    cls.add_implicit_resolver(_FLOAT_TAG, FLOAT, list("-+0123456789."))


def _int(text: str) -> int:
    text = text.replace("_", "")
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    return sign * int(digits, 0 if digits[:2].lower() in ("0x", "0o", "0b") else 10)


def _float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith(("inf", "nan")):
        return float(lowered.replace(".", ""))
    return float(text)


class _RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader with YAML 1.2 numbers, that refuses a key given twice in one mapping
    (the second would silently replace the first: ``{lr: 1e-2, lr: 5.0}``, a second ``train:``)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise RecipeError(
                    f"line {mark.line + 1}: key {key!r} is given twice in the same section "
                    f"(first on line {seen[key].line + 1}); keep one"
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_number(self, node: yaml.ScalarNode, convert: Any) -> Any:
        text = self.construct_scalar(node)
        try:
            return convert(text)
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, f"{text!r} is not a number", node.start_mark) from None


class _RecipeDumper(yaml.SafeDumper):
    """Writes what :class:`_RecipeLoader` reads back the same: text that it would read as a
    number (``"1e5"``, ``"1_0"``) is quoted."""


_add_number_resolvers(_RecipeLoader)
_add_number_resolvers(_RecipeDumper)
_RecipeLoader.add_constructor(_INT_TAG, lambda loader, node: loader.construct_number(node, _int))
_RecipeLoader.add_constructor(_FLOAT_TAG, lambda loader, node: loader.construct_number(node, _float))


def load_yaml(text: str) -> Any:
    """A recipe's YAML (or an override's value): YAML 1.2 numbers, duplicate keys refused, and
    no more than :data:`MAX_VALUES` values once aliases are expanded."""
    value = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 (a SafeLoader)
    sizes: dict[int, int] = {}

    def size(obj: Any) -> int:
        if id(obj) in sizes:
            return sizes[id(obj)]
        children = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_VALUES:
                break
        sizes[id(obj)] = total
        return total

    if size(value) > MAX_VALUES:
        raise RecipeError(f"the YAML expands to more than {MAX_VALUES:,} values (aliases of aliases?); "
                          "a recipe is a few dozen keys")
    return value


def dump_yaml(value: Any, *, flow: bool | None = False) -> str:
    """``value`` as YAML that :func:`load_yaml` reads back equal (keys in their order); ``flow``
    None writes the innermost lists and maps on one line (``[32, 64]``)."""
    return yaml.dump(value, Dumper=_RecipeDumper, sort_keys=False, default_flow_style=flow, allow_unicode=True)


def whole_floats_as_ints(model: Any, values: Any) -> Any:
    """``max_epochs: 1e3`` is 1000: in a section's ``values``, a whole float where ``model`` (a
    pydantic model class) takes only an integer becomes one, as JSON (and so the JSON schema)
    reads it; anything else is left to the section's strict validation."""
    if not isinstance(values, dict):
        return values
    fixed = dict(values)
    for key, field in model.model_fields.items():
        value = fixed.get(key)
        kinds = getattr(field.annotation, "__args__", (field.annotation,))
        if isinstance(value, float) and value.is_integer() and int in kinds and float not in kinds:
            fixed[key] = int(value)
    return fixed
