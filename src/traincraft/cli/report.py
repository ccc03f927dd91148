"""``traincraft report RUN_DIR``: rebuild a run's ``plots/`` and ``report.html`` from the files of
its run folder (:func:`traincraft.report.build_report`). matplotlib is imported only by the command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from traincraft.cli.policy import own_parser


def report_main(argv: Sequence[str] | None = None) -> int:
    """``traincraft report RUN_DIR [--output FILE]``: rebuild a run's plots and report.html.

    Returns the exit code; a mistake raises a ``TraincraftError`` for the command line's error
    policy to report.
    """
    return _command(_parser().parse_args(list(sys.argv[1:] if argv is None else argv)))


def _parser() -> argparse.ArgumentParser:
    parser = own_parser(
        "report", "rebuild a run's plots/ and report.html from the files of its run folder",
        "example:\n  traincraft report runs/quickstart/20261121-101500",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, or runs/NAME: its newest run")
    parser.add_argument("--output", metavar="HTML", help="default: RUN_DIR/report.html")
    return parser


def _command(args: argparse.Namespace) -> int:
    from traincraft.cli.runs import run_folder
    from traincraft.report import build_report

    path = build_report(run_folder(args.run_dir, needs="metrics"), args.output)
    print(f"report: {path}", file=sys.stderr)
    return 0
