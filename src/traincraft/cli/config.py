"""``traincraft config`` (and ``fit --print-config``): the resolved recipe without training; and
``fit --dry-run``: data, model and trainer built, the summary printed, nothing trained or
written. torch is imported only by the dry run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

CONFIG_EXAMPLES = """examples:
  traincraft config recipe.yaml                        # the recipe a run of it saves as recipe.yaml
  traincraft config base.yaml small.yaml train.max_epochs=3 > resolved.yaml
  traincraft config recipe.yaml schedule.name=onecycle --given   # only what the files and overrides say"""


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``config`` through ``command(name, handler, help, epilog)``."""
    config = command("config", cmd_config, "print the resolved recipe without training", CONFIG_EXAMPLES)
    config.add_argument("args", nargs="*", metavar="[RECIPE ...] [key.path=value ...]",
                        help="recipe files or template names (later ones win), then overrides")
    config.add_argument("--given", action="store_true",
                        help="print only what the files and overrides say, without the defaults")


def split_recipe_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``[RECIPE ...] [key=value ...]``: the recipes come first; an override is ``key=value``,
    ``+key=value`` or ``~key``. A recipe after an override is an error."""
    from traincraft.errors import TraincraftError

    recipes: list[str] = []
    overrides: list[str] = []
    for arg in args:
        if "=" in arg or arg.startswith(("~", "+")):
            overrides.append(arg)
        elif overrides:
            raise TraincraftError(f"expected key.path=value after the overrides began, got {arg!r}: "
                                  "give the recipe files first, then the overrides")
        else:
            recipes.append(arg)
    return recipes, overrides


def cmd_config(args: argparse.Namespace) -> int:
    sources, overrides = split_recipe_args(args.args)
    print(resolved_text(sources, overrides, given=args.given), end="")
    return 0


def resolved_text(sources: Sequence[str], overrides: Sequence[str], *, given: bool = False) -> str:
    """The recipe as a run of it saves it (``recipe.yaml``: every default filled in), or with
    ``given`` only what the files and overrides say, merged; validated either way."""
    from traincraft.recipe import given_recipe, validate
    from traincraft.recipe_yaml import dump_yaml

    raw, origin = given_recipe(list(sources) or None, overrides)
    recipe = validate(raw, origin)
    if given:
        raw.pop("_base_dir", None)
        return dump_yaml(raw)
    return recipe.to_yaml()


def dry_run(recipe: Any) -> int:
    """Build the data, the model, the loss, the optimizer and the schedule as ``fit`` would, print
    what was built, and stop: nothing is trained, no run folder is written."""
    from traincraft import schedules
    from traincraft.durations import steps_per_epoch
    from traincraft.trainer import Trainer

    trainer = Trainer.from_recipe(recipe, run_dir=None, progress=False, checkpoint=False)
    train = trainer.batches(trainer.data.train, shuffle=False, what="train", training=True)
    per_epoch = steps_per_epoch(len(train), trainer.stepper.accumulate)
    total = recipe.train.max_epochs * per_epoch
    total = min(total, recipe.train.max_steps) if recipe.train.max_steps else total
    schedule = schedules.build(trainer.schedule_spec, trainer.optimizer, steps_per_epoch=per_epoch,
                               total_steps=total, schedule_interval=trainer.schedule_interval)
    parameters = list(trainer.model.parameters())
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    frozen = sum(p.numel() for p in parameters if not p.requires_grad)
    lines = [
        trainer.data.summary(),
        f"model:     {recipe.model.name}, {trainable:,} trainable parameters"
        + (f" ({frozen:,} frozen)" if frozen else "") + f", on {trainer.device}",
        f"loss:      {_loss_text(recipe.loss)}",
        f"optimizer: {type(trainer.optimizer).__name__}, lr {recipe.optimizer.lr:g}, "
        f"{len(trainer.optimizer.param_groups)} parameter group(s)",
        f"schedule:  {getattr(schedule, 'name', type(schedule).__name__)}; {per_epoch} steps per epoch, "
        f"{total} steps in all",
        "dry run: everything is built; nothing was trained and no run folder was written",
    ]
    print("\n".join(lines), file=sys.stderr)
    return 0


def _loss_text(loss: Any) -> str:
    if loss is None:
        return "the model's own"
    if isinstance(loss, str):
        return loss
    if isinstance(loss, dict):
        return str(loss.get("name"))
    return " + ".join(str(term if isinstance(term, str) else term.get("name")) for term in loss)
