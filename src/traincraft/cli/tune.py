"""``traincraft tune``: the command line of the search.

Building the parser (and ``--help``) imports neither torch nor Optuna; the study is imported
when the command runs. Errors are the caller's to report: the command line's error policy (one
line and exit code 2 for a user mistake, the traceback with ``--debug``, 130 on Ctrl-C) wraps
this command as it wraps the others.

Example:
    >>> tune_main(["recipe.yaml", "--trials", "40", "--workers", "2"])
    0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from traincraft.cli.policy import own_parser
from traincraft.errors import TraincraftError

__all__ = ["tune_main"]


def tune_main(argv: Sequence[str] | None = None) -> int:
    """``traincraft tune RECIPE [key=value ...] [--trials N] [--workers K] [--storage URL]
    [--heartbeat SECONDS] [--study NAME] [--study-dir DIR] [--report] [--allow-changes]
    [--no-progress] [--debug]``.

    Returns the exit code: 0 done, 130 when interrupted. A mistake raises a
    :class:`~traincraft.errors.TraincraftError` for the command line to report (``--debug`` is
    its flag: to show the traceback instead of the line).
    """
    return _tune_command(_parse(argv))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    return _parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))


def _parser() -> argparse.ArgumentParser:
    parser = own_parser(
        "tune", "search a recipe's tune.space with Optuna; each trial is an ordinary run",
        (
            "examples:\n  traincraft tune recipe.yaml --trials 40\n"
            "  traincraft tune recipe.yaml --workers 2            # two processes, one study\n"
            "  traincraft tune recipe.yaml --storage postgresql://user@host/db --study search1"
            "   # on each machine"
        ),
        recipe="a recipe file or template name with a tune section",
    )
    parser.add_argument(
        "--trials", type=int, help="trials the study should hold (default tune.trials)"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes running trials at once")
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="journal file path or database URL (default: a journal file in the study folder)",
    )
    parser.add_argument(
        "--heartbeat",
        type=int,
        metavar="SECONDS",
        help="with a database URL: seconds between a trial's heartbeats (default 60); a trial "
        "without one for twice as long is taken for lost and run again",
    )
    parser.add_argument("--study", metavar="NAME", help="study name (default: the recipe's name)")
    parser.add_argument(
        "--study-dir", metavar="DIR", help="study folder (default runs/<name>-tune)"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="each trial also writes report.html and evaluates its best weights at its end",
    )
    parser.add_argument("--no-progress", action="store_true", help="no line per trial")
    parser.add_argument(
        "--allow-changes",
        action="store_true",
        help="continue a study although the recipe's keys that are not searched changed",
    )
    return parser


def _tune_command(args: argparse.Namespace) -> int:
    from traincraft.recipe import apply_override, read_raw
    from traincraft.tuning.study import EXIT_INTERRUPTED, search

    raw, _ = read_raw(args.recipe)
    for override in args.overrides:
        if "=" not in override:
            raise TraincraftError(f"expected key.path=value after the recipe, got {override!r}")
        apply_override(raw, override)
    import matplotlib

    matplotlib.use("Agg")  # files only: no window, no display needed
    result = search(
        raw,
        trials=args.trials,
        workers=args.workers,
        storage=args.storage,
        study=args.study,
        study_dir=args.study_dir,
        progress=not args.no_progress,
        plots=True,
        allow_changes=args.allow_changes,
        heartbeat=args.heartbeat,
        report=args.report,
    )
    print(result.summary, file=sys.stderr)
    return EXIT_INTERRUPTED if result.interrupted else 0
