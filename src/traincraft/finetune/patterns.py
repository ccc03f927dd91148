"""Names of parameters and modules: glob matching, and listing them in one-line messages."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence


def glob_hit(name: str, globs: Sequence[str]) -> bool:
    """Whether ``name`` matches one of ``globs`` (``fnmatch``, case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


_SHOWN = 5  # names listed in one-line messages before "and N more"


def listing(items: Sequence[str], more: bool = True) -> str:
    """The first few ``items`` joined for a message: ``"a, b, c, d, e and 3 more"``."""
    shown = ", ".join(items[:_SHOWN])
    rest = len(items) - _SHOWN
    if rest > 0:
        shown += f" and {rest} more" if more else ", ..."
    return shown or "(none)"
