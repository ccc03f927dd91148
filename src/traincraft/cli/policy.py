"""How every command ends: the exit codes and the one error policy.

:func:`traincraft.cli.main` runs every command through :func:`run_reporting_errors`; the command
modules of this package import from here, never from ``traincraft.cli`` itself, so that the
package's ``__init__`` may import them without an import cycle.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

_FROZEN = False  # set while a command keeps objects frozen; run_reporting_errors thaws them


def run_reporting_errors(command: Callable[[], int | None], *, debug: bool) -> int:
    """Run a command: a user mistake prints one line ``error: ...`` and gives exit code 2
    (``--debug`` shows the traceback instead); Ctrl-C gives 130. Bugs keep their traceback."""
    from traincraft.errors import TraincraftError

    global _FROZEN
    try:
        return int(command() or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TraincraftError as err:
        if debug:
            raise
        prefix = "" if str(err).startswith("rank ") else _process_prefix()
        print(f"error: {prefix}{err}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        if _FROZEN:  # called in a longer-lived process (a test, a notebook): collectable again
            import gc

            gc.unfreeze()
            _FROZEN = False


def _process_prefix() -> str:
    """``rank 1: `` in one of several processes that torchrun started, else nothing."""
    import os

    world = os.environ.get("WORLD_SIZE", "1")
    return f"rank {os.environ.get('RANK', '?')}: " if world.isdigit() and int(world) > 1 else ""


def freeze_startup_objects() -> None:
    """Take the objects that imports created out of the garbage collector's sight
    (``gc.freeze``): its passes over torch's several hundred thousand objects cost about 0.1 s
    of start-up, and the training loop's full collections skip them as well. A training
    command calls it once torch is imported, and again once the trainer is built."""
    import gc

    import torch  # noqa: F401  (most of the objects)

    global _FROZEN
    _FROZEN = True
    gc.freeze()


def own_parser(name: str, description: str, epilog: str, *, recipe: str | None = None) -> Any:
    """The parser of a command that parses its own arguments (``traincraft NAME ...``), with the
    shared ``--debug`` flag; ``recipe``: the help of a ``RECIPE [key.path=value ...]`` start."""
    import argparse

    parser = argparse.ArgumentParser(
        prog=f"traincraft {name}", description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if recipe is not None:
        parser.add_argument("recipe", metavar="RECIPE", help=recipe)
        parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="overrides read as YAML")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser
