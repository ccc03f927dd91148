"""Shell completion through argcomplete: ``traincraft completion bash|zsh|fish`` prints the
script to source; the shell then runs ``traincraft`` with ``_ARGCOMPLETE`` set at each Tab, and
:func:`complete` answers from the full parser, the pass-through commands' own parsers included.

Completed: commands, options, option choices, recipe files and template names, run folders,
recipe keys (``optimizer.lr=``) and the names a key takes (``loss=``, ``optimizer.name=``,
``schedule=``, ``model=``, ``data.dataset=``, ``metrics=``, and every key with fixed choices).
The registries import torch (seconds), so their names are kept in a small cache file
(``~/.cache/traincraft/``, or ``$XDG_CACHE_HOME``), written by ``traincraft completion`` and
rebuilt when traincraft or torch change; a Tab never imports torch once it exists.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHELLS = ("bash", "zsh", "fish")

COMPLETION_EXAMPLES = """examples:
  eval "$(traincraft completion bash)"       # in ~/.bashrc
  eval "$(traincraft completion zsh)"        # in ~/.zshrc (after compinit)
  traincraft completion fish > ~/.config/fish/completions/traincraft.fish"""

#: The parsers of the commands that parse their own arguments (cli.PASSTHROUGH), by command.
OWN_PARSERS = {
    "schedule": "traincraft.cli.schedule:_preview_parser",
    "tune": "traincraft.cli.tune:_parser",
    "report": "traincraft.cli.report:_parser",
    "lr-find": "traincraft.cli.lr_find:_parser",
    "show-batch": "traincraft.cli.show_batch:_parser",
}

#: Recipe keys whose value is a registry name, and the list (cache key) of the names.
NAMED_VALUES = {
    "loss": "losses", "loss.name": "losses",
    "optimizer": "optimizers", "optimizer.name": "optimizers",
    "schedule": "schedules", "schedule.name": "schedules",
    "model": "models", "model.name": "models",
    "data.dataset": "datasets",
    "metrics": "metrics",
}


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``completion`` through ``command(name, handler, help, epilog)``."""
    completion = command("completion", cmd_completion, "print the shell completion script (bash, zsh, fish)",
                         COMPLETION_EXAMPLES)
    completion.add_argument("shell", choices=SHELLS)


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    names()  # fills the cache now, so that the first Tab does not wait for torch
    print(argcomplete.shellcode(["traincraft"], shell=args.shell))
    return 0


# --------------------------------------------------------------------------- answering a Tab


def complete(build_parser: Callable[[], argparse.ArgumentParser]) -> None:
    """Answer the shell's completion request (the ``_ARGCOMPLETE`` environment) and exit."""
    import argcomplete
    from argcomplete.completers import FilesCompleter

    parser = build_parser()
    add_own_parsers(parser)
    attach_completers(parser)
    # Options are offered once a word starts with "-"; an empty word gets commands, names, keys.
    argcomplete.autocomplete(parser, always_complete_options=False, default_completer=FilesCompleter())


def add_own_parsers(parser: argparse.ArgumentParser) -> None:
    """Give the pass-through commands of ``parser`` their own parsers' arguments."""
    commands = _subparsers(parser)
    for name, where in OWN_PARSERS.items():
        module, _, function = where.partition(":")
        own = getattr(importlib.import_module(module), function)()
        sub = commands.choices[name]
        for action in own._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if any(option in sub._option_string_actions for option in action.option_strings):
                continue
            sub._add_action(action)


def _subparsers(parser: argparse.ArgumentParser) -> Any:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def attach_completers(parser: argparse.ArgumentParser) -> None:
    """Completers by what an argument holds (its dest), for every command."""
    from argcomplete.completers import DirectoriesCompleter

    folders = DirectoriesCompleter()
    by_dest: dict[str, Any] = {
        "recipe": recipe_completer,
        "overrides": override_completer,
        "args": fit_args_completer,
        "run_dir": folders,
        "study_dir": folders,
        "template": lambda prefix, **_: [n for n in names()["templates"] if n.startswith(prefix)],
        "resume": lambda prefix, **kw: ["auto", *folders(prefix, **kw)],
    }
    for sub in _subparsers(parser).choices.values():
        for action in sub._actions:
            if action.dest in by_dest and not action.choices:
                action.completer = by_dest[action.dest]  # type: ignore[attr-defined]


def recipe_completer(prefix: str, **kwargs: Any) -> list[str]:
    """Template names and ``.yaml``/``.yml`` files (and folders on the way to them)."""
    from argcomplete.completers import FilesCompleter

    files = FilesCompleter(allowednames=("yaml", "yml"))(prefix, **kwargs)
    return [*(n for n in names()["templates"] if n.startswith(prefix)), *files]


