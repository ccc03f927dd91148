"""One table of ``name -> factory + defaults``, shared by losses, optimizers, metrics, models, data.

Registries point at torch, they do not wrap it: ``"adamw"`` maps to ``torch.optim.AdamW`` plus
default keyword arguments. A spec is a name, a ``{"name": ..., **kwargs}`` dict, or something the
caller accepts as already built.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from traincraft.errors import TraincraftError, is_number, number_hint, unknown_name


@dataclass(frozen=True)
class Entry:
    """A registered factory with its default keyword arguments and a one-line description."""

    factory: Callable[..., Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""


class Registry:
    """Names (and aliases) mapped to factories. Unknown names raise with the closest valid names.

    Example:
        >>> reg = Registry("loss")
        >>> reg.add("mse", torch.nn.MSELoss, aliases=["l2_loss"])
        >>> reg.create("mse")
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def add(
        self,
        name: str,
        factory: Callable[..., Any],
        *,
        aliases: tuple[str, ...] | list[str] = (),
        doc: str = "",
        **defaults: Any,
    ) -> None:
        self._entries[name] = Entry(factory, dict(defaults), doc)
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases (case and dashes ignored)."""
        key = str(name).strip().lower().replace("-", "_")
        key = self._aliases.get(key, key)
        if key not in self._entries:
            raise unknown_name(self.kind, name, [*self._entries, *self._aliases])
        return key

    def entry(self, name: str) -> Entry:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        try:
            self.canonical(str(name))
        except TraincraftError:
            return False
        return True

    def names(self) -> list[str]:
        """Registered names, without aliases, sorted."""
        return sorted(self._entries)

    def aliases(self) -> dict[str, str]:
        """``alias -> name``."""
        return dict(self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def create(self, spec: str | Mapping[str, Any], *args: Any, **overrides: Any) -> Any:
        """Build from a name or a ``{"name": ..., **kwargs}`` dict.

        Keyword precedence: registered defaults < the spec's keys < ``overrides``.
        """
        name, kwargs = split_spec(spec, self.kind)
        entry = self.entry(name)
        merged = {**entry.defaults, **kwargs, **overrides}
        try:
            return entry.factory(*args, **merged)
        except TypeError as err:
            raise TraincraftError(f"{self.kind} {name!r}: {err}") from err


def split_spec(spec: str | Mapping[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
    """``"adam"`` -> ``("adam", {})``; ``{"name": "adam", "lr": 1}`` -> ``("adam", {"lr": 1})``."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise TraincraftError(f"{kind} spec {dict(spec)!r} needs a 'name' key")
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        return str(spec["name"]), kwargs
    raise TraincraftError(f"{kind} spec must be a name or a dict with 'name', got {type(spec).__name__}")


def check_numbers(label: str, defaults: Mapping[str, Any], kwargs: Mapping[str, Any]) -> None:
    """Keyword arguments whose default is a number (or a tuple of numbers, Adam's ``betas``)
    take one: text (``eps: abc``, a quoted ``"1e-8"``), a bool or a null there is refused in
    one line naming the argument, instead of failing deep inside torch."""
    for key, value in kwargs.items():
        default = defaults.get(key)
        if is_number(default) and not _number_like(value):
            raise TraincraftError(f"{label}: {key} must be a number, got {value!r}{number_hint(value)}")
        if isinstance(default, tuple) and default and all(is_number(d) for d in default) and (
                not isinstance(value, (list, tuple)) or not all(_number_like(v) for v in value)):
            raise TraincraftError(f"{label}: {key} must be a list of {len(default)} numbers, got {value!r}")


def _number_like(value: Any) -> bool:
    """Anything but what YAML gives that is no number: a tensor or a numpy scalar passes."""
    return not isinstance(value, (str, bool, list, tuple, dict, type(None)))


#: Standard-library modules of pure functions a recipe may name (``math:cos`` as a schedule's
#: function); every other standard-library module (os, subprocess, shutil, ...) is refused.
PURE_STDLIB = frozenset({"math", "cmath", "operator", "statistics"})


def _user_folders() -> list[str]:
    """The folders on the import path that are not Python's own or its installed packages'."""
    import sysconfig

    skipped = {os.path.realpath(p) for p in sysconfig.get_paths().values()}
    folders = []
    for entry in sys.path:
        folder = os.path.realpath(entry or os.getcwd())
        python = any(folder.startswith(os.path.realpath(p) + os.sep) for p in (sys.base_prefix, sys.prefix))
        if folder in skipped or python or "site-packages" in folder or not os.path.isdir(folder):
            continue
        if folder not in folders:
            folders.append(folder)
    return folders or [os.getcwd()]


def add_import_folder(folder: str | os.PathLike[str] | None) -> None:
    """Make modules in ``folder`` importable (a recipe's own folder: ``mynets:TinyCNN`` next to it)."""
    if folder is None:
        return
    path = os.path.realpath(os.fspath(folder))
    if os.path.isdir(path) and path not in (os.path.realpath(p or os.getcwd()) for p in sys.path):
        sys.path.append(path)  # after the working folder: a module there still wins


def import_object(path: str, kind: str = "object") -> Any:
    """Import ``"package.module:attribute"`` (also ``package.module.attribute``)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise TraincraftError(f"{kind} {path!r}: expected 'package.module:name'")
    top = module_name.split(".")[0]
    if (top in sys.stdlib_module_names or top == "builtins") and top not in PURE_STDLIB:
        # os:system, subprocess:run, builtins:eval: never a model, loss or data set of a recipe.
        raise TraincraftError(f"{kind} {path!r} names Python's standard library, not a {kind}: "
                              "name a class or function of your own module")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != top:  # the module was found, and an import inside it failed
            raise TraincraftError(f"{kind} {path!r}: cannot import module {module_name!r} ({err})") from err
        raise TraincraftError(
            f"{kind} {path!r}: cannot import module {top!r}: no {top}.py or {top}/ in "
            f"{', '.join(_user_folders())}, nor among the installed packages"
        ) from err
    except ImportError as err:
        raise TraincraftError(f"{kind} {path!r}: cannot import module {module_name!r} ({err})") from err
    try:
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as err:
        raise TraincraftError(f"{kind} {path!r}: module {module_name!r} has no {attr!r}") from err
    return obj
