"""The ``traincraft`` command. torch is imported only by the commands that need it.

One module per family of commands: :mod:`~traincraft.cli.fit` (fit, resume),
:mod:`~traincraft.cli.config` (config, fit --print-config and --dry-run),
:mod:`~traincraft.cli.runs` (evaluate, predict, export), :mod:`~traincraft.cli.info` (init, list,
schema), :mod:`~traincraft.cli.completion` (completion, and answering a shell's Tab),
:mod:`~traincraft.cli.report` and :mod:`~traincraft.cli.lr_find`, :mod:`~traincraft.cli.schedule` and
:mod:`~traincraft.cli.tune`, :mod:`~traincraft.cli.show_batch`.
:func:`main` runs every one of them under the one error policy, :func:`run_reporting_errors`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from traincraft import __version__
from traincraft.cli import completion, config, fit, info, runs
from traincraft.cli.policy import EXIT_INTERRUPTED, EXIT_USER_ERROR, run_reporting_errors
from traincraft.cli.spelling import OVERRIDE_COMMANDS, dashed_overrides, unrecognized_hint

__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "PASSTHROUGH", "build_parser", "main", "run_reporting_errors"]

# Commands with a parser of their own: everything after the name is theirs (--help included).
# main() runs them under the same error policy as the others.
PASSTHROUGH = {
    "schedule": "traincraft.cli.schedule:preview_main",
    "tune": "traincraft.cli.tune:tune_main",
    "report": "traincraft.cli.report:report_main",
    "lr-find": "traincraft.cli.lr_find:lr_find_main",
    "show-batch": "traincraft.cli.show_batch:show_batch_main",
}


def main(argv: Sequence[str] | None = None) -> int:
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (traincraft completion)
        completion.complete(build_parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    # As under `python -m traincraft`: modules of the current folder (a recipe's
    # "mynets:TinyCNN") import; the installed command otherwise only sees its own bin folder.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if argv and argv[0] in OVERRIDE_COMMANDS:  # --train.max_epochs=3 is train.max_epochs=3
        argv = [argv[0], *dashed_overrides(argv[1:])]
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        module, _, function = PASSTHROUGH[argv[0]].partition(":")
        rest = argv[1:]
        return run_reporting_errors(lambda: getattr(importlib.import_module(module), function)(rest),
                                    debug=_asks_for_debug(rest))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after options too: `fit r.yaml --nproc 2 train.max_epochs=3`.
    positional = next((name for name in ("args", "overrides") if hasattr(args, name)), None)
    if extra and positional and not any(item.startswith("-") for item in extra):
        getattr(args, positional).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}{unrecognized_hint(extra)}")
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    return run_reporting_errors(lambda: args.handler(args), debug=args.debug)


def _asks_for_debug(argv: Sequence[str]) -> bool:
    """Whether a pass-through command's arguments hold ``--debug`` (or a prefix of it, which
    argparse accepts too)."""
    return any(len(arg) > 2 and "--debug".startswith(arg) for arg in argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traincraft",
        description="Train any PyTorch model with the right strategies, from a short YAML recipe.",
        epilog="examples:\n  traincraft fit\n  traincraft init sunspots -o sun.yaml && traincraft fit sun.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"traincraft {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int | None], help: str,
                epilog: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help, description=help, epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
        sub.set_defaults(handler=handler)
        return sub

    fit.add_commands(command)  # fit, resume
    config.add_commands(command)  # config
    runs.add_commands(command)  # evaluate, predict, export
    info.add_commands(command)  # init, list, schema
    completion.add_commands(command)  # completion
    # Listed for --help; main() hands their arguments to their own parsers (PASSTHROUGH).
    commands.add_parser("schedule", help="preview a recipe's learning-rate schedule without training")
    commands.add_parser("tune", help="search hyperparameters with Optuna (the recipe's tune: section)")
    commands.add_parser("report", help="rebuild a run's plots and report.html")
    commands.add_parser("lr-find", help="find a learning rate with the range test")
    commands.add_parser("show-batch", help="draw a recipe's training images as the augmentation makes them")
    return parser