def override_completer(prefix: str, **_: Any) -> list[str]:
    """``key.path=`` for a key's start; the names or choices a key takes after its ``=``."""
    return overrides(prefix, names())


def fit_args_completer(prefix: str, parsed_args: argparse.Namespace, **kwargs: Any) -> list[str]:
    """``fit``/``config`` ``[RECIPE ...] [key=value ...]``: recipes (several compose) and
    overrides; after the first override, overrides only."""
    given = getattr(parsed_args, "args", None) or []
    if "=" in prefix or any("=" in arg for arg in given):
        return override_completer(prefix)
    return [*recipe_completer(prefix, **kwargs), *override_completer(prefix)]


def overrides(prefix: str, known: dict[str, Any]) -> list[str]:
    """The completions of an override's ``prefix``, from ``known`` (:func:`names`)."""
    sign = prefix[0] if prefix[:1] in ("~", "+") else ""  # delete / add a key
    body = prefix[len(sign):]
    key, equals, value = body.partition("=")
    if not equals:
        return [f"{sign}{k}" if sign == "~" else f"{sign}{k}=" for k in known["keys"] if k.startswith(body)]
    if key in NAMED_VALUES:
        values = known[NAMED_VALUES[key]]
        if key == "metrics":
            values = [f"[{v}]" for v in values]
    else:
        values = known["choices"].get(key, [])
    return [f"{sign}{key}={v}" for v in values if v.startswith(value)]


# --------------------------------------------------------------------------- the names, cached


def names() -> dict[str, Any]:
    """The names completion offers: templates, registry names, recipe keys and their choices.
    Read from the cache file when it belongs to this traincraft and torch; else computed
    (imports torch) and written there."""
    path = cache_file()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    known = compute_names()
    try:
        from traincraft.files import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(known))
    except OSError:
        pass  # a read-only home: computed again next time
    return known


def cache_file() -> Path:
    """The cache of :func:`names`, named by what it depends on: the versions of traincraft and
    torch, and the modification times of traincraft's files (an editable install changes)."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    from traincraft import __version__

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "none"
    package = Path(__file__).parents[1]
    stamps = [f"{p.name}:{p.stat().st_mtime_ns}" for p in sorted(package.glob("*.py"))]
    stamps += [f"{p.name}:{p.stat().st_mtime_ns}" for p in sorted((package / "templates").glob("*.yaml"))]
    stamps.append(str((package / "schedules" / "table.py").stat().st_mtime_ns))
    digest = hashlib.sha256("\n".join([__version__, torch_version, str(package), *stamps]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "traincraft" / f"completion-{digest}.json"


def compute_names() -> dict[str, Any]:
    from traincraft import datasets, losses, metrics, models, optim
    from traincraft.cli.info import _list_template_names
    from traincraft.recipe import Recipe
    from traincraft.schedules.table import SCHEDULES

    keys, choices = recipe_keys(Recipe)
    return {
        "templates": _list_template_names(),
        "losses": losses.names(),
        "optimizers": optim.names(),
        "schedules": SCHEDULES.names(),
        "models": [*models.names(), "torchvision:", "timm:"],
        "datasets": datasets.names(),
        "metrics": metrics.names(),
        "keys": keys,
        "choices": choices,
    }


def recipe_keys(model: Any, prefix: str = "") -> tuple[list[str], dict[str, list[str]]]:
    """Every key path of a recipe's schema (``train.max_epochs``; a section's keys under it),
    and the fixed choices (``Literal`` values, booleans) of those that have them."""
    import typing

    from pydantic import BaseModel

    keys: list[str] = []
    choices: dict[str, list[str]] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.append(path)
        sections, values = [], []
        pending = [(field.annotation, False)]
        while pending:
            kind, listed = pending.pop()  # listed: an item of a list (written [value])
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                sections.append(kind)
            elif kind is bool:
                values += ["true", "false"]
            elif typing.get_origin(kind) is typing.Literal:
                words = [str(v).lower() if isinstance(v, bool) else str(v) for v in typing.get_args(kind)]
                values += [f"[{w}]" for w in words] if listed else words
            else:
                inner = listed or typing.get_origin(kind) in (list, tuple)
                pending.extend((a, inner) for a in typing.get_args(kind) if a is not type(None))
        if values:
            choices[path] = sorted(set(values), key=values.index)
        for section in sections:
            more, more_choices = recipe_keys(section, f"{path}.")
            keys += more
            choices.update(more_choices)
    return sorted(set(keys)), choices

