"""``traincraft.tuning.tune_main``: ``traincraft tune`` as the command line runs it today.

The command line hands ``traincraft tune ...`` to this function (``cli.PASSTHROUGH``) without
wrapping it in its error policy, so this function does; :mod:`traincraft.tuning.command` itself
reports no errors. Once the command line's ``main`` applies its policy to the commands it
passes on too, it can call ``command.tune_main`` directly and this module goes.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["tune_main"]


def tune_main(argv: Sequence[str] | None = None) -> int:
    """``traincraft tune`` as the command line runs it: :func:`traincraft.tuning.command.tune_main`
    under the command line's error policy (``error: ...`` on stderr and exit code 2 for a
    mistake, the traceback with ``--debug``, 130 on Ctrl-C)."""
    from traincraft.cli import run_reporting_errors
    from traincraft.tuning.command import _parse, _tune_command

    args = _parse(argv)
    return run_reporting_errors(lambda: _tune_command(args), debug=args.debug)
