"""Other tools' spellings of an override on the command line, answered: ``--train.max_epochs=3``
and ``--train.max_epochs 3`` (LightningCLI, jsonargparse) are read as ``train.max_epochs=3``; an
option that is a recipe key without a dot (``--seed=3``) is answered with the right spelling."""

from __future__ import annotations

from collections.abc import Sequence

#: Commands whose arguments after the recipe are overrides.
OVERRIDE_COMMANDS = frozenset({"fit", "resume", "config", "schedule", "tune", "lr-find", "show-batch"})

#: The recipe's sections and top-level keys (the schema's, listed here to keep --help torch-free
#: and quick; tests/cli/test_spelling.py checks them against the schema).
RECIPE_KEYS = ("name", "seed", "data", "model", "loss", "optimizer", "train", "schedule", "early_stopping",
               "finetune", "ema", "swa", "checkpoint", "tune", "metrics", "logging")


def dashed_overrides(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--a.b=value`` and ``--a.b value`` written as the override ``a.b=value``.
    No option of traincraft has a dot in its name, so a dotted option is always a recipe key."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        name, sep, value = arg[2:].partition("=")
        if arg.startswith("--") and "." in name and name.strip("."):
            if sep:
                out.append(f"{name}={value}")
            elif i + 1 < len(items) and not items[i + 1].startswith("--"):
                out.append(f"{name}={items[i + 1]}")
                i += 1
            else:
                out.append(f"{name}=")  # no value: null, as key= is
        else:
            out.append(arg)
        i += 1
    return out


def unrecognized_hint(extra: Sequence[str]) -> str:
    """For options argparse did not recognise that are recipe keys (``--seed=3``, ``--seed 3``):
    how to write them as overrides; else nothing."""
    fixes = []
    for i, arg in enumerate(extra):
        name, sep, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name in RECIPE_KEYS:
            if not sep and i + 1 < len(extra) and not extra[i + 1].startswith("-"):
                value = extra[i + 1]
            fixes.append(f"{name}={value or '...'}")
    return f" (recipe keys take no dashes: write {' '.join(fixes)})" if fixes else ""
