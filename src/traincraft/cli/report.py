"""``traincraft report RUN_DIR``: rebuild a run's ``plots/`` and ``report.html`` from the files of
its run folder (:func:`traincraft.report.build_report`). matplotlib is imported only by the command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from traincraft.cli.policy import run_reporting_errors


def report_main(argv: Sequence[str] | None = None) -> int:
    """``traincraft report RUN_DIR [--output FILE]``: rebuild a run's plots and report.html.

    Returns the exit code (2 with one line on stderr for a mistake; ``--debug`` shows the
    traceback instead).
    """
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return run_reporting_errors(lambda: _command(args), debug=args.debug)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traincraft report",
        description="rebuild a run's plots/ and report.html from the files of its run folder",
        epilog="example:\n  traincraft report runs/quickstart/20261121-101500",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--output", metavar="HTML", help="default: RUN_DIR/report.html")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def _command(args: argparse.Namespace) -> int:
    from traincraft.report import build_report

    path = build_report(args.run_dir, args.output)
    print(f"report: {path}", file=sys.stderr)
    return 0
