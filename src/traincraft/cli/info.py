"""``traincraft init``, ``traincraft list`` and ``traincraft schema``: what a recipe may say.
The names are imported only when listed."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

INIT_EXAMPLES = """examples:
  traincraft init                     # writes recipe.yaml from the quickstart template
  traincraft init sunspots -o sun.yaml"""

LIST_EXAMPLES = """examples:
  traincraft list                     # everything
  traincraft list losses"""

SCHEMA_EXAMPLES = """example:
  traincraft schema > recipe.schema.json   # point your editor's YAML plugin at it"""


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``init``, ``list`` and ``schema`` through ``command(name, handler, help, epilog)``."""
    init = command("init", cmd_init, "write a commented starter recipe", INIT_EXAMPLES)
    init.add_argument("template", nargs="?", default="quickstart",
                      help="quickstart, sunspots, regression (= diabetes, as in examples/)")
    init.add_argument("-o", "--output", default="recipe.yaml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    listing = command("list", cmd_list, "list the names you can use in a recipe", LIST_EXAMPLES)
    listing.add_argument("what", nargs="?", choices=sorted(LISTS), help="one kind (default: all)")

    command("schema", cmd_schema, "print the recipe's JSON schema", SCHEMA_EXAMPLES)


def cmd_init(args: argparse.Namespace) -> int:
    from traincraft.errors import TraincraftError
    from traincraft.recipe import template_file

    source = template_file(args.template)
    if source is None:
        from traincraft.errors import did_you_mean

        names = _list_template_names()
        hint = did_you_mean(args.template, names) or f"; templates: {', '.join(names)}"
        raise TraincraftError(f"unknown template {args.template!r}{hint}")
    target = Path(args.output)
    if target.exists() and not args.force:
        raise TraincraftError(f"{target} exists: choose another -o FILE or add --force")
    if target.is_dir() or not target.parent.is_dir():
        raise TraincraftError(f"-o {target}: " + ("is a folder" if target.is_dir() else f"the folder {target.parent} does not exist"))
    target.write_text(source.read_text())
    print(f"wrote {target}; train with: traincraft fit {target}", file=sys.stderr)
    return 0


def _list_template_names() -> list[str]:
    """The template names ``init`` and ``fit`` take, with the examples' names of templates."""
    from traincraft.recipe import TEMPLATE_ALIASES, template_names

    return sorted([*template_names(), *TEMPLATE_ALIASES])


def _list_losses() -> list[str]:
    from traincraft import losses

    return losses.names()


def _list_optimizers() -> list[str]:
    from traincraft import optim

    return optim.names()


def _list_metrics() -> list[str]:
    from traincraft import metrics

    return metrics.names()


def _list_models() -> list[str]:
    from traincraft import models

    # Beyond the built-in names: any torchvision or timm model, and a class of your own.
    return [*models.names(), "torchvision:NAME", "timm:NAME", "module:Class"]


def _list_datasets() -> list[str]:
    from traincraft import datasets

    return datasets.names()


def _list_schedules() -> list[str]:
    from traincraft.schedules.table import names

    return names()


def _list_templates() -> list[str]:
    from traincraft.recipe import TEMPLATE_ALIASES, template_names

    aliases = {name: alias for alias, name in TEMPLATE_ALIASES.items()}
    return [f"{name} (= {aliases[name]})" if name in aliases else name for name in template_names()]


LISTS: dict[str, Callable[[], list[str]]] = {
    "losses": _list_losses,
    "optimizers": _list_optimizers,
    "metrics": _list_metrics,
    "models": _list_models,
    "datasets": _list_datasets,
    "schedules": _list_schedules,
    "templates": _list_templates,
}


def cmd_list(args: argparse.Namespace) -> int:
    for kind in [args.what] if args.what else sorted(LISTS):
        print(f"{kind}: {', '.join(LISTS[kind]())}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from traincraft.recipe import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0
